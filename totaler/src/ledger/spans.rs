//! A set of integers kept as sorted, disjoint, non-adjacent closed ranges:
//! the ledger's applied batches of a source, the parts applied of a batch,
//! legacy row seqs. Its size is the number of gaps, never the number of
//! members, so a source far past a gap costs one more range. Pure; no I/O.

/// Sorted, disjoint, non-adjacent closed ranges `(lo, hi)`, `lo <= hi`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spans(Vec<(i64, i64)>);

impl Spans {
    /// Every integer from `lo` to `hi` (empty when `hi < lo`).
    pub fn through(lo: i64, hi: i64) -> Self {
        if hi < lo {
            Self::default()
        } else {
            Self(vec![(lo, hi)])
        }
    }

    pub fn contains(&self, n: i64) -> bool {
        let at = self.0.partition_point(|&(_, hi)| hi < n);
        self.0.get(at).is_some_and(|&(lo, _)| lo <= n)
    }

    /// Records `n`; false if it was in already.
    pub fn insert(&mut self, n: i64) -> bool {
        let at = self.0.partition_point(|&(_, hi)| hi < n);
        if self.0.get(at).is_some_and(|&(lo, _)| lo <= n) {
            return false;
        }
        let joins_previous = at > 0 && self.0[at - 1].1 + 1 == n;
        let joins_next = self.0.get(at).is_some_and(|&(lo, _)| lo == n + 1);
        match (joins_previous, joins_next) {
            (true, true) => {
                self.0[at - 1].1 = self.0[at].1;
                self.0.remove(at);
            }
            (true, false) => self.0[at - 1].1 = n,
            (false, true) => self.0[at].0 = n,
            (false, false) => self.0.insert(at, (n, n)),
        }
        true
    }

    /// Records every integer of `lo..=hi` (a range of a parsed file).
    pub fn insert_range(&mut self, lo: i64, hi: i64) {
        // Few ranges per set: insert, then join what touches or overlaps.
        let at = self.0.partition_point(|&(l, _)| l < lo);
        self.0.insert(at, (lo, hi));
        let mut joined: Vec<(i64, i64)> = Vec::with_capacity(self.0.len());
        for &(lo, hi) in &self.0 {
            match joined.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => joined.push((lo, hi)),
            }
        }
        self.0 = joined;
    }

    /// Whether every integer of `lo..=hi` is in.
    pub fn covers(&self, lo: i64, hi: i64) -> bool {
        let at = self.0.partition_point(|&(_, h)| h < lo);
        self.0.get(at).is_some_and(|&(l, h)| l <= lo && hi <= h)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ranges, lowest first.
    pub fn ranges(&self) -> &[(i64, i64)] {
        &self.0
    }

    /// The highest member.
    pub fn last(&self) -> Option<i64> {
        self.0.last().map(|&(_, hi)| hi)
    }

    /// `lo-hi,lo-hi`, or `-` when empty.
    pub fn render(&self) -> String {
        if self.0.is_empty() {
            return "-".to_owned();
        }
        self.0
            .iter()
            .map(|(lo, hi)| format!("{lo}-{hi}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// What [`Spans::render`] writes, every member at least `min`; the
    /// ranges must be ascending, disjoint and not adjacent, as rendered.
    pub fn parse(text: &str, min: i64) -> Result<Self, String> {
        if text == "-" {
            return Ok(Self::default());
        }
        let mut spans = Vec::new();
        let mut floor = min;
        for range in text.split(',') {
            let (lo, hi) = parse_range(range)?;
            if lo < floor {
                return Err(format!(
                    "range {lo}-{hi} is below {min}, or not above the previous range with a gap"
                ));
            }
            spans.push((lo, hi));
            floor = hi.saturating_add(2);
        }
        Ok(Self(spans))
    }
}

/// `lo-hi` with `lo <= hi`.
pub fn parse_range(text: &str) -> Result<(i64, i64), String> {
    let bad = || format!("bad range {:?}", text.chars().take(40).collect::<String>());
    let (lo, hi) = text.split_once('-').ok_or_else(bad)?;
    match (lo.parse::<i64>(), hi.parse::<i64>()) {
        (Ok(lo), Ok(hi)) if lo <= hi => Ok((lo, hi)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn inserts_join_neighbours_and_repeats_are_refused() {
        let mut spans = Spans::default();
        for n in [5, 1, 3, 2, 9, 4, 7] {
            assert!(spans.insert(n), "{n}");
        }
        assert!(!spans.insert(3));
        assert_eq!(spans.ranges(), [(1, 5), (7, 7), (9, 9)]);
        assert!(spans.insert(8));
        assert_eq!(spans.ranges(), [(1, 5), (7, 9)]);
        assert!(spans.contains(8) && !spans.contains(6) && !spans.contains(10));
        assert!(spans.covers(7, 9) && !spans.covers(5, 7));
        assert_eq!(spans.last(), Some(9));
    }

    #[test]
    fn a_million_members_past_a_gap_are_two_ranges() {
        let mut spans = Spans::through(1, 1);
        for n in 3..=1_000_002 {
            spans.insert(n);
        }
        assert_eq!(spans.render(), "1-1,3-1000002");
        assert_eq!(Spans::parse(&spans.render(), 1).unwrap(), spans);
    }

    #[test]
    fn ranges_of_a_file_are_merged_and_bad_text_refused() {
        let mut spans = Spans::parse("2-4,9-9", 1).unwrap();
        spans.insert_range(5, 7);
        spans.insert_range(1, 1);
        assert_eq!(spans.ranges(), [(1, 7), (9, 9)]);
        assert_eq!(Spans::parse("-", 1).unwrap(), Spans::default());
        for bad in ["", "0-3", "3-1", "1-3,4-5", "1-3,2-9", "x", "1-3,"] {
            assert!(Spans::parse(bad, 1).is_err(), "{bad:?}");
        }
    }
}
