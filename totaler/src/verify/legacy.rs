//! `verify`'s audit of legacy rows (recorded before snapshot batches,
//! applied by the ledger row by row), under the database's oldest source:
//! those still in the outbox, those retention purged (`purged_legacy_*`)
//! and those the ledger counted that the outbox cannot account for.

use sqlx::PgConnection;
use uuid::Uuid;

use super::{Audit, Findings};
use crate::ledger::State;

/// Legacy rows (recorded before batches), audited under the database's
/// oldest source: applied row by row. Adds the sum of those the ledger
/// applied to the expected total, and counts the legacy row ids the ledger
/// applied that the outbox neither holds nor counted as purged (`purged`).
pub(super) async fn check_legacy(
    db: &mut PgConnection,
    state: &State,
    source: Uuid,
    purged: i64,
    audit: &mut Audit,
    findings: &mut Findings,
) -> anyhow::Result<()> {
    let rows: Vec<(i64, i64, bool)> = sqlx::query_as(
        "SELECT id, sum, published_at IS NOT NULL FROM outbox WHERE xid IS NULL ORDER BY id",
    )
    .fetch_all(&mut *db)
    .await?;
    let mut applied: i64 = 0;
    for (id, row_sum, published) in &rows {
        if state.contains_row(source, *id) {
            audit.expected += i128::from(*row_sum);
            applied += 1;
        } else if *published {
            findings.discrepancy(format!(
                "MISSING source {source} legacy row {id} (sum {row_sum}): published, not applied"
            ));
        }
    }
    let counted: i64 = state
        .legacy_rows(source)
        .unwrap_or_default()
        .iter()
        .map(|(lo, hi)| hi - lo + 1)
        .sum();
    audit.legacy_unknown += (counted - applied - purged).max(0);
    if !rows.is_empty() || purged > 0 || counted > 0 {
        findings.line(format!(
            "source {source}: {} legacy rows, {purged} purged by retention, {counted} counted by the ledger",
            rows.len()
        ));
    }
    Ok(())
}
