//! The ledger's content and its text format, pure and without I/O: the exact
//! total, the ledger's identity and generation, and per outbox source the
//! batches applied, as ranges.
//!
//! Format, version 3 (every line ends with `\n`):
//! ```text
//! 123456789                                   total, decimal i128 (the first line, always)
//! tally-ledger v3 <ledger uuid> <generation>  format, identity, writes so far
//! source <uuid> <lo>-<hi>[,<lo>-<hi>]... [<batch>/<parts>:<lo>-<hi>[,<lo>-<hi>]...]...
//! legacy <uuid> <lo>-<hi>[,<lo>-<hi>]...      row seqs of legacy messages (version 1 state)
//! ```
//! A `source` line lists the batches applied whole as ranges (`-` for none),
//! then each batch with only some of its parts applied, with its part count
//! and the ranges of parts applied. A batch joins the ranges when its last
//! part is applied, so the state grows with the gaps (batches not yet seen
//! below seen ones) and the batches partly applied, never with the number
//! of batches: a source far past a gap (a fresh ledger, a restored backup,
//! a batch lost with a purged queue) costs one range more, and no batch is
//! refused for its distance. Forgery is stopped before the ledger, by the
//! message's broker-validated author (`consumer.rs`), not by a window here.
//!
//! Versions 2 (a horizon plus batches in flight), 1 (rows deduplicated by
//! seq) and a bare total are read too (`older.rs`) and written as version 3
//! at the next change. Versions 1 and a bare total give a nil ledger id: the
//! file layer mints one.

use std::collections::BTreeMap;

use proto::message::Part;
use uuid::Uuid;

use super::{older, spans::Spans};

/// The format this code writes.
pub const VERSION: &str = "tally-ledger v3";

/// The total and the dedupe state, as one atomic unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub total: i128,
    /// This ledger's identity, minted when it is created (nil until then).
    pub id: Uuid,
    /// How many times it was written: a copy with a lower one is older.
    pub generation: u64,
    pub(super) sources: BTreeMap<Uuid, Source>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Source {
    /// Batches applied whole.
    pub(super) applied: Spans,
    /// Batches with some, not all, of their parts applied.
    pub(super) partial: BTreeMap<i64, Partial>,
    /// Row seqs of legacy messages.
    pub(super) legacy: Option<Spans>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Partial {
    pub(super) parts: u32,
    /// The parts applied, numbered from 0.
    pub(super) applied: Spans,
}

/// A batch partly applied: its number, its part count, the ranges of parts
/// applied.
pub type InFlight = (i64, u32, Vec<(i64, i64)>);

/// A source's batches as the ledger knows them, for `verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batches {
    /// The batches applied whole, as ranges.
    pub applied: Vec<(i64, i64)>,
    /// The batches partly applied.
    pub partial: Vec<InFlight>,
}

impl Batches {
    /// Whether `batch` is applied whole.
    pub fn whole(&self, batch: i64) -> bool {
        let at = self.applied.partition_point(|&(_, hi)| hi < batch);
        self.applied.get(at).is_some_and(|&(lo, _)| lo <= batch)
    }

    /// The highest batch with anything applied; 0 when none is.
    pub fn top(&self) -> i64 {
        let whole = self.applied.last().map_or(0, |&(_, hi)| hi);
        let partial = self.partial.last().map_or(0, |&(batch, _, _)| batch);
        whole.max(partial)
    }
}

/// Whether a message changed the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
}

