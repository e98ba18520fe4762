//! `docs/reference/adder.md` is the adder's `--help` and `adder republish
//! --help`, generated from their doc comments (`config.rs`,
//! `republish.rs`); this fails when the page is stale and
//! `UPDATE_DOCS=1 cargo test -p adder --test it reference` rewrites it.

use std::path::Path;

use testkit::reference::{Page, check};

#[test]
fn the_reference_page_is_the_adders_help() {
    let page = Page {
        binary: Path::new(env!("CARGO_BIN_EXE_adder")),
        name: "adder",
        commands: &[&[], &["republish"]],
        intro: "Every setting of the adder is a flag and an environment variable; \
                the flag wins. `adder republish` is the operator's repair command \
                ([verify and repair](../operating/verify.md)).",
        regenerate: "UPDATE_DOCS=1 cargo test -p adder --test it reference",
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    check(&page, &root.join("docs/reference/adder.md"));
}
