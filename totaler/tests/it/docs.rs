//! The Markdown of the repository holds together: every relative link and
//! `#anchor` of every `*.md` outside `target/` resolves (anchors by GitHub's
//! slug rules), and the commands its `sh` blocks give are ones the scripts
//! and binaries accept: a `scripts/…` (or other repository path) exists, and
//! scripts are executable; an `adder`, `totaler`, `faults` or `bench` line
//! uses only subcommands and `--flags` its `--help` lists (the help of the
//! subcommand it is in); a `cargo test|build -p PKG --test NAME` names a
//! package and test target that exist. A file the prose names in a code
//! span (`adder/src/relay.rs`) exists too. The binaries other than the totaler
//! are built next to it when missing (nothing to do after a workspace
//! build).

use std::{
    collections::{BTreeSet, HashMap},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use testkit::reference::help;

use crate::support::workspace_root;

/// The binaries whose command lines the docs give.
const BINARIES: &[&str] = &["adder", "totaler", "faults", "bench"];

/// The workspace's crates, whose files the prose names by path.
const CRATES: &[&str] = &[
    "adder", "totaler", "proto", "listen", "otel", "testkit", "faults", "bench",
];

/// Top-level folders whose files a command line may name by path.
const REPO_DIRS: &[&str] = &[
    "scripts",
    "grafana",
    "k6",
    "prometheus",
    "rabbitmq",
    "haproxy",
    "patroni",
    "docs",
];

#[test]
fn every_relative_link_and_anchor_in_the_markdown_resolves() {
    assert_none("broken links", |doc| doc.broken_links());
}

#[test]
fn every_repository_path_the_prose_names_exists() {
    assert_none("files the docs name that do not exist", |doc| {
        prose_paths(&doc.text)
            .into_iter()
            .filter(|path| !workspace_root().join(path).exists())
            .map(|path| format!("{}: `{path}`: no such file", doc.name))
            .collect()
    });
}

#[test]
fn the_commands_in_the_docs_are_ones_the_scripts_and_binaries_accept() {
    let mut helps = Helps::new();
    assert_none("commands the docs give that do not exist", |doc| {
        doc.shell_lines()
            .into_iter()
            .flat_map(|line| check_line(&line, &mut helps))
            .map(|p| format!("{}: {p}", doc.name))
            .collect()
    });
}

/// Fails listing every problem `check` finds in any Markdown file.
fn assert_none(what: &str, mut check: impl FnMut(&Doc) -> Vec<String>) {
    let problems: Vec<String> = markdown_files().iter().flat_map(&mut check).collect();
    assert!(problems.is_empty(), "{what}:\n{}", problems.join("\n"));
}

#[test]
fn the_link_check_catches_a_broken_link_and_anchor() {
    let doc = Doc {
        name: "docs/README.md".into(),
        path: workspace_root().join("docs/README.md"),
        text: "[a](guarantees.md#no-such-heading) [b](no-such-file.md) \
               [c](guarantees.md#process-kills) `[d](skipped.md)`"
            .into(),
    };
    let broken = doc.broken_links();
    assert_eq!(broken.len(), 2, "{broken:?}");
}

#[test]
fn the_command_check_catches_an_unknown_flag_and_a_missing_script() {
    let mut helps = Helps::new();
    let line = "totaler --queue q dlq list --sum-file f --no-such-flag && \
                scripts/no-such-script && adder republish --source s --batches 1..=2";
    let problems = check_line(line, &mut helps);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("no-such-script"), "{problems:?}");
    assert!(
        problems[1].contains("`totaler dlq list` has no --no-such-flag"),
        "{problems:?}"
    );
}

#[test]
fn slugs_follow_githubs_rules() {
    assert_eq!(slug("PostgreSQL: `pg_upgrade`"), "postgresql-pg_upgrade");
    assert_eq!(
        slug("Adding a database (K to K+1)"),
        "adding-a-database-k-to-k1"
    );
    assert_eq!(
        slug("A [linked](x.md) `sum.txt` – too"),
        "a-linked-sumtxt--too"
    );
}

