//! What watches the compose stacks: every adder, totaler, broker node and
//! balancer that `compose.yml` or `compose.cluster.yml` starts is a scrape
//! target of its Prometheus configuration (`prometheus.yml`,
//! `prometheus.cluster.yml`), no target names a service the file does not
//! start, and the Grafana dashboard draws each adder, totaler and broker node
//! as a series of its own (by `instance`). Checks of the files' text, without
//! Docker; docs/operating/compose-cluster.md says what to look at on Docker.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::{read, workspace_root};

/// Each compose file and the Prometheus configuration its Prometheus reads.
const STACKS: [(&str, &str); 2] = [
    ("compose.yml", "prometheus.yml"),
    ("compose.cluster.yml", "prometheus.cluster.yml"),
];

#[test]
fn every_service_with_metrics_is_scraped_in_both_compose_stacks() {
    let root = workspace_root();
    for (compose, prometheus) in STACKS {
        let services = compose_services(&read(&root.join(compose)));
        let targets = scrape_targets(&read(&root.join(prometheus)));
        for family in ["adder", "totaler", "rabbitmq"] {
            assert!(
                services.iter().any(|s| family_of(s) == family),
                "{compose} starts no {family}: {services:?}"
            );
        }
        for service in &services {
            let Some((port, jobs)) = scraped_as(service) else {
                continue;
            };
            for job in jobs {
                let target = ((*job).to_owned(), format!("{service}:{port}"));
                assert!(
                    targets.contains(&target),
                    "job {job} of {prometheus} does not scrape {}, which {compose} starts",
                    target.1
                );
            }
        }
        for (job, target) in &targets {
            let host = target.split(':').next().unwrap_or_default();
            assert!(
                host == "localhost" || services.contains(host),
                "job {job} of {prometheus} scrapes {target}, but {compose} starts no {host}"
            );
        }
    }
}

#[test]
fn the_dashboard_draws_each_adder_totaler_and_broker_node_on_its_own() {
    let path = workspace_root().join("grafana/dashboards/tally.json");
    let dashboard: Value = serde_json::from_str(&read(&path)).expect("the dashboard is JSON");
    let targets = panel_targets(&dashboard["panels"]);
    assert!(!targets.is_empty(), "the dashboard has queries");
    for prefix in ["adder_", "totaler_", "rabbitmq_"] {
        let per_instance = targets.iter().filter(|(expr, legend)| {
            expr.contains(prefix) && keeps_instance(expr) && legend.contains("{{instance}}")
        });
        assert!(
            per_instance.count() >= 2,
            "fewer than two queries of {prefix}* metrics show one series per instance"
        );
    }
    for (expr, legend) in &targets {
        if keeps_instance(expr) {
            assert!(
                legend.contains("{{instance}}"),
                "{expr} is per instance, but its legend {legend:?} does not say which"
            );
        }
    }
}

/// The names of the services under `services:` (two spaces in).
fn compose_services(text: &str) -> BTreeSet<String> {
    let mut inside = false;
    let mut services = BTreeSet::new();
    for line in text.lines() {
        if !line.starts_with(' ') && !line.starts_with('#') && !line.trim().is_empty() {
            inside = line.trim_end() == "services:";
            continue;
        }
        let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':')) else {
            continue;
        };
        if inside && !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            services.insert(name.to_owned());
        }
    }
    assert!(!services.is_empty(), "no services found");
    services
}

/// (job, `host:port`) of every quoted target on a `targets:` line.
fn scrape_targets(text: &str) -> BTreeSet<(String, String)> {
    let mut job = String::new();
    let mut targets = BTreeSet::new();
    for line in text.lines().map(str::trim_start) {
        if let Some(name) = line.strip_prefix("- job_name: ") {
            job = name.trim().to_owned();
        } else if line.starts_with("- targets:") {
            for target in line.split('"').skip(1).step_by(2) {
                targets.insert((job.clone(), target.to_owned()));
            }
        }
    }
    assert!(!targets.is_empty(), "no scrape targets found");
    targets
}

/// `adder-2` -> `adder`.
fn family_of(service: &str) -> &str {
    match service.rsplit_once('-') {
        Some((family, n)) if n.chars().all(|c| c.is_ascii_digit()) => family,
        _ => service,
    }
}

/// The port a service serves its metrics on and the jobs that must scrape
/// it, if it has any.
fn scraped_as(service: &str) -> Option<(u16, &'static [&'static str])> {
    match family_of(service) {
        "adder" => Some((8081, &["adder"])),
        "totaler" => Some((8080, &["totaler"])),
        "rabbitmq" => Some((15692, &["rabbitmq", "rabbitmq-queues"])),
        "haproxy" => Some((8404, &["haproxy"])),
        _ => None,
    }
}

/// (expr, legendFormat) of every query of every panel, rows included.
fn panel_targets(panels: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in panels.as_array().expect("a panels list") {
        if panel.get("panels").is_some() {
            out.extend(panel_targets(&panel["panels"]));
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            let text = |key: &str| target[key].as_str().unwrap_or_default().to_owned();
            out.push((text("expr"), text("legendFormat")));
        }
    }
    out
}

/// Whether the series of `expr` keep their `instance` label: every
/// aggregation in it is `by (…instance…)`, or there is none.
fn keeps_instance(expr: &str) -> bool {
    let bare = ["sum", "max", "min", "avg", "count"]
        .iter()
        .any(|op| expr.contains(&format!("{op}(")) || expr.contains(&format!("{op} (")));
    !bare
        && expr.split("by (").skip(1).all(|rest| {
            rest.split(')')
                .next()
                .is_some_and(|labels| labels.split(',').any(|l| l.trim() == "instance"))
        })
}
