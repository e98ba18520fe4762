//! The ledger's content and its text format, pure and without I/O: the exact
//! total, the ledger's identity and generation, and per outbox source the
//! applied batches as a horizon plus the batches in flight above it.
//!
//! Format, version 2 (every line ends with `\n`):
//! ```text
//! 123456789                                   total, decimal i128 (the first line, always)
//! tally-ledger v2 <ledger uuid> <generation>  format, identity, writes so far
//! source <uuid> <horizon> [<batch>/<parts>:<lo>-<hi>[,<lo>-<hi>]...]...
//! legacy <uuid> <horizon> [<lo>-<hi>,...]     row seqs of legacy messages (version 1 state)
//! ```
//! Every batch `<= horizon` of a source is applied whole; each batch above
//! it that has parts applied is listed with its part count and the ranges
//! of parts applied. Batches are dense and the relay republishes every batch
//! it has not seen confirmed, so every listed batch and every gap below it
//! closes: nothing is ever given up. What is listed is what is in flight,
//! and a batch more than [`MAX_AHEAD`] above the horizon is refused (a
//! forged or foreign message), so the state is bounded by that window.
//!
//! A version 1 ledger (`tally-ledger v1`, rows deduplicated by seq) and a
//! bare total are read too; their row state becomes `legacy` lines, used
//! only for legacy messages (published for rows recorded before batches).
//! Parsing them gives a nil ledger id: the file layer mints one and writes
//! version 2.

use std::collections::BTreeMap;

use proto::message::Part;
use uuid::Uuid;

/// The format this code writes.
pub const VERSION: &str = "tally-ledger v2";
/// The format before snapshot batches, read and converted.
pub const VERSION_1: &str = "tally-ledger v1";
/// Farthest a batch may be above its source's horizon; farther is refused.
pub const MAX_AHEAD: i64 = 100_000;
/// Farthest a legacy row's seq may be above the highest legacy seq applied:
/// legacy rows are the finite backlog of an upgrade; farther is refused.
pub const MAX_LEGACY_AHEAD: i64 = 10_000_000;

/// The total and the dedupe state, as one atomic unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub total: i128,
    /// This ledger's identity, minted when it is created (nil until then).
    pub id: Uuid,
    /// How many times it was written: a copy with a lower one is older.
    pub generation: u64,
    sources: BTreeMap<Uuid, Source>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Source {
    horizon: i64,
    /// Batches above the horizon with parts applied.
    open: BTreeMap<i64, Open>,
    /// Row seqs of legacy messages.
    legacy: Option<Ranges>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Open {
    parts: u32,
    applied: Ranges,
}

/// A horizon (everything up to it is in) plus sorted, disjoint, non-adjacent
/// ranges above it, none touching it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Ranges {
    horizon: i64,
    ranges: Vec<(i64, i64)>,
}

/// A batch in flight: its number, its part count, the ranges of parts applied.
pub type InFlight = (i64, u32, Vec<(i64, i64)>);

/// Whether a message changed the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
}

/// Why a message is refused (it is then dead-lettered; nothing changes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "batch {batch} is more than {MAX_AHEAD} batches above the source's horizon {horizon}: forged or foreign"
    )]
    TooFarAhead { batch: i64, horizon: i64 },
    #[error(
        "legacy row {seq} is more than {MAX_LEGACY_AHEAD} above the highest applied ({top}): forged or foreign"
    )]
    LegacyTooFarAhead { seq: i64, top: i64 },
    #[error("batch {batch} has {known} parts, the message claims {parts}")]
    PartsDiffer { batch: i64, parts: u32, known: u32 },
}

impl State {
    /// Adds `sum` (the sum of the part's rows) unless `(source, part)` was
    /// applied before.
    pub fn apply_part(&mut self, source: Uuid, part: Part, sum: i128) -> Result<Outcome, Refusal> {
        let entry = self.sources.entry(source).or_default();
        let outcome = entry.apply(part)?;
        if outcome == Outcome::Applied {
            self.total += sum;
        }
        Ok(outcome)
    }

    /// Refuses legacy rows of `source` too far above what was applied (check
    /// a whole message before applying any of its rows).
    pub fn check_rows(&self, source: Uuid, seqs: impl Iterator<Item = i64>) -> Result<(), Refusal> {
        let top = self
            .sources
            .get(&source)
            .and_then(|s| s.legacy.as_ref())
            .map_or(0, |l| l.ranges.last().map_or(l.horizon, |r| r.1));
        match seqs.max() {
            Some(seq) if seq - top > MAX_LEGACY_AHEAD => {
                Err(Refusal::LegacyTooFarAhead { seq, top })
            }
            _ => Ok(()),
        }
    }

