//! The adder's configuration: every setting is a flag and an environment
//! variable, documented here once; this doc text is the `--help` output.
//! Parsed once in `main` ([`Config::load`], which also reads the password
//! files); tests build `Config` directly.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;

use clap::{Args, Parser, ValueEnum};
use proto::nodes::Nodes;

/// gRPC `Add(a, b)` that records every sum in a PostgreSQL outbox and relays
/// it to RabbitMQ with publisher confirms.
#[derive(Clone, Parser)]
#[command(name = "adder", version)]
pub struct Config {
    /// PostgreSQL URL of the outbox database, migrated at start; a database
    /// on several servers in libpq's multi-host form
    /// (postgres://u:p@h1:5432,h2:5433/db?target_session_attrs=read-write):
    /// only the writable primary is used, and followed after a failover.
    /// Several outbox databases (write scale): their URLs separated by
    /// whitespace, since a URL has none and commas already separate one
    /// database's servers (a comma directly followed by postgres:// also
    /// starts a new URL, as for `totaler verify`). Adds with a request id
    /// go to the database at FNV-1a-64(id) mod K, so every adder must list
    /// the same databases in the same order: each database records its
    /// position and K on first use, and the whole list (each database's
    /// member id) once one adder has opened them all; an adder whose list
    /// differs refuses to start, and one whose list a database stops
    /// agreeing with (it missed a reshard; it is re-checked every 5 s)
    /// refuses Adds with a request id and is not ready. Adds without one go
    /// round robin to the databases that answer
    /// [default: postgres://tally:tally@127.0.0.1:5432/tally].
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://tally:tally@127.0.0.1:5432/tally",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub database_url: String,

    /// A file holding the password of every URL in DATABASE_URL, which then
    /// names the user and no password (postgres://tally@host:5432/db), e.g.
    /// a Docker secret. Read once at start, trailing line break dropped,
    /// any character allowed; a missing, unreadable or empty file stops the
    /// adder with an error naming it.
    #[arg(long, env = "DATABASE_PASSWORD_FILE")]
    pub database_password_file: Option<PathBuf>,

    /// Resharding: record this adder's list as every listed database's new
    /// position and count, instead of refusing a list that places a
    /// database elsewhere. Only with every adder stopped and no client still
    /// retrying an Add sent before: a retried request id may now map to
    /// another database and be counted twice (docs/concepts/outboxes.md,
    /// "Adding a database"). Start one adder with it, then the others
    /// without.
    #[arg(long, env = "ADDER_OUTBOX_RESHARD", default_value_t = false)]
    pub outbox_reshard: bool,

    /// The outbox databases went through pg_upgrade (a new system
    /// identifier, transaction ids kept): continue each under a new source,
    /// as after a promotion, instead of refusing it as a logical copy. Only
    /// once, after the upgrade; refused anyway when the server's transaction
    /// ids are behind the outbox's (a copy, not an upgrade).
    #[arg(long, env = "ADDER_OUTBOX_UPGRADED", default_value_t = false)]
    pub outbox_upgraded: bool,

    /// RabbitMQ URL the relay publishes to, or a comma-separated list of
    /// the URLs of a cluster's nodes: it connects to any that answers and,
    /// when that one is lost, to the next [default: amqp://guest:guest@127.0.0.1:5672/%2f].
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub amqp_url: Nodes,

    /// A file holding the broker password of every node in AMQP_URL, which
    /// then names the user and no password
    /// (amqp://tally-adder@rabbitmq:5672/%2f), e.g. a Docker secret. Read
    /// once at start, trailing line break dropped, any character allowed;
    /// a missing, unreadable or empty file stops the adder with an error
    /// naming it.
    #[arg(long, env = "AMQP_PASSWORD_FILE")]
    pub amqp_password_file: Option<PathBuf>,

    /// Queue the sums are published to; dead letters go to `<queue>.dead`.
    #[arg(long, env = "TALLY_QUEUE", default_value = proto::topology::DEFAULT_QUEUE)]
    pub queue: String,

    /// Exchange the relay publishes through: empty for the default exchange
    /// (to TALLY_QUEUE alone), or `tally.fanout` (every queue bound to it:
    /// TALLY_QUEUE and each replica totaler's queue).
    #[arg(long, env = "TALLY_EXCHANGE", default_value = "")]
    pub exchange: String,

