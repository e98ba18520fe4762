//! The harness's settings: every one a flag and an environment variable,
//! documented here once (this is the `--help` text). `--quick` shrinks them
//! all for a smoke check. Also the two hidden subcommands that run the bare
//! servers the limits are measured against.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::{Parser, Subcommand};

/// Measures the machine's limits and Tally's figures side by side, in one
/// run, and prints the medians, the ratios and the targets.
#[derive(Clone, Debug, Parser)]
#[command(name = "bench", version)]
pub struct Cli {
    #[command(subcommand)]
    pub serve: Option<Serve>,

    #[command(flatten)]
    pub config: Config,
}

/// A bare server, started by the harness as its own child process.
#[derive(Clone, Debug, Subcommand)]
pub enum Serve {
    /// A tonic server of `tally.v1.Adder` that answers `a + b` and records nothing.
    #[command(hide = true)]
    BareTonic {
        #[arg(long)]
        addr: SocketAddr,
    },
    /// A warp server whose `GET /sum` answers a constant JSON total.
    #[command(hide = true)]
    BareWarp {
        #[arg(long)]
        addr: SocketAddr,
    },
}

/// What one run measures, and how long and how often.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// How many times each figure is measured; the median is reported.
    #[arg(long, env = "BENCH_REPEATS", default_value_t = 3)]
    pub repeats: usize,

    /// Length of each throughput window, in seconds.
    #[arg(long, env = "BENCH_DURATION_SECS", default_value_t = 5)]
    pub duration_secs: u64,

    /// Length of the fixed-rate latency window, in seconds.
    #[arg(long, env = "BENCH_LATENCY_SECS", default_value_t = 10)]
    pub latency_secs: u64,

    /// Adds per second in the latency window.
    #[arg(long, env = "BENCH_RATE", default_value_t = 1000)]
    pub rate: u64,

    /// Calls in flight at saturation (gRPC Adds and bare tonic calls).
    #[arg(long, env = "BENCH_CONCURRENCY", default_value_t = 256)]
    pub concurrency: usize,

    /// HTTP/2 connections the gRPC load is spread over.
    #[arg(long, env = "BENCH_GRPC_CONNECTIONS", default_value_t = 4)]
    pub grpc_connections: usize,

    /// Keep-alive HTTP/1.1 connections for the GET load.
    #[arg(long, env = "BENCH_HTTP_CONNECTIONS", default_value_t = 64)]
    pub http_connections: usize,

    /// Rows in the backlog the totaler drains and the raw consumer consumes:
    /// the same backlog for both, packed `pack` rows to a message.
    #[arg(long, env = "BENCH_DRAIN_ROWS", default_value_t = 1_000_000)]
    pub drain_rows: u64,

    /// The two outbox backlogs the outbox drain is measured at, in rows,
    /// `SMALLER,LARGER`: each is left in the outbox as a broker outage
    /// leaves it (the adder stopped, the rows inserted), then the adder is
    /// started and timed until `GET /sum` counts every row. `0` skips the
    /// phase (its figures read "not measured").
    #[arg(
        long,
        env = "BENCH_OUTBOX_DRAIN_ROWS",
        default_value = "100000,1000000"
    )]
    pub outbox_drain_rows: Backlogs,

    /// A SQL file run once on the run's outbox database after the adder
    /// migrated it, before any load, and kept for the whole run. For
    /// experiments only: for example an older `tally_cut`, to measure what
    /// a change to it did.
    #[arg(long, env = "BENCH_OUTBOX_SQL", value_name = "FILE")]
    pub outbox_sql: Option<PathBuf>,

    /// The adder's rows per message (`ADDER_RELAY_PACK`); the raw consume's
    /// backlog is packed as densely.
    #[arg(long, env = "ADDER_RELAY_PACK", default_value_t = 100)]
    pub pack: usize,

    /// Publishes in flight when measuring the broker's confirm rate.
    #[arg(long, env = "BENCH_CONFIRM_WINDOW", default_value_t = 1000)]
    pub confirm_window: usize,

    /// The adder's PostgreSQL pool size; the INSERT limit uses as many clients.
    #[arg(long, env = "ADDER_DB_POOL", default_value_t = 32)]
    pub db_pool: u32,

    /// The totaler's prefetch; the raw consume uses the same.
    #[arg(long, env = "TOTALER_PREFETCH", default_value_t = 1000)]
    pub prefetch: u16,

    /// The totaler's batch size; the raw consume acks as often.
    #[arg(long, env = "TOTALER_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: u64,

    /// Idle connections held open to each service for the memory-per-connection
    /// figures: gRPC to the adder (after one health check each), HTTP/1.1
    /// keep-alive to the totaler (after one GET /sum each). The harness and
    /// each service need as many file descriptors; the services' connection
    /// limits (ADDER_GRPC_MAX_CONNECTIONS, TOTALER_HTTP_MAX_CONNECTIONS) must
    /// allow them. 0 skips the phase (its figures read "not measured").
    #[arg(long, env = "BENCH_IDLE_CONNECTIONS", default_value_t = 2000)]
    pub idle_connections: usize,

    /// How long after closing the idle connections their memory is read
    /// again (what was given back), in seconds.
    #[arg(long, env = "BENCH_IDLE_SETTLE_SECS", default_value_t = 5)]
    pub idle_settle_secs: u64,

    /// Longest wait for the total to settle after a load, in seconds.
    #[arg(long, env = "BENCH_SETTLE_SECS", default_value_t = 120)]
    pub settle_secs: u64,

    /// Measure Tally only, not the limits (for iterating on Tally; the
    /// ratios then stay empty).
    #[arg(long, env = "BENCH_SKIP_LIMITS")]
    pub skip_limits: bool,

    /// Instead of the usual run: saturate one adder directly, then one, two
    /// and three adders behind HAProxy (one database, one totaler), and
    /// print each part's cores and µs per Add per layout.
    #[arg(long, env = "BENCH_SCALE_OUT")]
    pub scale_out: bool,

    /// With --scale-out: also run one adder directly and two behind HAProxy
    /// on this many outbox databases (fresh ones on the same server, all in
    /// each adder's DATABASE_URL), to compare K = 1 with K databases.
    #[arg(long, env = "BENCH_OUTBOXES", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub outboxes: u16,

    /// A smoke check: one round of one-second windows and small backlogs.
    #[arg(long, env = "BENCH_QUICK")]
    pub quick: bool,

    /// Where the release binaries `adder` and `totaler` are.
    #[arg(long, env = "BENCH_BIN_DIR", default_value = "target/release")]
    pub bin_dir: PathBuf,

    /// Scratch directory: the sum file, service logs.
    #[arg(long, env = "BENCH_WORK_DIR", default_value = "target/bench")]
    pub work_dir: PathBuf,

    /// Where the JSON results are written; the SVG charts go beside it.
    #[arg(long, env = "BENCH_OUT", default_value = "target/bench/results.json")]
    pub out: PathBuf,

    /// PostgreSQL server URL (a role with CREATEDB); each run uses fresh
    /// databases on it [default: the server of `scripts/services`,
    /// postgres://tally:…@127.0.0.1:5432/tally].
    #[arg(
        long = "database-url",
        value_name = "URL",
        env = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_server: Option<String>,

    /// RabbitMQ URL; each run uses queues of its own [default: the server
    /// of `scripts/services`, amqp://guest:…@127.0.0.1:5672/%2f].
    #[arg(
        long = "amqp-url",
        value_name = "URL",
        env = "AMQP_URL",
        hide_env_values = true
    )]
    pub amqp_server: Option<String>,
}

