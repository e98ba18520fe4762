//! `totaler verify`: the audit a ledger owes its users. Read-only: it reads
//! `sum.txt` (without the lock) and each outbox database, and compares them
//! batch by batch, then the total.
//!
//! - **rewound**: the ledger counts batches of a source beyond the newest
//!   one its outbox holds: the database went back in time (a standby
//!   promoted after asynchronous replication, a restored backup) and lost
//!   batches that were published and counted, so Adds acknowledged after
//!   the newest batch it still holds may be lost from the outbox.
//! - **extra**: the ledger counts a batch (or part) the outbox never cut.
//! - **missing**: the outbox has a batch the broker confirmed more than
//!   `--in-flight-secs` ago that the ledger has not (wholly) applied.
//! - **in flight**: batches cut or confirmed since, not yet applied: normal
//!   on a live system, reported, not a discrepancy.
//! - **purged**: batches retention deleted; their count and sum were kept
//!   with their source, so the total stays checkable.
//! - **total**: the ledger's total against the outbox's sum of what the
//!   ledger claims applied; checked only when every source the ledger knows
//!   is in the given databases.
//!
//! It prints every finding and exits 1 on any discrepancy, 0 otherwise.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::ledger::State;

/// `totaler verify`'s arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// The ledger to check.
    #[arg(long, env = "SUM_FILE", default_value = "data/sum.txt")]
    pub sum_file: PathBuf,
    /// An outbox database (repeat for several, or separate them with
    /// whitespace as the adder's DATABASE_URL does, or with a comma before
    /// postgres://); every source in the ledger must be in one of them for
    /// the total to be checked. A database on several servers is one libpq
    /// multi-host URL (`postgres://u:p@h1:5432,h2:5433/db`): it is read on
    /// its writable primary.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        required = true,
        hide_env_values = true
    )]
    pub database_urls: Vec<String>,
    /// Batches confirmed within this many seconds may still be on their way
    /// to the ledger: reported as in flight, not as missing.
    #[arg(long, default_value_t = 30)]
    pub in_flight_secs: u64,
}

/// What a verification found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Every line of the report.
    pub report: String,
    /// How many of them are discrepancies.
    pub discrepancies: usize,
}

/// One outbox batch, as verify reads it.
#[derive(Debug, sqlx::FromRow)]
struct Cut {
    id: i64,
    rows: i64,
    total: String,
    pack: i32,
    lo: String,
    hi: String,
    first_id: i64,
    last_id: i64,
    settled: bool,
}

/// Reads the ledger at `path` without its lock (renames are atomic, so this
/// sees one complete version) and without changing anything.
pub(crate) fn read_ledger(path: &Path) -> anyhow::Result<State> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the ledger {}", path.display()))?;
    State::parse(&text)
        .map_err(|problem| anyhow::anyhow!("ledger {} is corrupt: {problem}", path.display()))
}