    /// Adds `sum` unless the legacy row `(source, seq)` was applied before.
    pub fn apply_row(&mut self, source: Uuid, seq: i64, sum: i64) -> Outcome {
        let legacy = self
            .sources
            .entry(source)
            .or_default()
            .legacy
            .get_or_insert_with(Ranges::default);
        if !legacy.insert(seq) {
            return Outcome::Duplicate;
        }
        self.total += i128::from(sum);
        Outcome::Applied
    }

    /// Whether part `part` of `batch` of `source` counts as applied.
    pub fn contains_part(&self, source: Uuid, batch: i64, part: u32) -> bool {
        self.sources.get(&source).is_some_and(|s| {
            batch <= s.horizon
                || s.open
                    .get(&batch)
                    .is_some_and(|o| o.applied.contains(i64::from(part)))
        })
    }

    /// Whether the legacy row `(source, seq)` counts as applied.
    pub fn contains_row(&self, source: Uuid, seq: i64) -> bool {
        self.sources
            .get(&source)
            .and_then(|s| s.legacy.as_ref())
            .is_some_and(|l| l.contains(seq))
    }

    /// A source's batch horizon and its batches in flight, for `verify`.
    pub fn batches(&self, source: Uuid) -> (i64, Vec<InFlight>) {
        self.sources.get(&source).map_or((0, Vec::new()), |s| {
            let open = s
                .open
                .iter()
                .map(|(&batch, o)| (batch, o.parts, o.applied.spans()))
                .collect();
            (s.horizon, open)
        })
    }

    /// A source's legacy row ranges (every seq up to the horizon, plus the
    /// ranges), for `verify`.
    pub fn legacy_rows(&self, source: Uuid) -> Option<Vec<(i64, i64)>> {
        let legacy = self.sources.get(&source)?.legacy.as_ref()?;
        let mut spans = Vec::new();
        if legacy.horizon > 0 {
            spans.push((1, legacy.horizon));
        }
        spans.extend(legacy.ranges.iter().copied());
        Some(spans)
    }

    /// Every source the ledger knows.
    pub fn sources(&self) -> Vec<Uuid> {
        self.sources.keys().copied().collect()
    }

    /// Batches in flight over all sources: the size of the dedupe state.
    pub fn open_count(&self) -> usize {
        self.sources.values().map(|s| s.open.len()).sum()
    }

    /// The version 2 text.
    pub fn render(&self) -> String {
        let mut text = format!(
            "{}\n{VERSION} {} {}\n",
            self.total, self.id, self.generation
        );
        for (source, s) in &self.sources {
            text.push_str(&format!("source {source} {}", s.horizon));
            for (batch, open) in &s.open {
                text.push_str(&format!(
                    " {batch}/{}:{}",
                    open.parts,
                    open.applied.render()
                ));
            }
            text.push('\n');
            if let Some(legacy) = &s.legacy {
                text.push_str(&format!("legacy {source} {}", legacy.horizon));
                if !legacy.ranges.is_empty() {
                    text.push(' ');
                    text.push_str(&legacy.render_ranges());
                }
                text.push('\n');
            }
        }
        text
    }

    /// Parses version 2, version 1 or a bare total; the error says which line
    /// is wrong and how.
    pub fn parse(text: &str) -> Result<Self, String> {
        let body = text
            .strip_suffix('\n')
            .ok_or("the file does not end with a newline (truncated?)")?;
        let mut lines = body.split('\n');
        let first = lines.next().unwrap_or_default();
        let total = first.parse::<i128>().map_err(|_| {
            format!(
                "line 1: expected the total as a decimal integer, found {:?}",
                clip(first)
            )
        })?;
        let mut state = State {
            total,
            ..State::default()
        };
        let Some(header) = lines.next() else {
            return Ok(state);
        };
        let version_1 = header == VERSION_1;
        if !version_1 {
            (state.id, state.generation) =
                parse_header(header).map_err(|e| format!("line 2: {e}"))?;
        }
        for (index, line) in lines.enumerate() {
            let line_no = index + 3;
            let result = if version_1 {
                parse_v1_source(line).and_then(|(source, rows)| state.add_legacy(source, rows))
            } else {
                state.parse_line(line)
            };
            result.map_err(|e| format!("line {line_no}: {e}"))?;
        }
        Ok(state)
    }

