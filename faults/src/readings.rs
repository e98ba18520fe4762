//! What the suite reads at a run's end, in every mode: each totaler's
//! `GET /sum` (parsed exactly), `sum.txt`'s first line, the outbox, the
//! queues, `totaler verify`; gathered into a [`Settled`], and read again
//! (bounded) until the total settles. Reads only: it changes nothing.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use lapin::{options::QueueDeclareOptions, types::FieldTable};

use crate::{
    load::Tally,
    outbox,
    process::{Service, http_get},
    settled::Settled,
};

/// Where a run's end is read.
pub struct Sources<'a> {
    /// The totalers whose `GET /sum` must show the total.
    pub totalers: Vec<&'a Service>,
    pub sum_file: &'a Path,
    /// The outbox's database (its primary), if one answers.
    pub outbox: Option<String>,
    /// A broker node holding the queues, if one runs.
    pub amqp: Option<String>,
    /// Rows the suite committed straight to the outbox.
    pub backlog_rows: u64,
    /// The dead letters there must be.
    pub expected_dead: u32,
}

/// How `totaler verify` is run at the end: the binary, the ledger and the
/// outbox (every member of a cluster, for the failover mode).
pub struct Verify {
    pub binary: PathBuf,
    pub sum_file: PathBuf,
    pub url: String,
}

impl Settled {
    /// Reads the run's end (`verify` is left `Ok`: [`Verify::run`] fills it).
    pub async fn read(sources: &Sources<'_>, tally: &Tally) -> Self {
        let mut served = Vec::new();
        for totaler in &sources.totalers {
            served.push((totaler.name.clone(), self::served(totaler.http).await));
        }
        let (uncertain, committed, sum) = match &sources.outbox {
            Some(url) => expected(tally, url).await,
            None => (Vec::new(), Vec::new(), tally.sum()),
        };
        let outbox = match &sources.outbox {
            Some(url) => outbox::reconcile(url).await.ok(),
            None => None,
        };
        let (ready, dead_letters) = match &sources.amqp {
            Some(url) => queues(url).await.unwrap_or((u32::MAX, u32::MAX)),
            None => (u32::MAX, u32::MAX),
        };
        Self {
            served,
            file: file_total(sources.sum_file),
            acknowledged: tally.acknowledged.load(Ordering::Relaxed),
            idless_acknowledged: tally.idless_acknowledged.load(Ordering::Relaxed),
            retries: tally.retries.load(Ordering::Relaxed),
            uncertain: uncertain.len(),
            uncertain_committed: committed.len(),
            backlog_rows: sources.backlog_rows,
            expected: sum,
            outbox,
            ready,
            dead_letters,
            expected_dead: sources.expected_dead,
            verify: Ok(()),
        }
    }
}

/// Reads until the total is exact and drained, or `limit` passed, or the
/// backlog is gone and the total has not moved for 10 s (a wrong total
/// then stays wrong); then waits 2 s more: a total that is exact now must
/// stay exact, which the caller's final reading checks.
pub async fn wait_until_settled(limit: Duration, mut read: impl AsyncFnMut() -> Settled) {
    let deadline = Instant::now() + limit;
    let mut settled = read().await;
    let mut still = (settled.served.clone(), Instant::now());
    while Instant::now() < deadline && !settled.total_problems().is_empty() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        settled = read().await;
        if settled.served != still.0 {
            still = (settled.served.clone(), Instant::now());
        } else if settled.drained() && still.1.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// `GET /sum` of the totaler at `addr`, parsed as an exact integer.
pub async fn served(addr: SocketAddr) -> Result<i128, String> {
    match http_get(addr, "/sum").await {
        Some((200, body)) => exact_sum(&body).ok_or_else(|| format!("body {body:?}")),
        Some((status, body)) => Err(format!("{status} {body:?}")),
        None => Err("no answer".to_owned()),
    }
}

/// The exact integer of a `{"sum": N}` body, parsed without floating
/// point; `None` unless N is a plain JSON integer (no fraction, no exponent).
pub fn exact_sum(body: &str) -> Option<i128> {
    let start = body.find("\"sum\"")? + 5;
    let rest = body[start..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || (*i == 0 && *c == '-')))
        .map_or(rest.len(), |(i, _)| i);
    let (number, after) = rest.split_at(end);
    let after = after.trim_start();
    if !(after.starts_with('}') || after.starts_with(',')) {
        return None;
    }
    number.parse().ok()
}

/// The total on the first line of the ledger at `path`.
pub fn file_total(path: &Path) -> Option<i128> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.lines().next().and_then(|line| line.parse().ok()))
}

/// The uncertain Adds, those of them the outbox at `url` committed, and
/// the total they and the acknowledged ones make.
pub async fn expected(tally: &Tally, url: &str) -> (Vec<(i64, i64)>, Vec<(i64, i64)>, i128) {
    let uncertain = tally.uncertain.lock().expect("tally lock").clone();
    let committed = outbox::committed_of(url, &uncertain)
        .await
        .unwrap_or_default();
    let expected = tally.sum() + committed.iter().map(|(_, s)| i128::from(*s)).sum::<i128>();
    (uncertain, committed, expected)
}

/// Messages ready in `tally.sums` and in `tally.sums.dead`.
pub async fn queues(url: &str) -> anyhow::Result<(u32, u32)> {
    let connecting = lapin::Connection::connect(url, lapin::ConnectionProperties::default());
    let connection = tokio::time::timeout(Duration::from_secs(5), connecting).await??;
    let channel = connection.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let mut counts = [0; 2];
    for (count, queue) in counts.iter_mut().zip(["tally.sums", "tally.sums.dead"]) {
        *count = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await?
            .message_count();
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        connection.close(200, "checked".into()),
    )
    .await;
    Ok((counts[0], counts[1]))
}

impl Verify {
    /// Runs `totaler verify --sum-file SUM_FILE --database-url URL`: Ok when
    /// it exists and exits 0, else what it said.
    pub fn run(&self) -> Result<(), String> {
        let help = Command::new(&self.binary)
            .args(["verify", "--help"])
            .output();
        if !help.as_ref().is_ok_and(|o| o.status.success()) {
            let status = help.map_or_else(|e| e.to_string(), |o| o.status.to_string());
            return Err(format!(
                "totaler verify is missing (`totaler verify --help` exited with {status})"
            ));
        }
        let output = Command::new(&self.binary)
            .arg("verify")
            .arg("--sum-file")
            .arg(&self.sum_file)
            .args(["--database-url", &self.url])
            .output()
            .map_err(|e| format!("running totaler verify: {e}"))?;
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "totaler verify exited with {}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_sum_reads_integers_beyond_i64_and_refuses_floats() {
        assert_eq!(exact_sum(r#"{"sum":5}"#), Some(5));
        assert_eq!(
            exact_sum(r#"{"sum": -27670116110564327424}"#),
            Some(-27_670_116_110_564_327_424)
        );
        assert_eq!(
            exact_sum(r#"{"sum":18446744073709551616, "x": 1}"#),
            Some(18_446_744_073_709_551_616)
        );
        assert_eq!(exact_sum(r#"{"sum":1.8446744073709552e19}"#), None);
        assert_eq!(exact_sum(r#"{"sum":"5"}"#), None);
        assert_eq!(exact_sum(r#"{"error":"x"}"#), None);
    }
}