/// Why a message is refused (it is then dead-lettered; nothing changes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
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

    /// Adds `sum` unless the legacy row `(source, seq)` was applied before.
    pub fn apply_row(&mut self, source: Uuid, seq: i64, sum: i64) -> Outcome {
        let legacy = self
            .sources
            .entry(source)
            .or_default()
            .legacy
            .get_or_insert_with(Spans::default);
        if !legacy.insert(seq) {
            return Outcome::Duplicate;
        }
        self.total += i128::from(sum);
        Outcome::Applied
    }

    /// Whether part `part` of `batch` of `source` counts as applied (the
    /// tests' view; the consumer asks `apply`).
    #[cfg(test)]
    pub fn contains_part(&self, source: Uuid, batch: i64, part: u32) -> bool {
        self.sources.get(&source).is_some_and(|s| {
            s.applied.contains(batch)
                || s.partial
                    .get(&batch)
                    .is_some_and(|p| p.applied.contains(i64::from(part)))
        })
    }

    /// Whether the legacy row `(source, seq)` counts as applied.
    pub fn contains_row(&self, source: Uuid, seq: i64) -> bool {
        self.sources
            .get(&source)
            .and_then(|s| s.legacy.as_ref())
            .is_some_and(|l| l.contains(seq))
    }

    /// A source's batches applied whole and partly, for `verify`.
    pub fn batches(&self, source: Uuid) -> Batches {
        self.sources
            .get(&source)
            .map_or_else(Batches::default, |s| {
                let partial = s
                    .partial
                    .iter()
                    .map(|(&batch, p)| (batch, p.parts, p.applied.ranges().to_vec()))
                    .collect();
                Batches {
                    applied: s.applied.ranges().to_vec(),
                    partial,
                }
            })
    }

    /// A source's legacy row seqs as ranges, for `verify`.
    pub fn legacy_rows(&self, source: Uuid) -> Option<Vec<(i64, i64)>> {
        let legacy = self.sources.get(&source)?.legacy.as_ref()?;
        Some(legacy.ranges().to_vec())
    }

    /// Every source the ledger knows.
    pub fn sources(&self) -> Vec<Uuid> {
        self.sources.keys().copied().collect()
    }

    /// The size of the dedupe state beyond one range per source: the gaps
    /// (a range not starting at batch 1 has one below it) plus the batches
    /// partly applied.
    pub fn open_count(&self) -> usize {
        self.sources
            .values()
            .map(|s| {
                let ranges = s.applied.ranges();
                let gaps = ranges.len() - usize::from(ranges.first().is_some_and(|r| r.0 == 1));
                gaps + s.partial.len()
            })
            .sum()
    }

    /// The version 3 text.
    pub fn render(&self) -> String {
        let mut text = format!(
            "{}\n{VERSION} {} {}\n",
            self.total, self.id, self.generation
        );
        for (source, s) in &self.sources {
            text.push_str(&format!("source {source} {}", s.applied.render()));
            for (batch, partial) in &s.partial {
                text.push_str(&format!(
                    " {batch}/{}:{}",
                    partial.parts,
                    partial.applied.render()
                ));
            }
            text.push('\n');
            if let Some(legacy) = &s.legacy {
                text.push_str(&format!("legacy {source} {}\n", legacy.render()));
            }
        }
        text
    }

    /// Parses version 3, 2, 1 or a bare total; the error says which line is
    /// wrong and how.
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
        let version = older::Version::of(header).map_err(|e| format!("line 2: {e}"))?;
        if version != older::Version::V1 {
            (state.id, state.generation) =
                parse_header(header).map_err(|e| format!("line 2: {e}"))?;
        }
        for (index, line) in lines.enumerate() {
            let parsed = match version {
                older::Version::V1 => older::parse_v1_line(&mut state, line),
                older::Version::V2 => older::parse_v2_line(&mut state, line),
                older::Version::V3 => state.parse_line(line),
            };
            parsed.map_err(|e| format!("line {}: {e}", index + 3))?;
        }
        Ok(state)
    }

    fn parse_line(&mut self, line: &str) -> Result<(), String> {
        let mut fields = line.split(' ');
        match fields.next() {
            Some("source") => {
                let source = parse_uuid(fields.next())?;
                let applied = Spans::parse(fields.next().unwrap_or_default(), 1)?;
                let mut partial = BTreeMap::new();
                for token in fields {
                    let (batch, entry) = parse_partial(token)?;
                    if applied.contains(batch)
                        || entry.applied.covers(0, i64::from(entry.parts) - 1)
                        || partial.insert(batch, entry).is_some()
                    {
                        return Err(format!(
                            "batch {batch} is listed as partly applied, but is applied whole or listed twice"
                        ));
                    }
                }
                self.set_batches(source, applied, partial)
            }
            Some("legacy") => {
                let source = parse_uuid(fields.next())?;
                let rows = Spans::parse(fields.next().unwrap_or_default(), 1)?;
                if fields.next().is_some() {
                    return Err("unexpected text after the ranges".into());
                }
                self.add_legacy(source, rows)
            }
            _ => Err(format!(
                "expected a `source` or `legacy` line, found {:?}",
                clip(line)
            )),
        }
    }

    /// A source's batches from its line; refused if the source had one.
    pub(super) fn set_batches(
        &mut self,
        source: Uuid,
        applied: Spans,
        partial: BTreeMap<i64, Partial>,
    ) -> Result<(), String> {
        let entry = self.sources.entry(source).or_default();
        if !entry.applied.is_empty() || !entry.partial.is_empty() {
            return Err(format!("source {source} appears twice"));
        }
        (entry.applied, entry.partial) = (applied, partial);
        Ok(())
    }

    pub(super) fn add_legacy(&mut self, source: Uuid, rows: Spans) -> Result<(), String> {
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
        if self.applied.contains(batch) {
            return Ok(Outcome::Duplicate);
        }
        let entry = self.partial.entry(batch).or_insert_with(|| Partial {
            parts,
            applied: Spans::default(),
        });
        if entry.parts != parts {
            return Err(Refusal::PartsDiffer {
                batch,
                parts,
                known: entry.parts,
            });
        }
        if !entry.applied.insert(i64::from(part)) {
            return Ok(Outcome::Duplicate);
        }
        if entry.applied.covers(0, i64::from(parts) - 1) {
            self.partial.remove(&batch);
            self.applied.insert(batch);
        }
        Ok(Outcome::Applied)
    }
}

