//! The batch arithmetic of `verify`, pure: what the ledger counted beyond
//! the outbox (REWOUND, EXTRA), whether an entry is a batch whole, which
//! purged batches the ledger never applied, and batch numbers as the
//! ranges `adder republish --batches` takes. No I/O.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::{Cut, Findings};
use crate::ledger::state::InFlight;

/// REWOUND and EXTRA: what the ledger counted of `source` beyond what the
/// outbox holds (`known`) or purged.
pub(super) fn check_beyond(
    source: Uuid,
    (top, open): (i64, &[InFlight]),
    known: &BTreeSet<i64>,
    (purged_through, newest): (i64, i64),
    findings: &mut Findings,
) {
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
}

/// Whether the ledger's entry (`parts` parts, `spans` applied) is `cut` whole.
pub(super) fn whole(cut: &Cut, parts: u32, spans: &[(i64, i64)]) -> bool {
    let pack = i64::from(cut.pack.max(1));
    let cut_parts = (cut.rows + pack - 1) / pack;
    i64::from(parts) == cut_parts && spans == [(0, cut_parts - 1)]
}

/// The batches up to `purged_through` that retention purged (not in the
/// outbox, `known`) and the ledger has not applied whole (in neither its
/// `applied` ranges nor a whole entry of `open`), as ranges.
pub(super) fn purged_unapplied(
    applied: &[(i64, i64)],
    open: &[InFlight],
    known: &BTreeSet<i64>,
    purged_through: i64,
) -> Vec<(i64, i64)> {
    let whole = open
        .iter()
        .filter(|(_, parts, spans)| spans == &[(0, i64::from(*parts) - 1)])
        .map(|(batch, _, _)| *batch);
    let mut covered: Vec<(i64, i64)> = applied.to_vec();
    covered.extend(known.iter().copied().chain(whole).map(|b| (b, b)));
    covered.sort_unstable();
    let mut gaps = Vec::new();
    let mut next = 1;
    for (lo, hi) in covered {
        if lo > purged_through {
            break;
        }
        if lo > next {
            gaps.push((next, lo - 1));
        }
        next = next.max(hi + 1);
    }
    if next <= purged_through {
        gaps.push((next, purged_through));
    }
    gaps
}

/// Sorted batch numbers as contiguous ranges.
pub(super) fn ranges(batches: &[i64]) -> Vec<(i64, i64)> {
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for &batch in batches {
        match ranges.last_mut() {
            Some((_, last)) if *last + 1 == batch => *last = batch,
            _ => ranges.push((batch, batch)),
        }
    }
    ranges
}

/// A range as `adder republish --batches` takes it.
pub(super) fn render_range(first: i64, last: i64) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}..={last}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purged_batches_the_ledger_lacks_are_the_gaps_in_what_it_applied() {
        let open: Vec<InFlight> = vec![(5, 2, vec![(0, 1)]), (7, 2, vec![(0, 0)])];
        let known = BTreeSet::from([9]);
        assert_eq!(
            purged_unapplied(&[(1, 2), (12, 12)], &open, &known, 10),
            vec![(3, 4), (6, 8), (10, 10)],
            "1..=2 applied, 5 whole, 7 only in part, 9 still in the outbox"
        );
        assert_eq!(purged_unapplied(&[(1, 10)], &open, &known, 10), vec![]);
        assert_eq!(
            purged_unapplied(&[], &[], &BTreeSet::new(), 3),
            vec![(1, 3)]
        );
    }

    #[test]
    fn batch_numbers_become_ranges_as_republish_takes_them() {
        assert_eq!(ranges(&[1, 2, 3, 5, 7, 8]), vec![(1, 3), (5, 5), (7, 8)]);
        assert_eq!(render_range(5, 5), "5");
        assert_eq!(render_range(7, 8), "7..=8");
    }
}
