//! `docker compose up --wait` and nothing else, without Docker: the compose
//! files need no variable set (every `${VAR}` has a default), no broker
//! password or Erlang cookie is in them, each secret a service reads from
//! `/run/secrets/tally/` is one the `secrets` service generates;
//! `scripts/secrets` (that service's command) generates each secret once,
//! keeps it on every later run and lets a value from the environment win;
//! `rabbitmq/entrypoint.sh` renders the broker's users with the passwords
//! of its `*_FILE` settings, and names a file that gives none.

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Output},
};

use serde_json::Value;

use crate::support::{read, temp_dir, workspace_root};

const COMPOSE_FILES: [&str; 3] = ["compose.yml", "compose.cluster.yml", "compose.pg-ha.yml"];
/// Where the services find the generated secrets.
const SECRETS_DIR: &str = "/run/secrets/tally/";

#[test]
fn the_compose_files_need_no_variable_set() {
    for file in COMPOSE_FILES {
        let text = read(&workspace_root().join(file));
        for (number, line) in text.lines().enumerate() {
            if line.trim_start().starts_with('#') {
                continue;
            }
            for variable in interpolations(line) {
                let name_end = variable
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(variable.len());
                let rest = &variable[name_end..];
                assert!(
                    rest.starts_with(":-") || rest.starts_with('-'),
                    "{file}:{}: ${{{variable}}} has no default, so compose needs it set",
                    number + 1
                );
            }
        }
    }
}