/// One Markdown file of the repository.
struct Doc {
    /// Its path from the repository root, for messages.
    name: String,
    path: PathBuf,
    text: String,
}

impl Doc {
    /// Each link of the file whose file or anchor does not exist.
    fn broken_links(&self) -> Vec<String> {
        let mut anchors = HashMap::new();
        prose(&self.text)
            .flat_map(|line| link_targets(&line))
            .filter(|target| !target.contains("://") && !target.starts_with("mailto:"))
            .filter_map(|target| self.problem(&target, &mut anchors))
            .collect()
    }

    fn problem(
        &self,
        target: &str,
        anchors: &mut HashMap<PathBuf, BTreeSet<String>>,
    ) -> Option<String> {
        let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
        let path = if file.is_empty() {
            self.path.clone()
        } else {
            self.path.parent().expect("a file has a folder").join(file)
        };
        if !path.exists() {
            return Some(format!("{}: {target}: no such file", self.name));
        }
        let is_markdown = path.extension().is_some_and(|e| e == "md");
        if anchor.is_empty() || !is_markdown {
            return None;
        }
        let known = anchors
            .entry(path.clone())
            .or_insert_with(|| headings(&std::fs::read_to_string(&path).unwrap_or_default()));
        (!known.contains(anchor)).then(|| format!("{}: {target}: no such heading", self.name))
    }

    /// The lines of its shell blocks (`sh`, `bash`, `shell`, `console`),
    /// continuation lines joined, comments dropped.
    fn shell_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut in_sh = None;
        let mut pending = String::new();
        for line in self.text.lines() {
            if let Some(fence) = line.strip_prefix("```") {
                in_sh = if in_sh.is_some() {
                    None
                } else {
                    Some(matches!(fence.trim(), "sh" | "bash" | "shell" | "console"))
                };
                continue;
            }
            if in_sh != Some(true) {
                continue;
            }
            let code = strip_comment(line);
            match code.trim_end().strip_suffix('\\') {
                Some(head) => pending.push_str(head),
                None => lines.push(std::mem::take(&mut pending) + code),
            }
        }
        lines
    }
}

/// Every `*.md` of the repository outside `target/` and hidden folders.
fn markdown_files() -> Vec<Doc> {
    let root = workspace_root();
    let mut found = Vec::new();
    collect_markdown(&root, &mut found);
    found.sort();
    found
        .into_iter()
        .map(|path| Doc {
            name: path
                .strip_prefix(&root)
                .expect("under the root")
                .display()
                .to_string(),
            text: std::fs::read_to_string(&path).expect("read a Markdown file"),
            path,
        })
        .collect()
}

fn collect_markdown(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        let name = path
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .to_string();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            collect_markdown(&path, found);
        } else if name.ends_with(".md") {
            found.push(path);
        }
    }
}

/// The lines outside fenced code blocks, inline code spans removed.
fn prose(text: &str) -> impl Iterator<Item = String> + '_ {
    let mut fenced = false;
    text.lines().filter_map(move |line| {
        if line.starts_with("```") {
            fenced = !fenced;
            return None;
        }
        (!fenced).then(|| without_code_spans(line))
    })
}

fn without_code_spans(line: &str) -> String {
    line.split('`').step_by(2).collect::<Vec<_>>().join("")
}

/// The code spans outside code blocks that name a file or folder of the
/// repository (`adder/src/relay.rs`, `scripts/stack`), a `::item` after
/// one dropped; placeholders (`<name>`, `…`, `*`) are not paths.
fn prose_paths(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut paths = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if fenced {
            continue;
        }
        let spans = line.split('`').skip(1).step_by(2);
        paths.extend(spans.filter_map(repository_path));
    }
    paths
}

