//! `compose.pg-ha.yml` against `scripts/pg-cluster`, without Docker: the
//! Patroni configuration every compose member reads (`patroni/patroni.yml`)
//! has the script's replication settings (the `bootstrap.dcs` and
//! `bootstrap.initdb` sections: synchronous and strict, `use_pg_rewind`,
//! data checksums, the failover timing), every member names itself, and the
//! adder's `DATABASE_URL` names every member and asks for the writable
//! primary. Checks of the files' text; docs/operating/compose-pg-ha.md has
//! the runs on Docker.

use std::collections::BTreeSet;

use crate::support::{read, workspace_root};

/// The Patroni settings that make an acknowledged Add durable on two servers
/// and let a failed primary rejoin; both files must carry them.
const ESSENTIAL: [(&str, &str); 4] = [
    ("bootstrap.dcs.synchronous_mode", "true"),
    ("bootstrap.dcs.synchronous_mode_strict", "true"),
    ("bootstrap.dcs.postgresql.use_pg_rewind", "true"),
    ("bootstrap.initdb[]", "data-checksums"),
];

#[test]
fn the_compose_members_replicate_as_scripts_pg_cluster_does() {
    let root = workspace_root();
    let script = flatten(&pg_cluster_config(&read(&root.join("scripts/pg-cluster"))));
    let compose = flatten(&read(&root.join("patroni/patroni.yml")));
    for (key, value) in ESSENTIAL {
        for (file, entries) in [
            ("scripts/pg-cluster", &script),
            ("patroni/patroni.yml", &compose),
        ] {
            assert!(
                entries.contains(&(key.to_owned(), value.to_owned())),
                "{file} lacks {key}: {value}"
            );
        }
    }
    let replication = script.iter().filter(|(key, _)| {
        key.starts_with("bootstrap.dcs.") || key.starts_with("bootstrap.initdb")
    });
    for entry in replication {
        assert!(
            compose.contains(entry),
            "scripts/pg-cluster sets {}: {}, patroni/patroni.yml does not",
            entry.0,
            entry.1
        );
    }
}

#[test]
fn every_compose_member_names_itself_and_reads_the_shared_patroni_config() {
    let compose = flatten(&read(&workspace_root().join("compose.pg-ha.yml")));
    let members = members(&compose);
    assert!(members.len() >= 3, "fewer than three members: {members:?}");
    for member in &members {
        let has = |key: &str, value: &str| {
            compose.contains(&(format!("services.{member}.{key}"), value.to_owned()))
        };
        for (key, port) in [
            ("PATRONI_RESTAPI_CONNECT_ADDRESS", 8008),
            ("PATRONI_POSTGRESQL_CONNECT_ADDRESS", 5432),
        ] {
            assert!(
                has(&format!("environment.{key}"), &format!("{member}:{port}")),
                "{member}: {key}"
            );
        }
        assert!(
            has(
                "volumes[]",
                "./patroni/patroni.yml:/etc/patroni/patroni.yml:ro"
            ),
            "{member} does not mount patroni/patroni.yml"
        );
        assert!(
            has(
                "volumes[]",
                &format!("{member}-data:/var/lib/postgresql/patroni")
            ),
            "{member} keeps its data outside its own named volume"
        );
    }
    assert!(
        compose
            .iter()
            .any(|(key, _)| key == "services.postgres.profiles"),
        "compose.yml's single postgres would start beside the cluster"
    );
}

#[test]
fn the_compose_adder_names_every_member_and_only_takes_the_writable_primary() {
    let compose = flatten(&read(&workspace_root().join("compose.pg-ha.yml")));
    let url = compose
        .iter()
        .find(|(key, _)| key == "services.adder.environment.DATABASE_URL")
        .map(|(_, url)| defaults(url))
        .expect("compose.pg-ha.yml sets the adder's DATABASE_URL");
    let servers = proto::outbox::Servers::parse(&url);
    assert_eq!(
        servers.target_session_attrs.as_deref(),
        Some("read-write"),
        "{url}"
    );
    let hosts: BTreeSet<String> = servers
        .urls
        .iter()
        .map(|server| {
            let authority = server
                .split('@')
                .nth(1)
                .and_then(|rest| rest.split('/').next());
            authority.unwrap_or_default().to_owned()
        })
        .collect();
    let expected: BTreeSet<String> = members(&compose)
        .iter()
        .map(|m| format!("{m}:5432"))
        .collect();
    assert_eq!(
        hosts, expected,
        "the adder's servers are not the members: {url}"
    );
}

/// The services that are Patroni members: those setting `PATRONI_NAME`,
/// which must be the service's own name.
fn members(compose: &[(String, String)]) -> BTreeSet<String> {
    let mut members = BTreeSet::new();
    for (key, value) in compose {
        let Some(service) = key
            .strip_prefix("services.")
            .and_then(|rest| rest.strip_suffix(".environment.PATRONI_NAME"))
        else {
            continue;
        };
        assert_eq!(service, value, "service {service} calls its member {value}");
        members.insert(service.to_owned());
    }
    members
}

/// The member configuration `scripts/pg-cluster` writes (its heredoc).
fn pg_cluster_config(script: &str) -> String {
    let start = script
        .find(".yml\" <<EOF\n")
        .expect("scripts/pg-cluster writes a member's YAML with a heredoc");
    let body = &script[start..];
    let body = &body[body.find('\n').map_or(0, |n| n + 1)..];
    body.split("\nEOF\n").next().unwrap_or_default().to_owned()
}

/// `${VAR:-default}` replaced by its default (as with nothing set).
fn defaults(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').map_or(rest.len(), |n| start + n);
        let inner = &rest[start + 2..end];
        out.push_str(inner.split_once(":-").map_or("", |(_, default)| default));
        rest = rest.get(end + 1..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

/// The block-style YAML of these files as (dotted path, value) pairs: a
/// list item is `path[]`, a flow collection or a `<<` merge stays text, a
/// block scalar (`|`) is skipped, an anchor (`&name`) and quotes around a
/// value are dropped.
fn flatten(text: &str) -> Vec<(String, String)> {
    let mut entries = Vec::new();
    let mut parents: Vec<(usize, String)> = Vec::new();
    let mut block_scalar: Option<usize> = None;
    for line in text.lines() {
        let content = line.trim_start();
        let indent = line.len() - content.len();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        if let Some(owner) = block_scalar {
            if indent > owner {
                continue;
            }
            block_scalar = None;
        }
        while parents.last().is_some_and(|(depth, _)| *depth >= indent) {
            parents.pop();
        }
        let path: Vec<&str> = parents.iter().map(|(_, key)| key.as_str()).collect();
        let path = path.join(".");
        let (key, value) = match content.strip_prefix("- ") {
            Some(item) => (format!("{path}[]"), item.trim()),
            None => match content.split_once(':') {
                Some((key, value)) => (format!("{path}.{key}"), value.trim()),
                None => continue,
            },
        };
        let key = key.trim_start_matches('.').to_owned();
        let value = match value.strip_prefix('&') {
            Some(anchored) => anchored.split_once(' ').map_or("", |(_, v)| v.trim()),
            None => value,
        };
        if value == "|" || value == ">" {
            block_scalar = Some(indent);
        } else if value.is_empty() {
            let own = key.rsplit('.').next().unwrap_or_default().to_owned();
            parents.push((indent, own));
        } else {
            entries.push((key, value.trim_matches(['\'', '"']).to_owned()));
        }
    }
    entries
}