    /// Address of the gRPC server (tally.v1.Adder, health, reflection).
    #[arg(long, env = "ADDER_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP server (POST /add, /metrics, /healthz, /readyz).
    #[arg(long, env = "ADDER_HTTP_ADDR", default_value = "0.0.0.0:8081")]
    pub http_addr: SocketAddr,

    /// Maximum PostgreSQL connections.
    #[arg(long, env = "ADDER_DB_POOL", default_value_t = 32)]
    pub db_pool: u32,

    /// Longest the outbox database may take over one statement, in
    /// milliseconds: the server cancels it then (`statement_timeout`, also
    /// `idle_in_transaction_session_timeout`), and the adder gives up an
    /// answer 2 s later (a server that stopped answering), dropping that
    /// connection. An Add so given up gets UNAVAILABLE saying whether it
    /// may have been recorded. The server also probes the adder's
    /// connections with TCP keepalives (10 s idle, 5 s apart, 3 tries).
    #[arg(long, env = "ADDER_DB_STATEMENT_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub db_statement_timeout_ms: u64,

    /// Group-commit writers: each commits everything queued as one
    /// multi-row INSERT, one WAL flush. A writer commits beside another's
    /// commit in flight only with a group of 100 Adds or more (smaller ones
    /// wait and grow), so more writers help only when groups are that full.
    /// Default: a quarter of ADDER_DB_POOL, at least 1.
    #[arg(long, env = "ADDER_COMMIT_WRITERS")]
    pub commit_writers: Option<usize>,

    /// Most outbox rows one relay batch takes (a snapshot batch with more
    /// rows is cut into several batches).
    #[arg(long, env = "ADDER_RELAY_BATCH", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub relay_batch: u32,

    /// How long the relay waits for the broker's confirms of a batch before
    /// it gives the channel up and publishes the batch again, in milliseconds.
    #[arg(long, env = "ADDER_RELAY_CONFIRM_TIMEOUT_MS", default_value_t = 30_000)]
    pub relay_confirm_timeout_ms: u64,

    /// Most outbox rows one queue message carries: the relay packs each
    /// batch into messages of up to this many rows. 1 publishes a message
    /// per Add.
    #[arg(long, env = "ADDER_RELAY_PACK", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub relay_pack: u32,

    /// How long the relay waits after a commit wakes it, gathering more rows
    /// into the batch, in milliseconds. 0 publishes at once; a few ms mean
    /// fewer, larger batches (fewer broker and disk flushes) at low rates.
    #[arg(long, env = "ADDER_RELAY_LINGER_MS", default_value_t = 5)]
    pub relay_linger_ms: u64,

    /// While a batch awaits the broker's confirms, the relay cuts the next
    /// one only once that batch is confirmed or this many milliseconds have
    /// passed since the last cut, so that at a high rate batches grow
    /// instead of multiplying (each cut costs PostgreSQL about a
    /// millisecond, whatever its size). 0 cuts as soon as the window of
    /// four batches in flight has room.
    #[arg(long, env = "ADDER_RELAY_PIPELINE_GAP_MS", default_value_t = 50)]
    pub relay_pipeline_gap_ms: u64,

    /// Safety-net poll of the outbox, in milliseconds; commits wake the relay at once.
    #[arg(long, env = "ADDER_RELAY_POLL_MS", default_value_t = 1000)]
    pub relay_poll_ms: u64,

    /// How long published rows are kept (and request ids stay idempotent), in hours.
    #[arg(long, env = "ADDER_RETENTION_HOURS", default_value_t = 168)]
    pub retention_hours: u64,

    /// How long shutdown waits for in-flight work, in milliseconds.
    #[arg(long, env = "ADDER_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,

    /// Bounds on what gRPC and HTTP clients may hold: connections, streams, time.
    #[command(flatten)]
    pub limits: Limits,

    /// Log output format; the filter comes from RUST_LOG (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// OpenTelemetry tracing (OTLP/gRPC), off unless an endpoint is set.
    #[command(flatten)]
    pub otel: otel::Settings,
}

/// The servers' limits against slow or hostile clients.
#[derive(Clone, Debug, Args)]
pub struct Limits {
    /// Most open gRPC connections; past it the adder stops accepting and
    /// further clients wait in the listen backlog until one closes.
    #[arg(long, env = "ADDER_GRPC_MAX_CONNECTIONS", default_value_t = Limits::default().grpc_max_connections)]
    pub grpc_max_connections: usize,