fn repository_path(span: &str) -> Option<String> {
    let path = span.split("::").next()?.trim_end_matches([',', '.', ':']);
    let top = path.split('/').next()?;
    let named = path.contains('/') && (REPO_DIRS.contains(&top) || CRATES.contains(&top));
    let placeholder = path.contains(|c: char| " <>*…{}$".contains(c));
    (named && !placeholder).then(|| path.to_string())
}

/// The targets of `[text](target)` and `![alt](target)` links of a line
/// (a title after the target dropped), and of `[label]: target` lines.
fn link_targets(line: &str) -> Vec<String> {
    if let Some(rest) = line.strip_prefix('[')
        && let Some((_, target)) = rest.split_once("]: ")
    {
        return vec![target.trim().to_string()];
    }
    line.match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &line[at + 2..];
            let end = rest.find(')')?;
            let target = rest[..end].split_whitespace().next()?;
            Some(target.trim_matches(|c| c == '<' || c == '>').to_string())
        })
        .collect()
}

/// The anchors of a Markdown file's headings, as GitHub makes them: the
/// slug of each, with `-1`, `-2`… added to repeats.
fn headings(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut fenced = false;
    let mut anchors = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        let Some(title) = heading(line).filter(|_| !fenced) else {
            continue;
        };
        let base = slug(title);
        let count = seen.entry(base.clone()).or_default();
        anchors.insert(match *count {
            0 => base.clone(),
            n => format!("{base}-{n}"),
        });
        *count += 1;
    }
    anchors
}

fn heading(line: &str) -> Option<&str> {
    let hashes = line.chars().take_while(|&c| c == '#').count();
    let title = line[hashes..].strip_prefix(' ')?;
    (1..=6).contains(&hashes).then_some(title)
}

/// GitHub's slug: link text instead of links, lower case, only letters,
/// digits, spaces, `-` and `_` kept, spaces made `-`.
fn slug(title: &str) -> String {
    let mut text = String::new();
    let mut rest = title;
    while let Some(open) = rest.find("](") {
        let close = rest[open..].find(')').map_or(rest.len(), |c| open + c + 1);
        text.push_str(&rest[..open]);
        rest = &rest[close..];
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter(|&c| c.is_alphanumeric() || c == ' ' || c == '-' || c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// A shell line without its `# comment` (a `#` at the start or after a
/// space, outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut previous = ' ';
    for (at, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '#') if previous.is_whitespace() => return &line[..at],
            _ => {}
        }
        previous = c;
    }
    line
}

/// What is wrong with the commands of one shell line.
fn check_line(line: &str, helps: &mut Helps) -> Vec<String> {
    let mut problems = repo_paths(line);
    for segment in line.split(['|', ';', '&', '(', ')']) {
        let words = words(segment);
        let command: Vec<&str> = words
            .iter()
            .map(String::as_str)
            .skip_while(|w| is_assignment(w))
            .collect();
        problems.extend(check_command(&command, helps));
    }
    problems
}

fn check_command(command: &[&str], helps: &mut Helps) -> Vec<String> {
    let Some((&first, args)) = command.split_first() else {
        return Vec::new();
    };
    let name = first.rsplit('/').next().expect("split yields one");
    let is_binary = BINARIES.contains(&name) && (first == name || first.starts_with("target/"));
    if is_binary {
        return helps.check(name, args);
    }
    if first == "cargo" {
        return check_cargo(args);
    }
    Vec::new()
}

/// The words of a shell command, quotes removed (no expansion).
fn words(segment: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    for c in segment.chars() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                words.extend((!word.is_empty()).then(|| std::mem::take(&mut word)))
            }
            _ => word.push(c),
        }
    }
    words.extend((!word.is_empty()).then_some(word));
    words
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    })
}

