//! The totaler's configuration: every setting is a flag and an environment
//! variable, documented here once; this doc text is the `--help` output.
//! Parsed once in `main` ([`Config::load`], which also reads the password
//! file); tests build `Config` directly.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, ValueEnum};

/// Consumes Tally's queue and keeps the exact running total in a file-locked
/// sum.txt, acking each batch only after the new total is durable.
#[derive(Clone, Parser)]
#[command(name = "totaler", version)]
pub struct Config {
    /// RabbitMQ URL to consume from (`totaler dlq`: to read the dead letters
    /// with), or a comma-separated list of the URLs of a cluster's nodes:
    /// it connects to any that answers and, when that one is lost, to the
    /// next [default: amqp://guest:guest@127.0.0.1:5672/%2f].
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub amqp_url: proto::nodes::Nodes,

    /// A file holding the broker password of every node in AMQP_URL, which
    /// then names the user and no password
    /// (amqp://tally-totaler@rabbitmq:5672/%2f), e.g. a Docker secret. Read
    /// once at start, trailing line break dropped, any character allowed;
    /// a missing, unreadable or empty file stops the totaler with an error
    /// naming it.
    #[arg(long, env = "AMQP_PASSWORD_FILE")]
    pub amqp_password_file: Option<PathBuf>,

    /// Queue to consume; malformed messages are dead-lettered to `<queue>.dead`.
    #[arg(long, env = "TALLY_QUEUE", default_value = proto::topology::DEFAULT_QUEUE)]
    pub queue: String,

    /// An operator command instead of the service.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The ledger file (total on line 1, dedupe state after). Created when
    /// missing and nothing shows one existed (no `<file>.lock` or
    /// `<file>.tmp` beside it); a corrupt, vanished or replaced one stops
    /// the totaler.
    #[arg(long, env = "SUM_FILE", default_value = "data/sum.txt")]
    pub sum_file: PathBuf,

    /// Create a new ledger at 0 even though one existed at SUM_FILE (its
    /// lock file is there). For an operator who knows the old ledger is
    /// gone for good; an existing file is never overwritten.
    #[arg(long, env = "TOTALER_CREATE_LEDGER")]
    pub create_ledger: bool,

    /// The broker users whose messages are counted, comma-separated: a
    /// message's `user-id` property (which RabbitMQ checks against the
    /// publishing connection's user) must name one, or it is dead-lettered
    /// unread. Default: the adders' user and `guest` (RabbitMQ's
    /// loopback-only default user, of tests and local runs). `*`: any
    /// author, or none (only while upgrading from adders that set none).
    #[arg(
        long = "publisher",
        env = "TOTALER_PUBLISHERS",
        value_delimiter = ',',
        default_value = "tally-adder,guest"
    )]
    pub publishers: Vec<String>,

    /// Address of the HTTP server (GET /sum, /metrics, /healthz, /readyz).
    #[arg(long, env = "TOTALER_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Unacked deliveries the broker may send ahead (AMQP prefetch). Each
    /// carries up to ADDER_RELAY_PACK rows, so this bounds the memory held.
    #[arg(long, env = "TOTALER_PREFETCH", default_value_t = 1000)]
    pub prefetch: u16,

    /// Most deliveries applied in one ledger update.
    #[arg(long, env = "TOTALER_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,

    /// How long a batch waits for more deliveries once it has one, in milliseconds.
    #[arg(long, env = "TOTALER_BATCH_LINGER_MS", default_value_t = 2)]
    pub batch_linger_ms: u64,

    /// How often GET /sum's in-memory total and the totaler_sum gauge are
    /// refreshed from the file, to show updates by other totalers sharing
    /// it, in milliseconds.
    #[arg(long, env = "TOTALER_REFRESH_MS", default_value_t = 200)]
    pub refresh_ms: u64,

    /// How long shutdown waits (once) for the batch in hand and the HTTP
    /// server to finish, in milliseconds; past it the totaler exits anyway,
    /// leaving an unfinished batch unacked.
    #[arg(long, env = "TOTALER_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,

    /// Bounds on what HTTP clients may hold: connections and time.
    #[command(flatten)]
    pub limits: Limits,

    /// Log output format; the filter comes from RUST_LOG (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// OpenTelemetry tracing (OTLP/gRPC), off unless an endpoint is set.
    #[command(flatten)]
    pub otel: otel::Settings,

    /// Test hook: abort the process right after a ledger update is durable and
    /// before its deliveries are acked, to prove redeliveries count once.
    #[arg(long, env = "TOTALER_CRASH_AFTER_APPLY", hide = true)]
    pub crash_after_apply: bool,
}

/// Operator commands.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Command {
    /// Compare sum.txt with the outbox database(s), batch by batch and the
    /// total; read-only, safe on a live system. Exits 1 on any discrepancy.
    Verify(crate::verify::Args),
    /// The dead letters in `<queue>.dead` (TALLY_QUEUE, --queue): list them
    /// and why they died, replay them to the queue. Needs a broker user
    /// that may read `<queue>.dead` and publish to the default exchange
    /// (an administrator; not tally-totaler).
    #[command(subcommand)]
    Dlq(crate::dlq::Dlq),
}

/// The HTTP server's limits against slow or hostile clients.
#[derive(Clone, Debug, Args)]
pub struct Limits {
    /// Most open HTTP connections; past it the totaler stops accepting and
    /// further clients wait in the listen backlog until one closes.
    #[arg(long, env = "TOTALER_HTTP_MAX_CONNECTIONS", default_value_t = Limits::default().http_max_connections)]
    pub http_max_connections: usize,

    /// How long a connection may take to send a whole request head, from
    /// its start or the end of its last response, in milliseconds; then it
    /// is closed. Bounds half-sent requests and idle keep-alive connections.
    #[arg(long, env = "TOTALER_HTTP_HEADER_TIMEOUT_MS", default_value_t = Limits::default().http_header_timeout_ms)]
    pub http_header_timeout_ms: u64,

    /// How long one HTTP request may take from its head to its reply, body
    /// included, in milliseconds; then it gets 408 and its connection closes.
    #[arg(long, env = "TOTALER_HTTP_REQUEST_TIMEOUT_MS", default_value_t = Limits::default().http_request_timeout_ms)]
    pub http_request_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            http_max_connections: 20_000,
            http_header_timeout_ms: 10_000,
            http_request_timeout_ms: 30_000,
        }
    }
}

impl Limits {
    pub fn http(&self) -> listen::http::Limits {
        listen::http::Limits {
            header_read_timeout: Duration::from_millis(self.http_header_timeout_ms),
            request_timeout: Duration::from_millis(self.http_request_timeout_ms),
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// The configuration from the command line and the environment, with
    /// the password of AMQP_PASSWORD_FILE put into AMQP_URL. Errors name the
    /// setting and the file, never a password.
    pub fn load() -> anyhow::Result<Self> {
        Self::parse().with_password_file()
    }

    /// Reads AMQP_PASSWORD_FILE, when set, into AMQP_URL (and unsets it).
    pub fn with_password_file(mut self) -> anyhow::Result<Self> {
        if let Some(path) = self.amqp_password_file.take() {
            let password = proto::nodes::read_password_file("AMQP_PASSWORD_FILE", &path)?;
            self.amqp_url = self.amqp_url.with_password(&password)?;
        }
        Ok(self)
    }

    pub fn batch_linger(&self) -> Duration {
        Duration::from_millis(self.batch_linger_ms)
    }

    pub fn refresh(&self) -> Duration {
        Duration::from_millis(self.refresh_ms.max(1))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}