    /// Most concurrent gRPC calls (HTTP/2 streams) per connection, announced
    /// in the HTTP/2 SETTINGS; a client queues further calls, and a stream
    /// opened past it is refused.
    #[arg(long, env = "ADDER_GRPC_MAX_STREAMS", default_value_t = Limits::default().grpc_max_streams)]
    pub grpc_max_streams: u32,

    /// Longest a gRPC call may run, in milliseconds; then it ends with
    /// CANCELLED (a client's shorter grpc-timeout wins). The Add may still
    /// be recorded, as when a client gives up: retry with the same request_id.
    #[arg(long, env = "ADDER_GRPC_TIMEOUT_MS", default_value_t = Limits::default().grpc_timeout_ms)]
    pub grpc_timeout_ms: u64,

    /// How long a new gRPC connection may take to send the HTTP/2 preface
    /// and the header of its first frame, in milliseconds; then it is
    /// closed. Bounds TCP connections that send nothing, which would hold a
    /// slot of ADDER_GRPC_MAX_CONNECTIONS for as long as they stay open.
    #[arg(long, env = "ADDER_GRPC_HANDSHAKE_TIMEOUT_MS", default_value_t = Limits::default().grpc_handshake_timeout_ms, value_parser = clap::value_parser!(u64).range(1..))]
    pub grpc_handshake_timeout_ms: u64,

    /// How long a gRPC connection may go without sending anything before
    /// the adder sends it an HTTP/2 PING, in milliseconds; 0 sends none.
    /// A client that does not answer within ADDER_GRPC_KEEPALIVE_TIMEOUT_MS
    /// is disconnected (a dead peer, or one that stopped reading).
    #[arg(long, env = "ADDER_GRPC_KEEPALIVE_INTERVAL_MS", default_value_t = Limits::default().grpc_keepalive_interval_ms)]
    pub grpc_keepalive_interval_ms: u64,

    /// How long the adder waits for the answer to its HTTP/2 PING, in
    /// milliseconds; then it closes the connection.
    #[arg(long, env = "ADDER_GRPC_KEEPALIVE_TIMEOUT_MS", default_value_t = Limits::default().grpc_keepalive_timeout_ms, value_parser = clap::value_parser!(u64).range(1..))]
    pub grpc_keepalive_timeout_ms: u64,

    /// How long a gRPC connection may stay without a call in progress, in
    /// milliseconds; then it is closed (its client reconnects for its next
    /// call). Bounds clients that connect, answer PINGs and never call.
    #[arg(long, env = "ADDER_GRPC_IDLE_TIMEOUT_MS", default_value_t = Limits::default().grpc_idle_timeout_ms, value_parser = clap::value_parser!(u64).range(1..))]
    pub grpc_idle_timeout_ms: u64,

    /// Most open HTTP connections; past it the adder stops accepting HTTP
    /// and further clients wait in the listen backlog until one closes.
    #[arg(long, env = "ADDER_HTTP_MAX_CONNECTIONS", default_value_t = Limits::default().http_max_connections)]
    pub http_max_connections: usize,

    /// How long an HTTP connection may take to send a whole request head,
    /// from its start or the end of its last response, in milliseconds; then
    /// it is closed. Bounds half-sent requests and idle keep-alive connections.
    #[arg(long, env = "ADDER_HTTP_HEADER_TIMEOUT_MS", default_value_t = Limits::default().http_header_timeout_ms)]
    pub http_header_timeout_ms: u64,

    /// How long one HTTP request may take from its head to its reply, body
    /// included, in milliseconds; then it gets 408 and its connection closes.
    #[arg(long, env = "ADDER_HTTP_REQUEST_TIMEOUT_MS", default_value_t = Limits::default().http_request_timeout_ms)]
    pub http_request_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            grpc_max_connections: 20_000,
            grpc_max_streams: 256,
            grpc_timeout_ms: 30_000,
            grpc_handshake_timeout_ms: 10_000,
            grpc_keepalive_interval_ms: 30_000,
            grpc_keepalive_timeout_ms: 10_000,
            grpc_idle_timeout_ms: 300_000,
            http_max_connections: 20_000,
            http_header_timeout_ms: 10_000,
            http_request_timeout_ms: 30_000,
        }
    }
}

impl Limits {
    pub fn grpc_timeout(&self) -> Duration {
        Duration::from_millis(self.grpc_timeout_ms)
    }