    fn parse_line(&mut self, line: &str) -> Result<(), String> {
        let mut fields = line.split(' ');
        match fields.next() {
            Some("source") => {
                let source = parse_uuid(fields.next())?;
                let horizon = parse_horizon(fields.next())?;
                let mut open = BTreeMap::new();
                for token in fields {
                    let (batch, entry) = parse_open(token)?;
                    if batch <= horizon || open.insert(batch, entry).is_some() {
                        return Err(format!(
                            "batch {batch} is at or below the horizon, or twice"
                        ));
                    }
                }
                let entry = self.sources.entry(source).or_default();
                if entry.horizon != 0 || !entry.open.is_empty() {
                    return Err(format!("source {source} appears twice"));
                }
                (entry.horizon, entry.open) = (horizon, open);
                Ok(())
            }
            Some("legacy") => {
                let source = parse_uuid(fields.next())?;
                let horizon = parse_horizon(fields.next())?;
                let ranges = parse_ranges(fields.next())?;
                if fields.next().is_some() {
                    return Err("unexpected text after the ranges".into());
                }
                self.add_legacy(source, Ranges { horizon, ranges }.checked()?)
            }
            _ => Err(format!(
                "expected a `source` or `legacy` line, found {:?}",
                clip(line)
            )),
        }
    }

    fn add_legacy(&mut self, source: Uuid, rows: Ranges) -> Result<(), String> {
        let entry = self.sources.entry(source).or_default();
        if entry.legacy.replace(rows).is_some() {
            return Err(format!("legacy rows of source {source} appear twice"));
        }
        Ok(())
    }
}

impl Source {
    fn apply(&mut self, part: Part) -> Result<Outcome, Refusal> {
        let Part { batch, part, parts } = part;
        if batch <= self.horizon {
            return Ok(Outcome::Duplicate);
        }
        if batch - self.horizon > MAX_AHEAD {
            return Err(Refusal::TooFarAhead {
                batch,
                horizon: self.horizon,
            });
        }
        let open = self.open.entry(batch).or_insert_with(|| Open {
            parts,
            applied: Ranges::no_parts(),
        });
        if open.parts != parts {
            return Err(Refusal::PartsDiffer {
                batch,
                parts,
                known: open.parts,
            });
        }
        if !open.applied.insert(i64::from(part)) {
            return Ok(Outcome::Duplicate);
        }
        self.advance();
        Ok(Outcome::Applied)
    }

    /// Moves the horizon over every complete batch right above it.
    fn advance(&mut self) {
        while let Some(entry) = self.open.first_entry() {
            let complete = *entry.key() == self.horizon + 1
                && entry.get().applied.horizon == i64::from(entry.get().parts) - 1;
            if !complete {
                return;
            }
            self.horizon = entry.remove_entry().0;
        }
    }
}

impl Ranges {
    /// Parts (numbered from 0) of which none is in yet.
    fn no_parts() -> Self {
        Self {
            horizon: -1,
            ranges: Vec::new(),
        }
    }