/// The outbox drain's two backlogs, in rows: `None` skips the phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backlogs(pub Option<(u64, u64)>);

impl FromStr for Backlogs {
    type Err = String;

    /// `0`, or `SMALLER,LARGER` with 0 < SMALLER <= LARGER.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "0" {
            return Ok(Self(None));
        }
        let rows = |part: &str| part.trim().replace('_', "").parse::<u64>();
        match s.split_once(',') {
            Some((smaller, larger)) => match (rows(smaller), rows(larger)) {
                (Ok(smaller), Ok(larger)) if 0 < smaller && smaller <= larger => {
                    Ok(Self(Some((smaller, larger))))
                }
                _ => Err(format!(
                    "{s:?}: expected SMALLER,LARGER row counts with 0 < SMALLER <= LARGER"
                )),
            },
            None => Err(format!("{s:?}: expected SMALLER,LARGER (or 0 to skip)")),
        }
    }
}

impl fmt::Display for Backlogs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((smaller, larger)) => write!(f, "{smaller},{larger}"),
            None => f.write_str("0"),
        }
    }
}

/// The servers `scripts/services` sets up.
const DEFAULT_DATABASE_URL: &str = "postgres://tally:tally@127.0.0.1:5432/tally";
const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

impl Config {
    /// The PostgreSQL server's URL, given or the default.
    pub fn database_url(&self) -> &str {
        self.database_server
            .as_deref()
            .unwrap_or(DEFAULT_DATABASE_URL)
    }

