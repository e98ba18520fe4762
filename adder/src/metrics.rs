//! The adder's Prometheus metrics on its own registry, passed around as
//! `Arc<Metrics>`. Buckets are chosen for what they measure. The outbox
//! gauges exist per database (`adder_database_*{database="<position>"}`)
//! and as the adder's totals (`adder_outbox_pending`, `adder_relay_active`),
//! which with one database are what they always were.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the adder exports.
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub outbox_pending: IntGauge,
    pub relay_published: IntCounter,
    pub relay_messages: IntCounter,
    pub relay_batch_size: Histogram,
    pub relay_confirm: Histogram,
    pub broker_up: IntGauge,
    /// Databases whose active relay is this adder's (0 or 1 with one).
    pub relay_active: IntGauge,
    /// Each database's gauges, in `DATABASE_URL` order.
    pub databases: Vec<DatabaseGauges>,
}

/// The gauges of one outbox database, labelled with its position.
#[derive(Clone)]
pub struct DatabaseGauges {
    pub up: IntGauge,
    pub pending: IntGauge,
    pub relay_active: IntGauge,
}

/// 100 µs to 10 s for Add latency, fine between 0.5 and 10 ms where an
/// Add's commit lands.
const REQUEST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01,
    0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// 0.5 ms to 30 s, for a batch's wait on the broker's confirms.
const CONFIRM_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
/// 1 to 5,000 rows.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];

impl Metrics {
    /// The metrics of an adder with one outbox database.
    pub fn new() -> Self {
        Self::with_databases(1)
    }

    /// The metrics of an adder with `databases` outbox databases.
    pub fn with_databases(databases: usize) -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("adder_requests_total", "Add calls by front end and outcome"),
            &["method", "code"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "adder_request_duration_seconds",
                "Add latency, commit included",
            )
            .buckets(REQUEST_BUCKETS.to_vec()),
            &["method"],
        )
        .expect("valid metric");
        let outbox_pending = IntGauge::new(
            "adder_outbox_pending",
            "Outbox rows not yet confirmed by the broker, over all the adder's databases",
        )
        .expect("valid metric");
        let relay_published =
            IntCounter::new("adder_relay_published_total", "Rows the broker confirmed")
                .expect("valid metric");
        let relay_messages = IntCounter::new(
            "adder_relay_messages_total",
            "Messages the relay published (each packs up to ADDER_RELAY_PACK rows)",
        )
        .expect("valid metric");
        let relay_batch_size = Histogram::with_opts(
            HistogramOpts::new("adder_relay_batch_size", "Rows per relay batch")
                .buckets(BATCH_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let relay_confirm = Histogram::with_opts(
            HistogramOpts::new(
                "adder_relay_confirm_seconds",
                "Publish to last confirm of a relay batch",
            )
            .buckets(CONFIRM_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let broker_up = IntGauge::new(
            "adder_relay_broker_up",
            "1 while the relay holds a broker channel",
        )
        .expect("valid metric");
        let relay_active = IntGauge::new(
            "adder_relay_active",
            "Outbox databases whose active relay is this adder's (one database: 1 active, 0 standby)",
        )
        .expect("valid metric");
        let per_database = [
            (
                "adder_database_up",
                "1 while the outbox database at this position answers",
            ),
            (
                "adder_database_pending",
                "Rows of the outbox database at this position not yet confirmed by the broker",
            ),
            (
                "adder_database_relay_active",
                "1 while this adder's relay is the active relay of the database at this position",
            ),
        ]
        .map(|(name, help)| {
            IntGaugeVec::new(Opts::new(name, help), &["database"]).expect("valid metric")
        });
        let gauges = (1..=databases.max(1))
            .map(|position| {
                let label = [position.to_string()];
                DatabaseGauges {
                    up: per_database[0].with_label_values(&label),
                    pending: per_database[1].with_label_values(&label),
                    relay_active: per_database[2].with_label_values(&label),
                }
            })
            .collect();
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(outbox_pending.clone()),
            Box::new(relay_published.clone()),
            Box::new(relay_messages.clone()),
            Box::new(relay_batch_size.clone()),
            Box::new(relay_confirm.clone()),
            Box::new(broker_up.clone()),
            Box::new(relay_active.clone()),
            Box::new(per_database[0].clone()),
            Box::new(per_database[1].clone()),
            Box::new(per_database[2].clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Self {
            registry,
            requests,
            request_duration,
            outbox_pending,
            relay_published,
            relay_messages,
            relay_batch_size,
            relay_confirm,
            broker_up,
            relay_active,
            databases: gauges,
        }
    }

    /// Sets database `index`'s pending rows, and the adder's total.
    pub fn set_pending(&self, index: usize, rows: i64) {
        if let Some(database) = self.databases.get(index) {
            database.pending.set(rows);
        }
        let total = self.databases.iter().map(|d| d.pending.get()).sum();
        self.outbox_pending.set(total);
    }

    /// Sets whether this adder's relay is database `index`'s active one,
    /// and the adder's count of those.
    pub fn set_relay_active(&self, index: usize, active: bool) {
        if let Some(database) = self.databases.get(index) {
            database.relay_active.set(i64::from(active));
        }
        let total = self.databases.iter().map(|d| d.relay_active.get()).sum();
        self.relay_active.set(total);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }

    /// Counts one Add and its latency.
    pub fn observe(&self, method: &str, code: &str, seconds: f64) {
        self.requests.with_label_values(&[method, code]).inc();
        self.request_duration
            .with_label_values(&[method])
            .observe(seconds);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