    fn contains(&self, n: i64) -> bool {
        n <= self.horizon || self.ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&n))
    }

    /// Records `n`; false if it was in already.
    fn insert(&mut self, n: i64) -> bool {
        if self.contains(n) {
            return false;
        }
        let at = self.ranges.partition_point(|&(_, hi)| hi < n);
        self.ranges.insert(at, (n, n));
        self.merge_around(at);
        true
    }

    /// Joins the range at `at` with adjacent neighbours and the horizon.
    fn merge_around(&mut self, mut at: usize) {
        if at + 1 < self.ranges.len() && self.ranges[at].1 + 1 == self.ranges[at + 1].0 {
            self.ranges[at].1 = self.ranges[at + 1].1;
            self.ranges.remove(at + 1);
        }
        if at > 0 && self.ranges[at - 1].1 + 1 == self.ranges[at].0 {
            self.ranges[at - 1].1 = self.ranges[at].1;
            self.ranges.remove(at);
            at -= 1;
        }
        if at == 0
            && self
                .ranges
                .first()
                .is_some_and(|&(lo, _)| lo == self.horizon + 1)
        {
            self.horizon = self.ranges.remove(0).1;
        }
    }

    /// Everything in, as ranges (the horizon part from 0 for parts).
    fn spans(&self) -> Vec<(i64, i64)> {
        let mut spans = Vec::with_capacity(self.ranges.len() + 1);
        if self.horizon >= 0 {
            spans.push((0, self.horizon));
        }
        spans.extend(self.ranges.iter().copied());
        spans
    }

    /// Parts applied as `lo-hi,lo-hi` (from part 0).
    fn render(&self) -> String {
        self.spans()
            .iter()
            .map(|(lo, hi)| format!("{lo}-{hi}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn render_ranges(&self) -> String {
        self.ranges
            .iter()
            .map(|(lo, hi)| format!("{lo}-{hi}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The invariants `render` guarantees; a file breaking them is corrupt.
    fn checked(self) -> Result<Self, String> {
        let mut floor = self.horizon + 1;
        for &(lo, hi) in &self.ranges {
            if lo <= floor {
                return Err(format!(
                    "range {lo}-{hi} is not above the horizon or the previous range"
                ));
            }
            floor = hi + 1;
        }
        Ok(self)
    }
}

fn parse_header(header: &str) -> Result<(Uuid, u64), String> {
    let mut fields = header.split(' ');
    let version = format!(
        "{} {}",
        fields.next().unwrap_or_default(),
        fields.next().unwrap_or_default()
    );
    if version != VERSION {
        return Err(format!(
            "expected {VERSION:?} (or {VERSION_1:?}), found {:?}: a ledger of another version{}",
            clip(header),
            if version.starts_with("tally-ledger v") {
                ", written by a newer Tally? Upgrade this totaler"
            } else {
                ""
            }
        ));
    }
    let id = parse_uuid(fields.next())?;
    let generation = fields
        .next()
        .and_then(|g| g.parse::<u64>().ok())
        .ok_or("expected the generation after the ledger id")?;
    if fields.next().is_some() {
        return Err("unexpected text after the generation".into());
    }
    Ok((id, generation))
}

fn parse_uuid(field: Option<&str>) -> Result<Uuid, String> {
    field
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| "expected a uuid".to_owned())
}

fn parse_horizon(field: Option<&str>) -> Result<i64, String> {
    field
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|h| *h >= 0)
        .ok_or_else(|| "expected a non-negative horizon".to_owned())
}

/// `<batch>/<parts>:<ranges of parts>`.
fn parse_open(token: &str) -> Result<(i64, Open), String> {
    let bad = || format!("bad batch entry {:?}", clip(token));
    let (batch, rest) = token.split_once('/').ok_or_else(bad)?;
    let (parts, ranges) = rest.split_once(':').ok_or_else(bad)?;
    let batch = batch.parse::<i64>().map_err(|_| bad())?;
    let parts = parts
        .parse::<u32>()
        .ok()
        .filter(|p| *p >= 1)
        .ok_or_else(bad)?;
    let mut applied = Ranges::no_parts();
    for (lo, hi) in parse_ranges(Some(ranges))? {
        if lo < 0 || hi >= i64::from(parts) {
            return Err(bad());
        }
        for part in lo..=hi {
            if !applied.insert(part) {
                return Err(bad());
            }
        }
    }
    if batch < 1 {
        return Err(bad());
    }
    Ok((batch, Open { parts, applied }))
}

fn parse_ranges(field: Option<&str>) -> Result<Vec<(i64, i64)>, String> {
    match field {
        None => Ok(Vec::new()),
        Some(list) => list.split(',').map(parse_range).collect(),
    }
}

fn parse_range(text: &str) -> Result<(i64, i64), String> {
    let (lo, hi) = text
        .split_once('-')
        .ok_or_else(|| format!("bad range {:?}", clip(text)))?;
    match (lo.parse::<i64>(), hi.parse::<i64>()) {
        (Ok(lo), Ok(hi)) if lo <= hi => Ok((lo, hi)),
        _ => Err(format!("bad range {:?}", clip(text))),
    }
}

/// A version 1 `source <uuid> <horizon> [ranges]` line.
fn parse_v1_source(line: &str) -> Result<(Uuid, Ranges), String> {
    let mut fields = line.split(' ');
    if fields.next() != Some("source") {
        return Err(format!("expected a `source` line, found {:?}", clip(line)));
    }
    let source = parse_uuid(fields.next())?;
    let horizon = parse_horizon(fields.next())?;
    let ranges = parse_ranges(fields.next())?;
    if fields.next().is_some() {
        return Err("unexpected text after the ranges".into());
    }
    Ok((source, Ranges { horizon, ranges }.checked()?))
}

fn clip(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const A: Uuid = Uuid::from_u128(1);
    const B: Uuid = Uuid::from_u128(2);

    fn part(batch: i64, part: u32, parts: u32) -> Part {
        Part { batch, part, parts }
    }

    #[test]
    fn format_round_trips() {
        let mut state = State {
            id: Uuid::from_u128(9),
            generation: 4,
            ..State::default()
        };
        state.apply_part(A, part(1, 0, 1), 10).unwrap();
        state.apply_part(A, part(2, 1, 3), 20).unwrap();
        state.apply_part(A, part(4, 0, 1), 5).unwrap();
        state.apply_part(B, part(1, 1, 2), -4).unwrap();
        state.apply_row(B, 7, 100);
        let text = state.render();
        assert_eq!(
            text,
            "131\ntally-ledger v2 00000000-0000-0000-0000-000000000009 4\n\
             source 00000000-0000-0000-0000-000000000001 1 2/3:1-1 4/1:0-0\n\
             source 00000000-0000-0000-0000-000000000002 0 1/2:1-1\n\
             legacy 00000000-0000-0000-0000-000000000002 0 7-7\n"
        );
        assert_eq!(State::parse(&text).unwrap(), state);
    }

    #[test]
    fn a_repeated_part_is_a_duplicate_whatever_else_arrived() {
        let mut state = State::default();
        assert_eq!(
            state.apply_part(A, part(1, 0, 2), 100),
            Ok(Outcome::Applied)
        );
        assert_eq!(
            state.apply_part(A, part(1, 0, 2), 100),
            Ok(Outcome::Duplicate)
        );
        assert_eq!(state.apply_part(A, part(1, 1, 2), 1), Ok(Outcome::Applied));
        assert_eq!(
            state.apply_part(A, part(1, 1, 2), 1),
            Ok(Outcome::Duplicate)
        );
        assert_eq!(state.apply_part(B, part(1, 0, 2), 1), Ok(Outcome::Applied));
        assert_eq!(state.total, 102);
    }

    #[test]
    fn batches_in_any_order_close_into_the_horizon() {
        let mut state = State::default();
        let mut batches: Vec<i64> = (1..=10_000).collect();
        batches.reverse();
        batches[..5000].sort_unstable();
        for batch in batches {
            for p in 0..3 {
                state.apply_part(A, part(batch, p, 3), 1).unwrap();
            }
        }
        assert_eq!(state.total, 30_000);
        assert_eq!(state.open_count(), 0, "nothing in flight is left");
        assert_eq!(state.batches(A).0, 10_000);
    }

    /// The case that broke version 1: a gap open while far more than 1,024
    /// later ones come and go is never given up.
    #[test]
    fn a_gap_stays_open_however_long_it_takes_and_closes_when_it_arrives() {
        let mut state = State::default();
        state.apply_part(A, part(2, 0, 1), 1).unwrap();
        for batch in (3..=50_000).step_by(2) {
            state.apply_part(A, part(batch + 1, 0, 1), 1).unwrap();
            state.apply_part(A, part(batch, 0, 1), 1).unwrap();
        }
        assert_eq!(state.batches(A).0, 0, "batch 1 has not come");
        assert!(!state.contains_part(A, 1, 0));
        assert_eq!(state.apply_part(A, part(1, 0, 1), 7), Ok(Outcome::Applied));
        assert_eq!(state.batches(A).0, 50_000);
        assert_eq!(state.open_count(), 0);
        assert_eq!(state.total, 50_000 - 1 + 7);
    }

    #[test]
    fn a_batch_far_above_the_horizon_is_refused_and_changes_nothing() {
        let mut state = State::default();
        let before = state.clone();
        assert_eq!(
            state.apply_part(A, part(MAX_AHEAD + 1, 0, 1), 1_000_000),
            Err(Refusal::TooFarAhead {
                batch: MAX_AHEAD + 1,
                horizon: 0
            })
        );
        assert_eq!(
            state.apply_part(A, part(MAX_AHEAD, 0, 1), 1),
            Ok(Outcome::Applied)
        );
        assert_ne!(state, before);
        state.apply_part(A, part(3, 0, 2), 1).unwrap();
        assert_eq!(
            state.apply_part(A, part(3, 1, 5), 1),
            Err(Refusal::PartsDiffer {
                batch: 3,
                parts: 5,
                known: 2
            })
        );
        assert_eq!(state.total, 2);
    }

    #[test]
    fn legacy_rows_dedupe_by_seq_beside_batches() {
        let mut state = State::default();
        assert_eq!(state.apply_row(A, 4, 100), Outcome::Applied);
        assert_eq!(state.apply_row(A, 4, 100), Outcome::Duplicate);
        assert_eq!(state.apply_part(A, part(4, 0, 1), 1), Ok(Outcome::Applied));
        assert!(state.contains_row(A, 4) && !state.contains_row(A, 3));
        assert_eq!(state.total, 101);
    }

    #[test]
    fn a_legacy_row_far_above_the_applied_ones_is_refused() {
        let mut state = State::default();
        state.apply_row(A, 5, 1);
        assert_eq!(
            state.check_rows(A, [6, MAX_LEGACY_AHEAD + 5].into_iter()),
            Ok(())
        );
        assert_eq!(
            state.check_rows(A, [6, MAX_LEGACY_AHEAD + 6].into_iter()),
            Err(Refusal::LegacyTooFarAhead {
                seq: MAX_LEGACY_AHEAD + 6,
                top: 5
            })
        );
    }

    #[test]
    fn a_version_1_ledger_is_read_into_legacy_rows() {
        let v1 = "316\ntally-ledger v1\n\
                  source 00000000-0000-0000-0000-000000000001 3 7-7,9-10\n\
                  source 00000000-0000-0000-0000-000000000002 0 5-5\n";
        let mut state = State::parse(v1).unwrap();
        assert_eq!(state.total, 316);
        assert_eq!(state.id, Uuid::nil(), "the file layer mints the id");
        for seq in [1, 2, 3, 7, 9, 10] {
            assert_eq!(state.apply_row(A, seq, 1), Outcome::Duplicate, "seq {seq}");
        }
        assert_eq!(state.apply_row(A, 8, 1), Outcome::Applied);
        assert_eq!(state.apply_row(B, 5, 1), Outcome::Duplicate);
        assert_eq!(state.legacy_rows(A), Some(vec![(1, 3), (7, 10)]));
    }

    #[test]
    fn total_beyond_i64_is_exact() {
        let mut state = State::default();
        for batch in 1..=4 {
            state
                .apply_part(A, part(batch, 0, 1), i128::from(i64::MAX))
                .unwrap();
        }
        let text = state.render();
        assert!(text.starts_with("36893488147419103228\n"));
        assert_eq!(State::parse(&text).unwrap().total, 4 * i128::from(i64::MAX));
    }

    #[test]
    fn a_bare_total_is_accepted() {
        assert_eq!(State::parse("42\n").unwrap().total, 42);
    }

    #[test]
    fn a_newer_version_is_refused_naming_it() {
        let error = State::parse("1\ntally-ledger v3 x 1\n").unwrap_err();
        assert!(
            error.contains("line 2") && error.contains("newer"),
            "{error}"
        );
    }

    #[test]
    fn corrupt_text_is_refused_with_the_line() {
        let head = "1\ntally-ledger v2 00000000-0000-0000-0000-000000000009 3\n";
        for (text, needle) in [
            ("".to_owned(), "newline"),
            ("12x\n".to_owned(), "line 1"),
            ("12".to_owned(), "newline"),
            ("1\nledger v9\n".to_owned(), "line 2"),
            ("1\ntally-ledger v2 nope 3\n".to_owned(), "line 2"),
            (format!("{head}source nope 3\n"), "line 3"),
            (
                format!("{head}source 00000000-0000-0000-0000-000000000001 5 4/1:0-0\n"),
                "line 3",
            ),
            (
                format!("{head}source 00000000-0000-0000-0000-000000000001 5 7/2:0-2\n"),
                "line 3",
            ),
            (
                format!("{head}legacy 00000000-0000-0000-0000-000000000001 5 8-9,9-12\n"),
                "line 3",
            ),
            (
                "1\ntally-ledger v1\nsource 00000000-0000-0000-0000-000000000001 5 4-6\n"
                    .to_owned(),
                "line 3",
            ),
        ] {
            let error = State::parse(&text).unwrap_err();
            assert!(error.contains(needle), "{text:?}: {error}");
        }
    }
}