#[test]
fn no_broker_secret_is_in_the_compose_files_and_each_is_generated() {
    for file in ["compose.yml", "compose.cluster.yml"] {
        let text = read(&workspace_root().join(file));
        let generated = generated_secrets(&text);
        let read_by_services: BTreeSet<&str> = text
            .match_indices(SECRETS_DIR)
            .map(|(at, _)| {
                let rest = &text[at + SECRETS_DIR.len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .filter(|name| !name.is_empty())
            .collect();
        assert!(read_by_services.len() >= 3, "{file}: {read_by_services:?}");
        for name in &read_by_services {
            assert!(
                generated.contains(*name),
                "{file}: {SECRETS_DIR}{name} is read but not generated ({generated:?})"
            );
        }
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            if let Some((_, rest)) = without_interpolations(line).split_once("amqp://") {
                let userinfo = rest.split('@').next().unwrap_or_default();
                assert!(
                    !userinfo.contains(':'),
                    "{file}: an AMQP URL with a password: {line}"
                );
            }
            let setting = line.trim_start();
            let key = setting.split(' ').next().unwrap_or_default();
            if key.starts_with("RABBITMQ_")
                && (key.ends_with("_PASSWORD:") || key.ends_with("_ERLANG_COOKIE:"))
            {
                assert!(
                    generated_from_environment(&text, setting),
                    "{file}: a secret set outside the secrets service: {line}"
                );
            }
        }
        if file == "compose.cluster.yml" {
            assert!(
                generated.contains("rabbitmq-erlang-cookie"),
                "{generated:?}"
            );
        }
    }
}

#[test]
fn the_secrets_script_generates_each_secret_once_and_keeps_it() {
    let dir = temp_dir("secrets-once").join("secrets");
    let names = ["rabbitmq-adder-password", "rabbitmq-erlang-cookie"];
    let first = run_secrets(&dir, &names, &[]);
    assert!(first.status.success(), "{}", text(&first));
    let values: Vec<String> = names.iter().map(|n| read(&dir.join(n))).collect();
    for (name, value) in names.iter().zip(&values) {
        assert_eq!(value.len(), 32, "{name}: {value:?}");
        assert!(value.chars().all(|c| c.is_ascii_alphanumeric()), "{name}");
        let mode = std::fs::metadata(dir.join(name))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400, "{name} is readable by others");
        assert!(
            !text(&first).contains(value.as_str()),
            "a secret is printed"
        );
    }
    assert_ne!(values[0], values[1], "two secrets, one value");
    assert!(text(&first).contains("rabbitmq-adder-password generated"));

    let again = run_secrets(&dir, &names, &[]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("rabbitmq-adder-password kept"));
    for (name, value) in names.iter().zip(&values) {
        assert_eq!(&read(&dir.join(name)), value, "{name} changed on a rerun");
    }
    let other = temp_dir("secrets-other").join("secrets");
    assert!(run_secrets(&other, &names[..1], &[]).status.success());
    assert_ne!(read(&other.join(names[0])), values[0], "not random");
}

#[test]
fn a_password_from_the_environment_wins_over_the_generated_one() {
    let dir = temp_dir("secrets-env").join("secrets");
    let names = ["rabbitmq-admin-password"];
    assert!(run_secrets(&dir, &names, &[]).status.success());
    let own = "my own password";
    let output = run_secrets(&dir, &names, &[("RABBITMQ_ADMIN_PASSWORD", own)]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(!text(&output).contains(own), "a secret is printed");
    assert_eq!(read(&dir.join(names[0])), own);
    // Unset again: what is in the volume stays.
    assert!(
        run_secrets(&dir, &names, &[("RABBITMQ_ADMIN_PASSWORD", "")])
            .status
            .success()
    );
    assert_eq!(read(&dir.join(names[0])), own);
}

#[test]
fn the_broker_entrypoint_renders_the_passwords_of_its_files() {
    let dir = temp_dir("entrypoint-files");
    let secrets = [
        ("RABBITMQ_ADDER_PASSWORD_FILE", "adder", "Adder-pass&1\n"),
        (
            "RABBITMQ_TOTALER_PASSWORD_FILE",
            "totaler",
            "totaler-pass-2",
        ),
        ("RABBITMQ_ADMIN_PASSWORD_FILE", "admin", "admin pass 3\n"),
    ];
    let mut command = entrypoint(&dir);
    for (setting, name, value) in secrets {
        let path = dir.join(name);
        std::fs::write(&path, value).expect("write a password file");
        command.env(setting, path);
    }
    let output = command.output().expect("run rabbitmq/entrypoint.sh");
    assert!(output.status.success(), "{}", text(&output));
    let rendered: Value = serde_json::from_str(&read(&dir.join("out/definitions.json")))
        .expect("the rendered definitions are JSON");
    let password_of = |user: &str| {
        let users = rendered["users"].as_array().expect("a users list");
        let found = users.iter().find(|u| u["name"] == user);
        found.map(|u| u["password"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(password_of("tally-adder").as_deref(), Some("Adder-pass&1"));
    assert_eq!(
        password_of("tally-totaler").as_deref(),
        Some("totaler-pass-2")
    );
    assert_eq!(password_of("admin").as_deref(), Some("admin pass 3"));
}

#[test]
fn the_broker_entrypoint_names_a_password_file_that_gives_no_password() {
    let dir = temp_dir("entrypoint-bad");
    let good = dir.join("good");
    std::fs::write(&good, "pass").expect("write");
    let empty = dir.join("empty");
    std::fs::write(&empty, "").expect("write");
    let missing = dir.join("missing");
    for (file, why) in [(&missing, "cannot read"), (&empty, "is empty")] {
        let output = entrypoint(&dir)
            .env("RABBITMQ_ADDER_PASSWORD_FILE", &good)
            .env("RABBITMQ_TOTALER_PASSWORD_FILE", file)
            .env("RABBITMQ_ADMIN_PASSWORD_FILE", &good)
            .output()
            .expect("run rabbitmq/entrypoint.sh");
        let said = text(&output);
        assert!(!output.status.success(), "{file:?}: {said}");
        for part in [
            "RABBITMQ_TOTALER_PASSWORD_FILE: ",
            why,
            &file.display().to_string(),
        ] {
            assert!(said.contains(part), "{part} not said: {said}");
        }
    }
    let output = entrypoint(&dir)
        .env("RABBITMQ_ADDER_PASSWORD_FILE", &good)
        .env("RABBITMQ_TOTALER_PASSWORD_FILE", &good)
        .output()
        .expect("run rabbitmq/entrypoint.sh");
    assert!(
        !output.status.success(),
        "no admin password, and it started"
    );
    assert!(text(&output).contains("RABBITMQ_ADMIN_PASSWORD_FILE"));
}

/// The contents of every `${...}` on `line` (`$${...}` is a literal `$`).
fn interpolations(line: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("${") {
        let escaped = at > 0 && rest.as_bytes()[at - 1] == b'$';
        let inner = &rest[at + 2..];
        let end = inner.find('}').unwrap_or(inner.len());
        if !escaped {
            found.push(&inner[..end]);
        }
        rest = &inner[end..];
    }
    found
}

/// `line` with every `${...}` taken out.
fn without_interpolations(line: &str) -> String {
    let mut out = line.to_owned();
    for variable in interpolations(line) {
        out = out.replacen(&format!("${{{variable}}}"), "", 1);
    }
    out
}

/// The secrets a compose file's `secrets` service generates: the list items
/// `- name[:owner]` whose name starts with `rabbitmq-`.
fn generated_secrets(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.trim_start().strip_prefix("- "))
        .map(|item| item.split(':').next().unwrap_or_default().trim())
        .filter(|name| name.starts_with("rabbitmq-") && !name.contains('.'))
        .map(str::to_owned)
        .collect()
}

/// Whether `setting` (`RABBITMQ_X: ${RABBITMQ_X:-}`) passes an optional
/// value of one's own to the secrets service, which writes it as a secret.
fn generated_from_environment(text: &str, setting: &str) -> bool {
    let name = setting.split(':').next().unwrap_or_default();
    let secret = name.to_lowercase().replace('_', "-");
    setting.trim_end() == format!("{name}: ${{{name}:-}}")
        && generated_secrets(text).contains(&secret)
}

fn run_secrets(dir: &Path, names: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new("bash")
        .arg(workspace_root().join("scripts/secrets"))
        .arg(dir)
        .args(names)
        .env_remove("RABBITMQ_ADDER_PASSWORD")
        .env_remove("RABBITMQ_ADMIN_PASSWORD")
        .env_remove("RABBITMQ_ERLANG_COOKIE")
        .envs(env.iter().copied())
        .output()
        .expect("run scripts/secrets")
}

/// `rabbitmq/entrypoint.sh render-definitions`, from the repo's template
/// into `dir/out`, with no password setting inherited.
fn entrypoint(dir: &Path) -> Command {
    let root = workspace_root();
    let mut command = Command::new("sh");
    command
        .arg(root.join("rabbitmq/entrypoint.sh"))
        .arg("render-definitions")
        .env(
            "TALLY_DEFINITIONS_TEMPLATE",
            root.join("rabbitmq/definitions.json"),
        )
        .env("TALLY_DEFINITIONS_DIR", dir.join("out"));
    for user in ["ADDER", "TOTALER", "ADMIN"] {
        command.env_remove(format!("RABBITMQ_{user}_PASSWORD"));
        command.env_remove(format!("RABBITMQ_{user}_PASSWORD_FILE"));
        command.env_remove(format!("RABBITMQ_{user}_USER"));
    }
    command.env_remove("RABBITMQ_QUORUM_GROUP_SIZE");
    command
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
