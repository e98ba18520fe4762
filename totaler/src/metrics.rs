//! The totaler's Prometheus metrics on its own registry, passed around as
//! `Arc<Metrics>`. Latency buckets run from 0.5 ms to 60 s.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts,
    Registry, TextEncoder,
};

use crate::status::Status;

/// Every metric the totaler exports.
pub struct Metrics {
    registry: Registry,
    pub queue_time: Histogram,
    pub end_to_end: Histogram,
    pub messages: IntCounterVec,
    pub sums: IntCounterVec,
    pub batch_size: Histogram,
    pub apply: Histogram,
    pub sum: Gauge,
    pub ledger_errors: IntCounter,
    /// Batches above a horizon with parts applied: the dedupe state's size.
    pub open_batches: prometheus::IntGauge,
    /// Mirrors `Status::ready` (what `/readyz` answers), set at each scrape.
    pub ready: prometheus::IntGauge,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
}

/// 0.5 ms to 60 s, for queue time, end to end and ledger updates.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05, 0.075, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// 50 µs to 1 s, for GET /sum and friends.
const HTTP_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// 1 to 5,000 deliveries.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid metric")
}

impl Metrics {
    pub fn new() -> Self {
        let metrics = Self {
            registry: Registry::new(),
            queue_time: histogram(
                "totaler_queue_time_seconds",
                "From the relay's publish to delivery to the totaler",
                LATENCY_BUCKETS,
            ),
            end_to_end: histogram(
                "totaler_end_to_end_seconds",
                "From the outbox row's creation to its batch being durable in sum.txt",
                LATENCY_BUCKETS,
            ),
            messages: IntCounterVec::new(
                Opts::new(
                    "totaler_messages_total",
                    "Deliveries by outcome: consumed (applied and acked) or dead_lettered (malformed)",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            sums: IntCounterVec::new(
                Opts::new(
                    "totaler_sums_total",
                    "Rows of consumed messages by outcome: applied to the total, or duplicate (already counted)",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            batch_size: histogram(
                "totaler_batch_size",
                "Deliveries per ledger update",
                BATCH_BUCKETS,
            ),
            apply: histogram(
                "totaler_apply_seconds",
                "Ledger update from taking the lock to the fsynced rename",
                LATENCY_BUCKETS,
            ),
            sum: Gauge::new(
                "totaler_sum",
                "The current total (as a float; GET /sum is exact)",
            )
            .expect("valid metric"),
            ledger_errors: IntCounter::new(
                "totaler_ledger_errors_total",
                "Failed ledger updates (retried)",
            )
            .expect("valid metric"),
            open_batches: prometheus::IntGauge::new(
                "totaler_open_batches",
                "Batches in flight in the ledger's dedupe state (above a source's horizon)",
            )
            .expect("valid metric"),
            ready: prometheus::IntGauge::new(
                "totaler_ready",
                "1 while /readyz answers 200: the ledger writable and the broker consumed from",
            )
            .expect("valid metric"),
            http_requests: IntCounterVec::new(
                Opts::new(
                    "totaler_http_requests_total",
                    "HTTP requests by path and status",
                ),
                &["path", "code"],
            )
            .expect("valid metric"),
            http_duration: HistogramVec::new(
                HistogramOpts::new(
                    "totaler_http_request_duration_seconds",
                    "HTTP request latency",
                )
                .buckets(HTTP_BUCKETS.to_vec()),
                &["path"],
            )
            .expect("valid metric"),
        };
        for outcome in ["consumed", "dead_lettered"] {
            metrics.messages.with_label_values(&[outcome]);
        }
        for outcome in ["applied", "duplicate"] {
            metrics.sums.with_label_values(&[outcome]);
        }
        for collector in [
            Box::new(metrics.queue_time.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.end_to_end.clone()),
            Box::new(metrics.messages.clone()),
            Box::new(metrics.sums.clone()),
            Box::new(metrics.batch_size.clone()),
            Box::new(metrics.apply.clone()),
            Box::new(metrics.sum.clone()),
            Box::new(metrics.ledger_errors.clone()),
            Box::new(metrics.open_batches.clone()),
            Box::new(metrics.ready.clone()),
            Box::new(metrics.http_requests.clone()),
            Box::new(metrics.http_duration.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            metrics
                .registry
                .register(collector)
                .expect("metric names are unique");
        }
        metrics
    }

    /// The text exposition format, with `totaler_ready` taken from `status`.
    pub fn render(&self, status: &Status) -> String {
        self.ready.set(i64::from(status.ready()));
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
