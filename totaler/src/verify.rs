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
//!   `--in-flight-secs` ago that the ledger has not (wholly) applied: the
//!   `adder republish` command that publishes it again is printed. Or
//!   retention purged it before the ledger applied it: it cannot be
//!   republished, and the total's difference is the sum it carried.
//! - **in flight**: batches cut or confirmed since, not yet applied: normal
//!   on a live system, reported, not a discrepancy.
//! - **purged**: batches and legacy rows retention deleted; their count and
//!   sum were kept with their source, so the total stays checkable. Legacy
//!   rows an adder purged before it kept them (`purged_legacy_*`) have no
//!   known sum: a total that differs while the ledger counts legacy rows
//!   the outbox cannot account for is a WARNING, not a discrepancy.
//! - **total**: the ledger's total against the outbox's sum of what the
//!   ledger claims applied; checked only when every source the ledger knows
//!   is in the given databases.
//!
//! Each database is read in one snapshot (a purge committing meanwhile is
//! seen whole or not at all).
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

mod batches;
mod legacy;

use batches::{check_beyond, purged_unapplied, ranges, render_range, whole};
use legacy::check_legacy;

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
    let mut audit = Audit::default();
    let urls = args
        .database_urls
        .iter()
        .flat_map(|list| proto::outbox::split_urls(list));
    for (n, url) in urls.enumerate() {
        let mut db = connect_primary(&url)
            .await
            .with_context(|| format!("connecting to outbox database {}", n + 1))?;
        let database = Database {
            number: n + 1,
            state: &state,
            args,
        };
        database
            .check(&mut db, &mut audit, &mut findings)
            .await
            .with_context(|| format!("reading outbox database {}", n + 1))?;
    }
    if audit.republish {
        findings.line(REPUBLISH_NOTE.to_owned());
    }
    conclude(&state, &audit, &mut findings);
    Ok(findings)
}

/// What the audit of the databases adds up, for the total.
#[derive(Debug, Default)]
struct Audit {
    /// The sources of the databases read.
    covered: BTreeSet<Uuid>,
    /// The outbox's sum of what the ledger claims applied.
    expected: i128,
    /// Legacy row ids the ledger counted that the outbox neither holds nor
    /// counted as purged: purged by an adder before `purged_legacy_*`.
    legacy_unknown: i64,
    /// Whether batches were purged before the ledger applied them.
    purged_missing: bool,
    /// Whether an `adder republish` command was printed.
    republish: bool,
}

/// One outbox database, as the audit reads it.
struct Database<'a> {
    number: usize,
    state: &'a State,
    args: &'a Args,
}

/// A row of `outbox_sources`: a source and what retention purged of it.
#[derive(Debug, sqlx::FromRow)]
struct Source {
    source: Uuid,
    purged_through: i64,
    purged_rows: i64,
    purged_total: String,
    purged_legacy_rows: i64,
    purged_legacy_total: String,
}

const REPUBLISH_NOTE: &str = "  (run `adder republish` with the adders' DATABASE_URL, AMQP_URL, TALLY_QUEUE and \
     TALLY_EXCHANGE: it finds the database that holds the source, publishes the batches as the relay did, and \
     the ledger counts each part once)";