    /// The RabbitMQ URL, given or the default.
    pub fn amqp_url(&self) -> &str {
        self.amqp_server.as_deref().unwrap_or(DEFAULT_AMQP_URL)
    }

    /// Applies `--quick`: the shape of a full run at a fraction of its length.
    pub fn effective(mut self) -> Self {
        if self.quick {
            self.repeats = 1;
            self.duration_secs = self.duration_secs.min(1);
            self.latency_secs = self.latency_secs.min(2);
            self.drain_rows = self.drain_rows.min(50_000);
            self.outbox_drain_rows.0 = self
                .outbox_drain_rows
                .0
                .map(|(smaller, larger)| (smaller.min(10_000), larger.min(100_000)));
            self.settle_secs = self.settle_secs.min(60);
        }
        self.repeats = self.repeats.max(1);
        self.duration_secs = self.duration_secs.max(1);
        self.latency_secs = self.latency_secs.max(1);
        self.rate = self.rate.max(1);
        self.concurrency = self.concurrency.max(1);
        self.grpc_connections = self.grpc_connections.max(1);
        self.http_connections = self.http_connections.max(1);
        self.drain_rows = self.drain_rows.max(1);
        self.confirm_window = self.confirm_window.max(1);
        self.batch_size = self.batch_size.max(1);
        self.pack = self.pack.clamp(1, proto::message::MAX_SUMS);
        self
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.duration_secs)
    }

    pub fn latency_window(&self) -> Duration {
        Duration::from_secs(self.latency_secs)
    }

    pub fn settle(&self) -> Duration {
        Duration::from_secs(self.settle_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlogs_are_two_ascending_row_counts_or_zero() {
        assert_eq!(
            "100000,1_000_000".parse(),
            Ok(Backlogs(Some((100_000, 1_000_000))))
        );
        assert_eq!("0".parse(), Ok(Backlogs(None)));
        for wrong in ["", "100000", "0,10", "10,5", "a,b", "1,2,3"] {
            assert!(wrong.parse::<Backlogs>().is_err(), "{wrong:?}");
        }
        assert_eq!(Backlogs(Some((1, 2))).to_string(), "1,2");
    }

    #[test]
    fn quick_shrinks_the_outbox_backlogs() {
        let cli = Cli::parse_from(["bench", "--quick"]);
        let config = cli.config.effective();
        assert_eq!(config.outbox_drain_rows, Backlogs(Some((10_000, 100_000))));
        let cli = Cli::parse_from(["bench", "--quick", "--outbox-drain-rows", "0"]);
        assert_eq!(cli.config.effective().outbox_drain_rows, Backlogs(None));
    }
}
