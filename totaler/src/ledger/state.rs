//! The ledger's content and its text format, pure and without I/O: the exact
//! total and, per outbox source, the set of applied message ids as a horizon
//! plus a bounded list of ranges above it.
//!
//! Format, version 1 (every line ends with `\n`):
//! ```text
//! 123456789                                   total, decimal i128 (the first line, always)
//! tally-ledger v1                             format version
//! source <uuid> <horizon> [<lo>-<hi>,...]     one line per outbox source
//! ```
//! Every seq `<= horizon` counts as applied; the ranges are the applied seqs
//! above it, sorted, disjoint, not adjacent, and none touching the horizon.
//! A file holding only the total line is accepted as a ledger with no
//! dedupe state (how a hand-made `sum.txt` looks).

use std::collections::BTreeMap;

use uuid::Uuid;

/// The second line of a version 1 ledger.
pub const VERSION_LINE: &str = "tally-ledger v1";

/// Most ranges kept per source. Ids are almost dense, so in practice there
/// are a handful; past this bound the lowest gap is given up (see `compact`).
pub const MAX_RANGES: usize = 1024;

/// The total and the dedupe state, as one atomic unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub total: i128,
    sources: BTreeMap<Uuid, Applied>,
}

/// The applied seqs of one source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Applied {
    horizon: i64,
    ranges: Vec<(i64, i64)>,
}

/// Whether a message changed the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
}

impl State {
    /// Adds `sum` unless `(source, seq)` was applied before.
    pub fn apply(&mut self, source: Uuid, seq: i64, sum: i64) -> Outcome {
        let applied = self.sources.entry(source).or_default();
        if !applied.insert(seq) {
            return Outcome::Duplicate;
        }
        self.total += i128::from(sum);
        applied.compact(MAX_RANGES);
        Outcome::Applied
    }

    /// Whether `(source, seq)` counts as applied.
    pub fn contains(&self, source: Uuid, seq: i64) -> bool {
        self.sources
            .get(&source)
            .is_some_and(|applied| applied.contains(seq))
    }

    /// Ranges held over all sources: the size of the dedupe state.
    pub fn range_count(&self) -> usize {
        self.sources
            .values()
            .map(|applied| applied.ranges.len())
            .sum()
    }

    /// The version 1 text.
    pub fn render(&self) -> String {
        let mut text = format!("{}\n{VERSION_LINE}\n", self.total);
        for (source, applied) in &self.sources {
            text.push_str(&format!("source {source} {}", applied.horizon));
            let ranges: Vec<String> = applied
                .ranges
                .iter()
                .map(|(lo, hi)| format!("{lo}-{hi}"))
                .collect();
            if !ranges.is_empty() {
                text.push(' ');
                text.push_str(&ranges.join(","));
            }
            text.push('\n');
        }
        text
    }

    /// Parses the text; the error says which line is wrong and how.
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
            sources: BTreeMap::new(),
        };
        match lines.next() {
            None => return Ok(state),
            Some(VERSION_LINE) => {}
            Some(other) => {
                return Err(format!(
                    "line 2: expected {VERSION_LINE:?}, found {:?}",
                    clip(other)
                ));
            }
        }
        for (index, line) in lines.enumerate() {
            let (source, applied) =
                parse_source(line).map_err(|e| format!("line {}: {e}", index + 3))?;
            if state.sources.insert(source, applied).is_some() {
                return Err(format!("line {}: source {source} appears twice", index + 3));
            }
        }
        Ok(state)
    }
}

impl Applied {
    fn contains(&self, seq: i64) -> bool {
        seq <= self.horizon || self.ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&seq))
    }

    /// Records `seq`; false if it was already applied.
    fn insert(&mut self, seq: i64) -> bool {
        if self.contains(seq) {
            return false;
        }
        let at = self.ranges.partition_point(|&(_, hi)| hi < seq);
        self.ranges.insert(at, (seq, seq));
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

    /// Keeps at most `max` ranges by moving the horizon over the lowest gap:
    /// the seqs in that gap, never delivered while `max` later gaps opened,
    /// are taken as never to come (a rolled-back insert leaves such a gap).
    fn compact(&mut self, max: usize) {
        while self.ranges.len() > max {
            self.horizon = self.ranges.remove(0).1;
        }
    }
}