/// Runs the audit; the caller prints the report and exits non-zero on any
/// discrepancy.
pub async fn run(args: &Args) -> anyhow::Result<Findings> {
    let state = read_ledger(&args.sum_file)?;
    let mut findings = Findings::default();
    findings.line(format!(
        "ledger {}: total {}, {} sources, {} batches in flight",
        args.sum_file.display(),
        state.total,
        state.sources().len(),
        state.open_count()
    ));
    let mut covered = BTreeSet::new();
    let mut expected: i128 = 0;
    let urls = args
        .database_urls
        .iter()
        .flat_map(|list| proto::outbox::split_urls(list));
    for (n, url) in urls.enumerate() {
        let mut db = connect_primary(&url)
            .await
            .with_context(|| format!("connecting to outbox database {}", n + 1))?;
        let sources: Vec<(Uuid, i64, i64, String)> = sqlx::query_as(
            "SELECT source, purged_through, purged_rows, purged_total::text FROM outbox_sources ORDER BY started_at",
        )
        .fetch_all(&mut db)
        .await
        .with_context(|| format!("reading the sources of outbox database {}", n + 1))?;
        for (source, purged_through, purged_rows, purged_total) in sources {
            covered.insert(source);
            findings.line(format!(
                "source {source} (database {}): purged by retention: {purged_through} batches, {purged_rows} rows",
                n + 1
            ));
            if purged_through > 0 {
                expected += parse_total(&purged_total)?;
            }
            expected +=
                check_source(&mut db, &state, source, purged_through, args, &mut findings).await?;
        }
        expected += check_legacy(&mut db, &state, &mut findings).await?;
    }
    let uncovered: Vec<Uuid> = state
        .sources()
        .into_iter()
        .filter(|s| !covered.contains(s))
        .collect();
    if uncovered.is_empty() {
        if expected == state.total {
            findings.line(format!("total: ledger {} = outbox {expected}", state.total));
        } else {
            findings.discrepancy(format!(
                "TOTAL ledger {} != outbox {expected} (difference {})",
                state.total,
                state.total - expected
            ));
        }
    } else {
        for source in uncovered {
            findings.discrepancy(format!(
                "UNKNOWN source {source} is in the ledger but in none of the given databases: the total cannot be checked"
            ));
        }
    }
    Ok(findings)
}

/// A connection to `url`'s writable primary: its only server, or the first
/// of its servers (a multi-host URL) not in recovery. A standby may lag, and
/// would show batches the ledger counted as lost.
async fn connect_primary(url: &str) -> anyhow::Result<PgConnection> {
    let servers = proto::outbox::Servers::parse(url);
    let mut last = None;
    for (n, server) in servers.urls.iter().enumerate() {
        match PgConnection::connect(server).await {
            Ok(mut db) => {
                let primary: bool = sqlx::query_scalar(proto::outbox::IS_PRIMARY)
                    .fetch_one(&mut db)
                    .await?;
                if primary {
                    return Ok(db);
                }
                last = Some(anyhow::anyhow!(
                    "server {} of {} is a standby",
                    n + 1,
                    servers.urls.len()
                ));
            }
            Err(e) => last = Some(e.into()),
        }
    }
    Err(last
        .unwrap_or_else(|| anyhow::anyhow!("the URL names no server"))
        .context("no server of the database is a writable primary"))
}

/// Compares one source's batches; returns the sum of what the ledger applied
/// of the batches still in the outbox.
async fn check_source(
    db: &mut PgConnection,
    state: &State,
    source: Uuid,
    purged_through: i64,
    args: &Args,
    findings: &mut Findings,
) -> anyhow::Result<i128> {
    let cuts: Vec<Cut> = sqlx::query_as(
        "SELECT id, rows, total::text AS total, pack, lo::text AS lo, hi::text AS hi, first_id, last_id, \
         (confirmed_at IS NOT NULL AND confirmed_at < clock_timestamp() - make_interval(secs => $2)) AS settled \
         FROM outbox_batch WHERE source = $1 ORDER BY id",
    )
    .bind(source)
    .bind(args.in_flight_secs as f64)
    .fetch_all(&mut *db)
    .await?;
    let batches = state.batches(source);
    let (top, open) = (batches.top(), &batches.partial);
    let mut applied_sum: i128 = 0;
    let mut in_flight = 0;
    let known: BTreeSet<i64> = cuts.iter().map(|c| c.id).collect();
    let newest = cuts.last().map_or(purged_through, |c| c.id);
    if top > newest {
        findings.discrepancy(format!(
            "REWOUND source {source}: the ledger counted batches up to {top}, the outbox holds only up to \
             {newest}: the database lost batches {}..={top} that were published and counted (a standby promoted \
             after asynchronous replication, or a restored backup). Adds acknowledged after batch {newest}'s rows \
             may be missing from the outbox; those never published are counted nowhere",
            newest + 1
        ));
    }
    for (batch, parts, spans) in open {
        if *batch > newest || (!known.contains(batch) && *batch > purged_through) {
            findings.discrepancy(format!(
                "EXTRA source {source} batch {batch} ({parts} parts, applied {spans:?}): not in the outbox"
            ));
        }
    }
    for cut in &cuts {
        let entry = open.iter().find(|(b, _, _)| *b == cut.id);
        let pack = i64::from(cut.pack.max(1));
        let parts = (cut.rows + pack - 1) / pack;
        let whole = batches.whole(cut.id)
            || entry.is_some_and(|(_, p, spans)| {
                i64::from(*p) == parts && spans == &vec![(0, parts - 1)]
            });
        if whole {
            applied_sum += parse_total(&cut.total)?;
            continue;
        }
        if let Some((_, _, spans)) = entry {
            applied_sum += partial_sum(db, cut, spans).await?;
        }
        if cut.settled {
            findings.discrepancy(format!(
                "MISSING source {source} batch {} (outbox ids {}..={}, {} rows, sum {}): confirmed, {}",
                cut.id,
                cut.first_id,
                cut.last_id,
                cut.rows,
                cut.total,
                entry.map_or("not applied".to_owned(), |(_, _, s)| format!("only parts {s:?} applied"))
            ));
        } else {
            in_flight += 1;
        }
    }
    findings.line(format!(
        "source {source}: {} batches in the outbox, ledger applied {:?}, {in_flight} in flight",
        cuts.len(),
        batches.applied
    ));
    Ok(applied_sum)
}

