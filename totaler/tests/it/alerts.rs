//! The Prometheus rules in `prometheus/rules` (the workspace's, not only the
//! totaler's: this binary is where `cargo test --workspace` runs them),
//! checked and unit-tested with the real promtool: `promtool check config`
//! of `prometheus.yml` and `prometheus.cluster.yml`, `check rules`, `test
//! rules prometheus/tests/alerts.yml`.
//! Each alert's tests are shown able to fail: with its expression replaced
//! by one that never fires, and by one that always fires, promtool must
//! fail. The metric names the rules use must be ones the services export.
//!
//! promtool is `$PROMTOOL` or `promtool` on PATH (Debian's `prometheus`
//! package; `scripts/test` installs it when missing).

use std::{
    path::Path,
    process::{Command, Output},
};

use crate::support::{read, temp_dir, workspace_root as root};

#[test]
fn prometheus_config_and_rules_pass_promtool_check() {
    let root = root();
    // The single node's and the cluster's (compose.cluster.yml).
    for file in ["prometheus.yml", "prometheus.cluster.yml"] {
        let config = promtool(&root, &["check", "config", file]);
        assert!(config.status.success(), "{file}: {}", text(&config));
        assert!(
            text(&config).contains("2 rule files found"),
            "{file}: {}",
            text(&config)
        );
    }
    let rules = promtool(
        &root,
        &[
            "check",
            "rules",
            "prometheus/rules/recording.yml",
            "prometheus/rules/alerts.yml",
        ],
    );
    assert!(rules.status.success(), "{}", text(&rules));
}

#[test]
fn every_alert_fires_and_stays_quiet_as_its_unit_tests_say() {
    let root = root();
    let tests = promtool(&root, &["test", "rules", "prometheus/tests/alerts.yml"]);
    assert!(tests.status.success(), "{}", text(&tests));
    let cases = read(&root.join("prometheus/tests/alerts.yml"));
    for alert in alerts(&read(&root.join("prometheus/rules/alerts.yml"))) {
        assert!(
            cases.contains(&format!("alertname: {alert}")),
            "{alert} has no unit test"
        );
    }
}

#[test]
fn each_alerts_unit_tests_fail_when_it_never_or_always_fires() {
    let root = root();
    let rules = read(&root.join("prometheus/rules/alerts.yml"));
    let copy = temp_dir("alerts");
    std::fs::create_dir_all(copy.join("rules")).expect("create the rules copy");
    std::fs::create_dir_all(copy.join("tests")).expect("create the tests copy");
    std::fs::copy(
        root.join("prometheus/rules/recording.yml"),
        copy.join("rules/recording.yml"),
    )
    .expect("copy the recording rules");
    std::fs::copy(
        root.join("prometheus/tests/alerts.yml"),
        copy.join("tests/alerts.yml"),
    )
    .expect("copy the unit tests");
    for alert in alerts(&rules) {
        for (broken, expr) in [
            ("never fires", "vector(1) < 0"),
            ("always fires", "vector(1)"),
        ] {
            let mutated = with_expr(&rules, &alert, expr);
            std::fs::write(copy.join("rules/alerts.yml"), mutated).expect("write the mutant");
            let run = promtool(&copy, &["test", "rules", "tests/alerts.yml"]);
            assert!(
                !run.status.success(),
                "{alert}'s unit tests pass even when it {broken}: they cannot fail"
            );
        }
    }
    std::fs::remove_dir_all(&copy).ok();
}

#[test]
fn rules_use_only_metrics_the_services_export() {
    let root = root();
    let exported = [
        read(&root.join("adder/src/metrics.rs")),
        read(&root.join("totaler/src/metrics.rs")),
    ]
    .concat();
    for file in [
        "prometheus/rules/recording.yml",
        "prometheus/rules/alerts.yml",
    ] {
        let rules = read(&root.join(file));
        for name in metric_names(&rules) {
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            assert!(
                exported.contains(&format!("\"{base}\"")),
                "{file} names {name}, which neither service exports"
            );
        }
    }
}

fn promtool(dir: &Path, args: &[&str]) -> Output {
    let program = std::env::var_os("PROMTOOL").unwrap_or_else(|| "promtool".into());
    Command::new(&program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "run {}: {e} (install it: apt-get install --no-install-recommends prometheus, \
                 as scripts/test does; or set PROMTOOL)",
                program.to_string_lossy()
            )
        })
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The names after `- alert:`.
fn alerts(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect()
}

/// `rules` with the one-line `expr:` of `alert` replaced by `expr`.
fn with_expr(rules: &str, alert: &str, expr: &str) -> String {
    let mut seen = false;
    let mut replaced = false;
    let mut out = String::new();
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            seen = name == alert;
        }
        if seen && !replaced && line.trim().starts_with("expr: ") {
            let indent = &line[..line.len() - line.trim_start().len()];
            out.push_str(&format!("{indent}expr: {expr}\n"));
            replaced = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(replaced, "{alert} has a one-line expr");
    out
}

/// Every `adder_*` and `totaler_*` name in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("adder_") || word.starts_with("totaler_"))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    assert!(!names.is_empty(), "the rules name the services' metrics");
    names
}