/// Repository paths the line names (`scripts/stack`, `k6/add.js`…) that
/// do not exist, and scripts that are not executable.
fn repo_paths(line: &str) -> Vec<String> {
    let root = workspace_root();
    words(line)
        .iter()
        .flat_map(|w| {
            w.split(['=', ':', ',', '(', '$'])
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|w| REPO_DIRS.iter().any(|d| w.starts_with(&format!("{d}/"))))
        .filter_map(|w| {
            let path = root.join(w.trim_end_matches(['.', ')']));
            let executable = path
                .metadata()
                .is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
            match (path.exists(), w.starts_with("scripts/")) {
                (false, _) => Some(format!("{w}: no such file")),
                (true, true) if !executable => Some(format!("{w}: not executable")),
                _ => None,
            }
        })
        .collect()
}

/// `cargo test|build … -p PKG … --test NAME`: the package and test exist.
fn check_cargo(args: &[&str]) -> Vec<String> {
    let root = workspace_root();
    let value_of = |flag: &str| {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1])
            .collect::<Vec<_>>()
    };
    let packages = value_of("-p");
    let mut problems: Vec<String> = packages
        .iter()
        .filter(|p| !root.join(p).join("Cargo.toml").is_file())
        .map(|p| format!("cargo -p {p}: no such package"))
        .collect();
    for test in value_of("--test") {
        let exists = packages.iter().any(|p| {
            let tests = root.join(p).join("tests");
            tests.join(format!("{test}.rs")).is_file() || tests.join(test).join("main.rs").is_file()
        });
        if !exists {
            problems.push(format!("cargo --test {test}: no such test in {packages:?}"));
        }
    }
    problems
}

/// The binaries' help texts, by command path, run once each.
struct Helps {
    dir: PathBuf,
    texts: HashMap<Vec<String>, String>,
}

impl Helps {
    fn new() -> Self {
        let totaler = Path::new(env!("CARGO_BIN_EXE_totaler"));
        let dir = totaler.parent().expect("a directory").to_path_buf();
        if BINARIES.iter().any(|b| !dir.join(b).is_file()) {
            build_binaries();
        }
        Self {
            dir,
            texts: HashMap::new(),
        }
    }

    /// Walks `args` down the subcommands; each `--flag` must be in the
    /// help of the command it follows.
    fn check(&mut self, binary: &str, args: &[&str]) -> Vec<String> {
        let mut path = vec![binary.to_string()];
        let mut problems = Vec::new();
        for arg in args {
            if let Some(flag) = arg.strip_prefix("--") {
                let flag = flag.split('=').next().expect("split yields one");
                if !lists_flag(self.help(&path), flag) {
                    problems.push(format!("`{}` has no --{flag}", path.join(" ")));
                }
            } else if self.subcommands(&path).contains(*arg) {
                path.push(arg.to_string());
            }
        }
        problems
    }

    fn help(&mut self, path: &[String]) -> &str {
        let binary = self.dir.join(&path[0]);
        self.texts.entry(path.to_vec()).or_insert_with(|| {
            let args: Vec<&str> = path[1..].iter().map(String::as_str).collect();
            help(&binary, &args)
        })
    }

    /// The `Commands:` clap lists, and the adder's `republish`, which its
    /// `main` dispatches before clap parses.
    fn subcommands(&mut self, path: &[String]) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self
            .help(path)
            .split("Commands:\n")
            .nth(1)
            .unwrap_or_default()
            .lines()
            .take_while(|line| !line.trim().is_empty())
            .filter_map(|line| line.split_whitespace().next().map(str::to_string))
            .collect();
        if path == ["adder"] {
            names.insert("republish".into());
        }
        names
    }
}

/// Whether a help text lists `--flag` (not merely a longer flag it
/// begins).
fn lists_flag(help: &str, flag: &str) -> bool {
    let wanted = format!("--{flag}");
    help.match_indices(&wanted).any(|(at, _)| {
        let next = help[at + wanted.len()..].chars().next();
        !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// Builds the binaries the docs name next to the totaler under test.
fn build_binaries() {
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "--locked", "--bins"]);
    for binary in BINARIES {
        build.args(["-p", binary]);
    }
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "cargo build of {BINARIES:?} failed");
}
