//! What the services say they did, read from their `/metrics`: a sampler
//! scrapes every service a few times a second and keeps, per series, the sum
//! over every process that served it (a restarted process starts its counters
//! at 0; `process_start_time_seconds` tells the processes apart). A SIGKILL
//! loses at most the last quarter second of a process's counts, so these are
//! lower bounds: enough to require that something happened at least once.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::task::JoinHandle;

use crate::process::http_get;

/// The series the report reads.
pub const DUPLICATE_ROWS: &str = "totaler_sums_total{outcome=\"duplicate\"}";
pub const APPLIED_ROWS: &str = "totaler_sums_total{outcome=\"applied\"}";
pub const CONSUMED: &str = "totaler_messages_total{outcome=\"consumed\"}";
pub const DEAD_LETTERED: &str = "totaler_messages_total{outcome=\"dead_lettered\"}";
pub const LEDGER_ERRORS: &str = "totaler_ledger_errors_total";
pub const PUBLISHED_ROWS: &str = "adder_relay_published_total";
pub const PUBLISHED_MESSAGES: &str = "adder_relay_messages_total";
pub const GRPC_ADDS_OK: &str = "adder_requests_total{code=\"ok\",method=\"grpc_add\"}";
/// A gauge: 1 while the adder's relay is the active one.
pub const RELAY_ACTIVE: &str = "adder_relay_active";

const SERIES: [&str; 9] = [
    DUPLICATE_ROWS,
    APPLIED_ROWS,
    CONSUMED,
    DEAD_LETTERED,
    LEDGER_ERRORS,
    PUBLISHED_ROWS,
    PUBLISHED_MESSAGES,
    GRPC_ADDS_OK,
    RELAY_ACTIVE,
];

/// One process's counters, keyed by series.
pub type Sample = HashMap<String, f64>;

/// Scrapes `/metrics` once: the series above plus `process_start_time_seconds`.
pub async fn scrape(addr: SocketAddr) -> Option<Sample> {
    let (status, body) = http_get(addr, "/metrics").await?;
    (status == 200).then(|| parse(&body))
}

/// One series of one scrape, 0 when absent.
pub fn value(sample: &Option<Sample>, series: &str) -> f64 {
    sample
        .as_ref()
        .and_then(|s| s.get(series).copied())
        .unwrap_or(0.0)
}

fn parse(body: &str) -> Sample {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(name, _)| SERIES.contains(name) || *name == "process_start_time_seconds")
        .filter_map(|(name, value)| Some((name.to_owned(), value.parse().ok()?)))
        .collect()
}

#[derive(Debug, Default)]
struct Series {
    /// Counts of the processes before the current one.
    base: f64,
    last: f64,
    process: f64,
}

/// The background sampler.
pub struct Sampler {
    totals: Arc<Mutex<HashMap<(String, String), Series>>>,
    targets: Vec<(String, SocketAddr)>,
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts scraping `targets` (name, HTTP address) every 250 ms.
    pub fn start(targets: Vec<(String, SocketAddr)>) -> Self {
        let totals: Arc<Mutex<HashMap<(String, String), Series>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (totals, stop, targets) = (totals.clone(), stop.clone(), targets.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    sample_all(&targets, &totals).await;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        });
        Self {
            totals,
            targets,
            stop,
            task: Some(task),
        }
    }

    /// Takes one more sample now (before a process is killed, at the end).
    pub async fn sample_now(&self) {
        sample_all(&self.targets, &self.totals).await;
    }

    /// `series` summed over every process of every service whose name starts with `service`.
    pub fn total(&self, service: &str, series: &str) -> f64 {
        let totals = self.totals.lock().expect("metrics lock");
        totals
            .iter()
            .filter(|((name, s), _)| name.starts_with(service) && s == series)
            .map(|(_, v)| v.base + v.last)
            .sum()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn sample_all(
    targets: &[(String, SocketAddr)],
    totals: &Mutex<HashMap<(String, String), Series>>,
) {
    for (name, addr) in targets {
        let Some(sample) = scrape(*addr).await else {
            continue;
        };
        let process = sample
            .get("process_start_time_seconds")
            .copied()
            .unwrap_or(0.0);
        let mut totals = totals.lock().expect("metrics lock");
        for series in SERIES {
            let now = sample.get(series).copied().unwrap_or(0.0);
            let entry = totals
                .entry((name.clone(), series.to_owned()))
                .or_insert_with(|| Series {
                    process,
                    ..Series::default()
                });
            if entry.process != process || now < entry.last {
                entry.base += entry.last;
                entry.process = process;
                entry.last = now;
            } else {
                entry.last = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_series_are_read_by_name_and_labels() {
        let sample = parse(
            "# HELP x\ntotaler_sums_total{outcome=\"duplicate\"} 7\n\
             totaler_sums_total{outcome=\"applied\"} 90\nprocess_start_time_seconds 17\nother 3\n",
        );
        assert_eq!(sample.get(DUPLICATE_ROWS), Some(&7.0));
        assert_eq!(sample.get(APPLIED_ROWS), Some(&90.0));
        assert_eq!(sample.get("process_start_time_seconds"), Some(&17.0));
        assert_eq!(sample.get("other"), None);
    }
}