    /// When a silent gRPC connection is closed: no handshake, no call.
    pub fn grpc_quiet(&self) -> listen::quiet::Timeouts {
        listen::quiet::Timeouts {
            handshake: Duration::from_millis(self.grpc_handshake_timeout_ms),
            idle: Duration::from_millis(self.grpc_idle_timeout_ms),
        }
    }

    /// The HTTP/2 PING interval, `None` for no PINGs.
    pub fn grpc_keepalive_interval(&self) -> Option<Duration> {
        (self.grpc_keepalive_interval_ms > 0)
            .then(|| Duration::from_millis(self.grpc_keepalive_interval_ms))
    }

    pub fn grpc_keepalive_timeout(&self) -> Duration {
        Duration::from_millis(self.grpc_keepalive_timeout_ms)
    }

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
    /// the passwords of DATABASE_PASSWORD_FILE and AMQP_PASSWORD_FILE put
    /// into the URLs. Errors name the setting and the file, never a password.
    pub fn load() -> anyhow::Result<Self> {
        Self::parse().with_password_files()
    }

    /// Reads the password files that are set into the URLs (and unsets them).
    pub fn with_password_files(mut self) -> anyhow::Result<Self> {
        if let Some(path) = self.database_password_file.take() {
            self.database_url = database_url_with_password_file(&self.database_url, &path)?;
        }
        if let Some(path) = self.amqp_password_file.take() {
            self.amqp_url = amqp_url_with_password_file(&self.amqp_url, &path)?;
        }
        Ok(self)
    }

    /// The outbox databases `database_url` lists, in order.
    pub fn database_urls(&self) -> Vec<String> {
        proto::outbox::split_urls(&self.database_url)
    }

    pub fn relay_poll(&self) -> Duration {
        Duration::from_millis(self.relay_poll_ms)
    }

    /// How each outbox database is opened.
    pub fn outbox_settings(&self) -> crate::outbox::Settings {
        crate::outbox::Settings {
            max_connections: self.db_pool,
            writers: self.commit_writers(),
            bounds: crate::outbox::Bounds {
                statement: Duration::from_millis(self.db_statement_timeout_ms),
            },
            upgraded: self.outbox_upgraded,
        }
    }

    pub fn commit_writers(&self) -> usize {
        self.commit_writers
            .unwrap_or(self.db_pool as usize / 4)
            .clamp(1, self.db_pool.max(1) as usize)
    }

    pub fn relay_confirm_timeout(&self) -> Duration {
        Duration::from_millis(self.relay_confirm_timeout_ms.max(1))
    }

    pub fn relay_linger(&self) -> Duration {
        Duration::from_millis(self.relay_linger_ms)
    }

    pub fn relay_pipeline_gap(&self) -> Duration {
        Duration::from_millis(self.relay_pipeline_gap_ms)
    }

    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_hours * 3600)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// DATABASE_URL's databases (whitespace-separated) logging in with the
/// password in DATABASE_PASSWORD_FILE `path`.
pub fn database_url_with_password_file(list: &str, path: &Path) -> anyhow::Result<String> {
    let password = proto::nodes::read_password_file("DATABASE_PASSWORD_FILE", path)?;
    let urls = proto::outbox::split_urls(list)
        .iter()
        .enumerate()
        .map(|(index, url)| {
            proto::nodes::url_with_password(url, &password).with_context(|| {
                format!(
                    "DATABASE_PASSWORD_FILE: database {} of DATABASE_URL",
                    index + 1
                )
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(urls.join(" "))
}

/// AMQP_URL's nodes logging in with the password in AMQP_PASSWORD_FILE `path`.
pub fn amqp_url_with_password_file(nodes: &Nodes, path: &Path) -> anyhow::Result<Nodes> {
    let password = proto::nodes::read_password_file("AMQP_PASSWORD_FILE", path)?;
    Ok(nodes.with_password(&password)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_lists_databases_separated_by_whitespace() {
        let config = Config::parse_from([
            "adder",
            "--database-url",
            "postgres://u@a:1,b:2/x  postgres://u@c/y",
        ]);
        assert_eq!(
            config.database_urls(),
            ["postgres://u@a:1,b:2/x", "postgres://u@c/y"]
        );
        assert!(!config.outbox_reshard);
        let one = Config::parse_from(["adder"]);
        assert_eq!(
            one.database_urls(),
            ["postgres://tally:tally@127.0.0.1:5432/tally"]
        );
    }
}
