//! `docs/reference/totaler.md` is the totaler's `--help` and its
//! subcommands', generated from their doc comments (`config.rs`,
//! `verify.rs`, `dlq.rs`); this fails when the page is stale and
//! `UPDATE_DOCS=1 cargo test -p totaler --test it reference` rewrites it.

use std::path::Path;

use testkit::reference::{Page, check};

use crate::support::workspace_root;

#[test]
fn the_reference_page_is_the_totalers_help() {
    let page = Page {
        binary: Path::new(env!("CARGO_BIN_EXE_totaler")),
        name: "totaler",
        commands: &[
            &[],
            &["verify"],
            &["dlq"],
            &["dlq", "list"],
            &["dlq", "replay"],
        ],
        intro: "Every setting of the totaler is a flag and an environment variable; \
                the flag wins. The service's flags go before a subcommand \
                (`totaler --amqp-url … dlq list`). `verify` and `dlq` are the \
                operator's commands ([verify and repair](../operating/verify.md), \
                [dead letters](../operating/dead-letters.md)).",
        regenerate: "UPDATE_DOCS=1 cargo test -p totaler --test it reference",
    };
    check(&page, &workspace_root().join("docs/reference/totaler.md"));
}
