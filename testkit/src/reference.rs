//! The generated reference pages of `docs/reference/`: a binary's `--help`
//! and its subcommands', rendered into one Markdown page, and the check
//! that the committed page is exactly that. `config.rs` stays the single
//! source; with `UPDATE_DOCS=1` the check rewrites the page instead of
//! failing. Also the help text itself, for tests that check the commands
//! the docs give.

use std::{
    path::Path,
    process::{Command, Stdio},
};

/// One reference page: a binary and the commands whose help it shows.
pub struct Page<'a> {
    /// The built binary (`env!("CARGO_BIN_EXE_…")`).
    pub binary: &'a Path,
    /// Its name, as a user types it.
    pub name: &'a str,
    /// Each command's arguments before `--help`; `&[]` is the binary itself.
    pub commands: &'a [&'a [&'a str]],
    /// The paragraph under the title.
    pub intro: &'a str,
    /// The command that regenerates the page, printed when it is stale.
    pub regenerate: &'a str,
}

/// `binary args… --help`, as a user's terminal of 100 columns shows it
/// whatever the environment: no variable is inherited, so clap shows no
/// `[env: NAME=value]` of the test's own environment.
pub fn help(binary: &Path, args: &[&str]) -> String {
    let out = Command::new(binary)
        .args(args)
        .arg("--help")
        .env_clear()
        .env("COLUMNS", "100")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {} --help: {e}", binary.display()));
    assert!(
        out.status.success(),
        "{} {} --help failed: {}",
        binary.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("help text is UTF-8")
}

/// The page's Markdown: a title, a generated-file note, the intro, then
/// one section per command with its help as a text block.
pub fn render(page: &Page) -> String {
    let mut text = format!(
        "# `{}`\n\n<!-- Generated from `--help` by `{}`; edit the doc comments in config.rs instead. -->\n\n{}\n",
        page.name,
        page.regenerate,
        page.intro.trim_end()
    );
    for args in page.commands {
        let command = [page.name]
            .iter()
            .chain(args.iter())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        let help = help(page.binary, args);
        text.push_str(&format!(
            "\n## `{command}`\n\n```text\n{}\n```\n",
            help.trim_end()
        ));
    }
    text
}

/// Fails, saying how to regenerate it, unless the file at `path` is the
/// page as rendered now; rewrites it instead when `UPDATE_DOCS` is set.
pub fn check(page: &Page, path: &Path) {
    let rendered = render(page);
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(path, &rendered).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        return;
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == rendered,
        "{} is not `{} --help` any more (a doc comment in config.rs changed?); \
         regenerate it with `{}` and commit it",
        path.display(),
        page.name,
        page.regenerate
    );
}