fn parse_header(header: &str) -> Result<(Uuid, u64), String> {
    let mut fields = header.split(' ').skip(2);
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

pub(super) fn parse_uuid(field: Option<&str>) -> Result<Uuid, String> {
    field
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| "expected a uuid".to_owned())
}

/// `<batch>/<parts>:<ranges of parts applied>`, at least one part applied.
pub(super) fn parse_partial(token: &str) -> Result<(i64, Partial), String> {
    let bad = || format!("bad batch entry {:?}", clip(token));
    let (batch, rest) = token.split_once('/').ok_or_else(bad)?;
    let (parts, ranges) = rest.split_once(':').ok_or_else(bad)?;
    let batch = batch
        .parse::<i64>()
        .ok()
        .filter(|b| *b >= 1)
        .ok_or_else(bad)?;
    let parts = parts
        .parse::<u32>()
        .ok()
        .filter(|p| *p >= 1)
        .ok_or_else(bad)?;
    let applied = Spans::parse(ranges, 0).map_err(|e| format!("{}: {e}", bad()))?;
    if applied.is_empty() || applied.last().is_some_and(|top| top >= i64::from(parts)) {
        return Err(bad());
    }
    Ok((batch, Partial { parts, applied }))
}

pub(super) fn clip(text: &str) -> String {
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
            "131\ntally-ledger v3 00000000-0000-0000-0000-000000000009 4\n\
             source 00000000-0000-0000-0000-000000000001 1-1,4-4 2/3:1-1\n\
             source 00000000-0000-0000-0000-000000000002 - 1/2:1-1\n\
             legacy 00000000-0000-0000-0000-000000000002 7-7\n"
        );
        assert_eq!(State::parse(&text).unwrap(), state);
    }

    /// Issue 21, item 3: a source running far past a gap (a fresh ledger,
    /// a lost batch) is counted, and its state is a few ranges, not a line
    /// per batch.
    #[test]
    fn batches_far_beyond_a_gap_are_counted_and_the_state_stays_small() {
        let mut state = State::default();
        state.apply_part(A, part(1, 0, 1), 1).unwrap();
        for batch in 3..=150_002 {
            assert_eq!(
                state.apply_part(A, part(batch, 0, 1), 1),
                Ok(Outcome::Applied),
                "batch {batch}"
            );
        }
        state.apply_part(A, part(1_000_000_000, 0, 1), 1).unwrap();
        assert_eq!(state.total, 150_002);
        let text = state.render();
        assert!(text.len() < 300, "{} bytes: {}", text.len(), clip(&text));
        assert_eq!(State::parse(&text).unwrap(), state);
        assert_eq!(state.apply_part(A, part(2, 0, 1), 5), Ok(Outcome::Applied));
        assert_eq!(
            state.apply_part(A, part(70_000, 0, 1), 5),
            Ok(Outcome::Duplicate)
        );
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
        assert_eq!(state.batches(A).applied, [(1, 10_000)]);
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
        assert_eq!(
            state.batches(A).applied,
            [(2, 50_000)],
            "batch 1 has not come"
        );
        assert_eq!(state.open_count(), 1, "one gap");
        assert!(!state.contains_part(A, 1, 0));
        assert_eq!(state.apply_part(A, part(1, 0, 1), 7), Ok(Outcome::Applied));
        assert_eq!(state.batches(A).applied, [(1, 50_000)]);
        assert_eq!(state.open_count(), 0);
        assert_eq!(state.total, 50_000 - 1 + 7);
    }

    #[test]
    fn a_part_count_contradicting_the_first_seen_is_refused_and_changes_nothing() {
        let mut state = State::default();
        state.apply_part(A, part(3, 0, 2), 1).unwrap();
        let before = state.clone();
        assert_eq!(
            state.apply_part(A, part(3, 1, 5), 1),
            Err(Refusal::PartsDiffer {
                batch: 3,
                parts: 5,
                known: 2
            })
        );
        assert_eq!(state, before);
        assert_eq!(state.apply_part(A, part(3, 1, 2), 1), Ok(Outcome::Applied));
        assert_eq!(state.batches(A).applied, [(3, 3)]);
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
    fn a_legacy_row_far_above_the_applied_ones_is_one_range_more() {
        let mut state = State::default();
        state.apply_row(A, 5, 1);
        assert_eq!(state.apply_row(A, 10_000_000_006, 1), Outcome::Applied);
        assert_eq!(
            state.legacy_rows(A),
            Some(vec![(5, 5), (10_000_000_006, 10_000_000_006)])
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
    fn a_version_2_ledger_is_read_into_ranges() {
        let v2 = "77\ntally-ledger v2 00000000-0000-0000-0000-000000000009 12\n\
                  source 00000000-0000-0000-0000-000000000001 5120 5122/3:0-1 5123/2:0-1 5125/1:0-0\n\
                  legacy 00000000-0000-0000-0000-000000000001 10480 10482-10483\n";
        let mut state = State::parse(v2).unwrap();
        assert_eq!((state.total, state.generation), (77, 12));
        assert_eq!(
            state.batches(A),
            Batches {
                applied: vec![(1, 5120), (5123, 5123), (5125, 5125)],
                partial: vec![(5122, 3, vec![(0, 1)])],
            }
        );
        assert_eq!(state.legacy_rows(A), Some(vec![(1, 10480), (10482, 10483)]));
        assert_eq!(
            state.apply_part(A, part(5122, 2, 3), 1),
            Ok(Outcome::Applied)
        );
        assert!(
            state
                .render()
                .contains(&format!("source {A} 1-5120,5122-5123,5125-5125\n"))
        );
        assert_eq!(State::parse(&state.render()).unwrap(), state);
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
        let error = State::parse("1\ntally-ledger v4 x 1\n").unwrap_err();
        assert!(
            error.contains("line 2") && error.contains("newer"),
            "{error}"
        );
    }

    #[test]
    fn corrupt_text_is_refused_with_the_line() {
        let head = "1\ntally-ledger v2 00000000-0000-0000-0000-000000000009 3\n";
        let v3 = "1\ntally-ledger v3 00000000-0000-0000-0000-000000000009 3\n";
        let a = A;
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
            (format!("{v3}source {a} 1-5 3/2:0-0\n"), "line 3"),
            (format!("{v3}source {a} 5-3\n"), "line 3"),
            (format!("{v3}source {a} 1-3,4-6\n"), "line 3"),
            (format!("{v3}source {a} 0-3\n"), "line 3"),
            (format!("{v3}source {a} 1-3 9/2:0-1\n"), "line 3"),
            (format!("{v3}source {a}\n"), "line 3"),
            (format!("{v3}legacy {a} 3-4,2-2\n"), "line 3"),
        ] {
            let error = State::parse(&text).unwrap_err();
            assert!(error.contains(needle), "{text:?}: {error}");
        }
    }
}