fn parse_source(line: &str) -> Result<(Uuid, Applied), String> {
    let mut fields = line.split(' ');
    if fields.next() != Some("source") {
        return Err(format!("expected a `source` line, found {:?}", clip(line)));
    }
    let source = fields
        .next()
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or("expected a source uuid")?;
    let horizon = fields
        .next()
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|h| *h >= 0)
        .ok_or("expected a non-negative horizon")?;
    let ranges = match fields.next() {
        None => Vec::new(),
        Some(list) => list.split(',').map(parse_range).collect::<Result<_, _>>()?,
    };
    if fields.next().is_some() {
        return Err("unexpected text after the ranges".into());
    }
    let applied = Applied { horizon, ranges };
    applied.check()?;
    Ok((source, applied))
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

impl Applied {
    /// The invariants `render` guarantees; a file breaking them is corrupt.
    fn check(&self) -> Result<(), String> {
        let mut floor = self.horizon + 1;
        for &(lo, hi) in &self.ranges {
            if lo <= floor {
                return Err(format!(
                    "range {lo}-{hi} is not above the horizon or the previous range"
                ));
            }
            floor = hi + 1;
        }
        if self.ranges.len() > MAX_RANGES {
            return Err(format!(
                "{} ranges, more than the {MAX_RANGES} allowed",
                self.ranges.len()
            ));
        }
        Ok(())
    }
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

    #[test]
    fn format_round_trips() {
        let mut state = State::default();
        for seq in [1, 2, 3, 7, 9, 10] {
            state.apply(A, seq, seq * 10);
        }
        state.apply(B, 5, -4);
        let text = state.render();
        assert_eq!(
            text,
            "316\ntally-ledger v1\n\
             source 00000000-0000-0000-0000-000000000001 3 7-7,9-10\n\
             source 00000000-0000-0000-0000-000000000002 0 5-5\n"
        );
        assert_eq!(State::parse(&text).unwrap(), state);
    }

    #[test]
    fn redelivered_message_is_a_duplicate() {
        let mut state = State::default();
        assert_eq!(state.apply(A, 4, 100), Outcome::Applied);
        assert_eq!(state.apply(A, 4, 100), Outcome::Duplicate);
        assert_eq!(state.apply(B, 4, 1), Outcome::Applied);
        assert_eq!(state.total, 101);
    }

    #[test]
    fn dense_ids_keep_no_ranges_in_any_order() {
        let mut state = State::default();
        let mut seqs: Vec<i64> = (1..=10_000).collect();
        seqs.reverse();
        seqs[..5000].sort_unstable();
        for seq in seqs {
            state.apply(A, seq, 1);
        }
        assert_eq!(state.total, 10_000);
        assert_eq!(state.range_count(), 0);
        assert!(state.contains(A, 10_000) && !state.contains(A, 10_001));
    }

    #[test]
    fn dedupe_state_stays_bounded_with_gaps() {
        let mut state = State::default();
        for seq in (1..=10 * MAX_RANGES as i64).map(|i| i * 2) {
            state.apply(A, seq, 1);
        }
        assert_eq!(state.range_count(), MAX_RANGES);
        assert!(state.render().len() < 64 * MAX_RANGES);
        assert!(state.contains(A, 2) && !state.contains(A, 20 * MAX_RANGES as i64 - 1));
    }

    #[test]
    fn total_beyond_i64_is_exact() {
        let mut state = State::default();
        for seq in 1..=4 {
            state.apply(A, seq, i64::MAX);
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
    fn corrupt_text_is_refused_with_the_line() {
        for (text, needle) in [
            ("", "newline"),
            ("12x\n", "line 1"),
            ("12", "newline"),
            ("1\nledger v9\n", "line 2"),
            ("1\ntally-ledger v1\nsource nope 3\n", "line 3"),
            (
                "1\ntally-ledger v1\nsource 00000000-0000-0000-0000-000000000001 5 4-6\n",
                "line 3",
            ),
            (
                "1\ntally-ledger v1\nsource 00000000-0000-0000-0000-000000000001 5 8-9,9-12\n",
                "line 3",
            ),
        ] {
            let error = State::parse(text).unwrap_err();
            assert!(error.contains(needle), "{text:?}: {error}");
        }
    }
}