impl Database<'_> {
    /// Audits every source of the database and its legacy rows, in one
    /// snapshot (a purge committing meanwhile is seen whole or not at all).
    async fn check(
        &self,
        db: &mut PgConnection,
        audit: &mut Audit,
        findings: &mut Findings,
    ) -> anyhow::Result<()> {
        let mut tx = db.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let sources: Vec<Source> = sqlx::query_as(
            "SELECT source, purged_through, purged_rows, purged_total::text AS purged_total, \
             purged_legacy_rows, purged_legacy_total::text AS purged_legacy_total \
             FROM outbox_sources ORDER BY started_at",
        )
        .fetch_all(&mut *tx)
        .await?;
        for source in &sources {
            audit.covered.insert(source.source);
            findings.line(format!(
                "source {} (database {}): purged by retention: {} batches, {} rows",
                source.source, self.number, source.purged_through, source.purged_rows
            ));
            if source.purged_through > 0 {
                audit.expected += parse_total(&source.purged_total)?;
            }
            audit.expected += parse_total(&source.purged_legacy_total)?;
            audit.expected += self.check_source(&mut tx, source, audit, findings).await?;
        }
        if let Some(oldest) = sources.first() {
            let purged: i64 = sources.iter().map(|s| s.purged_legacy_rows).sum();
            check_legacy(&mut tx, self.state, oldest.source, purged, audit, findings).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The total, when every source of the ledger was in the databases read.
fn conclude(state: &State, audit: &Audit, findings: &mut Findings) {
    let uncovered: Vec<Uuid> = state
        .sources()
        .into_iter()
        .filter(|s| !audit.covered.contains(s))
        .collect();
    for source in &uncovered {
        findings.discrepancy(format!(
            "UNKNOWN source {source} is in the ledger but in none of the given databases: the total cannot be checked"
        ));
    }
    if !uncovered.is_empty() {
        return;
    }
    let (ledger, outbox) = (state.total, audit.expected);
    if ledger == outbox {
        findings.line(format!("total: ledger {ledger} = outbox {outbox}"));
    } else if audit.legacy_unknown > 0 {
        findings.line(format!(
            "WARNING legacy rows purged before this version: {} legacy row ids the ledger counted are neither in \
             the outbox nor counted as purged (an adder older than `purged_legacy_rows` purged them and kept no \
             sum, or a version 1 ledger's horizon covers ids no row had); their sum is unknown, so the total is \
             not checked: ledger {ledger}, outbox {outbox} (difference {})",
            audit.legacy_unknown,
            ledger - outbox
        ));
    } else {
        findings.discrepancy(format!(
            "TOTAL ledger {ledger} != outbox {outbox} (difference {})",
            ledger - outbox
        ));
        if audit.purged_missing {
            findings.line(format!(
                "  missing sum {}: what the batches purged before the ledger applied them carried (outbox - \
                 ledger; exact unless another finding above adds to the difference)",
                outbox - ledger
            ));
        }
    }
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

impl Database<'_> {
    /// Compares one source's batches; returns the sum of what the ledger
    /// applied of the batches still in the outbox. Prints the command that
    /// republishes the missing ones, and which were purged unapplied.
    async fn check_source(
        &self,
        db: &mut PgConnection,
        row: &Source,
        audit: &mut Audit,
        findings: &mut Findings,
    ) -> anyhow::Result<i128> {
        let (source, purged_through) = (row.source, row.purged_through);
        let cuts = self.cuts(db, source).await?;
        let ledger = self.state.batches(source);
        let open = &ledger.partial;
        let known: BTreeSet<i64> = cuts.iter().map(|c| c.id).collect();
        let newest = cuts.last().map_or(purged_through, |c| c.id);
        check_beyond(
            source,
            (ledger.top(), open),
            &known,
            (purged_through, newest),
            findings,
        );
        let purged = purged_unapplied(&ledger.applied, open, &known, purged_through);
        for &(first, last) in &purged {
            audit.purged_missing = true;
            findings.discrepancy(format!(
                "MISSING source {source} batches {first}..={last}: confirmed, purged by retention before the \
                 ledger applied them (whole), so they cannot be republished; the sum they carried is below"
            ));
        }
        let (mut applied_sum, mut in_flight, mut missing) = (0, 0, Vec::new());
        for cut in &cuts {
            let entry = open.iter().find(|(b, _, _)| *b == cut.id);
            if ledger.whole(cut.id) || entry.is_some_and(|(_, p, spans)| whole(cut, *p, spans)) {
                applied_sum += parse_total(&cut.total)?;
                continue;
            }
            if let Some((_, _, spans)) = entry {
                applied_sum += partial_sum(db, cut, spans).await?;
            }
            if !cut.settled {
                in_flight += 1;
                continue;
            }
            missing.push(cut.id);
            findings.discrepancy(format!(
                "MISSING source {source} batch {} (outbox ids {}..={}, {} rows, sum {}): confirmed, {}",
                cut.id,
                cut.first_id,
                cut.last_id,
                cut.rows,
                cut.total,
                entry.map_or("not applied".to_owned(), |(_, _, s)| format!("only parts {s:?} applied"))
            ));
        }
        for (first, last) in ranges(&missing) {
            audit.republish = true;
            findings.line(format!(
                "  republish: adder republish --source {source} --batches {}",
                render_range(first, last)
            ));
        }
        findings.line(format!(
            "source {source}: {} batches in the outbox, ledger applied {:?}, {in_flight} in flight",
            cuts.len(),
            ledger.applied
        ));
        Ok(applied_sum)
    }

    /// The source's batches in the outbox, each with whether it was
    /// confirmed longer than `--in-flight-secs` ago.
    async fn cuts(&self, db: &mut PgConnection, source: Uuid) -> anyhow::Result<Vec<Cut>> {
        Ok(sqlx::query_as(
            "SELECT id, rows, total::text AS total, pack, lo::text AS lo, hi::text AS hi, first_id, last_id, \
             (confirmed_at IS NOT NULL AND confirmed_at < clock_timestamp() - make_interval(secs => $2)) AS settled \
             FROM outbox_batch WHERE source = $1 ORDER BY id",
        )
        .bind(source)
        .bind(self.args.in_flight_secs as f64)
        .fetch_all(&mut *db)
        .await?)
    }
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