/// The sum of the parts of `cut` that `spans` says are applied.
async fn partial_sum(
    db: &mut PgConnection,
    cut: &Cut,
    spans: &[(i64, i64)],
) -> anyhow::Result<i128> {
    // The rows in the order the relay published them (id, sum, created_us).
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(proto::outbox::BATCH_ROWS)
        .bind(&cut.lo)
        .bind(&cut.hi)
        .bind(cut.first_id)
        .bind(cut.last_id)
        .fetch_all(&mut *db)
        .await?;
    let sums: Vec<i64> = rows.into_iter().map(|(_, sum, _)| sum).collect();
    Ok(sums
        .chunks(cut.pack.max(1) as usize)
        .enumerate()
        .filter(|(part, _)| {
            spans
                .iter()
                .any(|&(lo, hi)| (lo..=hi).contains(&(*part as i64)))
        })
        .flat_map(|(_, rows)| rows.iter().map(|&s| i128::from(s)))
        .sum())
}

/// Legacy rows (recorded before batches): applied row by row; returns the sum
/// of those the ledger applied.
async fn check_legacy(
    db: &mut PgConnection,
    state: &State,
    findings: &mut Findings,
) -> anyhow::Result<i128> {
    let rows: Vec<(i64, i64, bool)> = sqlx::query_as(
        "SELECT id, sum, published_at IS NOT NULL FROM outbox WHERE xid IS NULL ORDER BY id",
    )
    .fetch_all(&mut *db)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let source: Uuid =
        sqlx::query_scalar("SELECT source FROM outbox_sources ORDER BY started_at LIMIT 1")
            .fetch_one(&mut *db)
            .await?;
    let mut sum: i128 = 0;
    for (id, row_sum, published) in &rows {
        if state.contains_row(source, *id) {
            sum += i128::from(*row_sum);
        } else if *published {
            findings.discrepancy(format!(
                "MISSING source {source} legacy row {id} (sum {row_sum}): published, not applied"
            ));
        }
    }
    findings.line(format!("source {source}: {} legacy rows", rows.len()));
    Ok(sum)
}

fn parse_total(text: &str) -> anyhow::Result<i128> {
    text.parse()
        .with_context(|| format!("a batch total {text:?} that is not an integer"))
}

impl Findings {
    fn line(&mut self, line: String) {
        let _ = writeln!(self.report, "{line}");
    }

    fn discrepancy(&mut self, line: String) {
        self.discrepancies += 1;
        self.line(line);
    }
}
