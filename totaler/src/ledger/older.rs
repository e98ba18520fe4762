//! The ledger formats before version 3, read only: the file layer writes
//! version 3 at the next change. Version 2 kept per source a horizon (every
//! batch up to it applied) and every batch above it with parts applied, and
//! legacy rows as a horizon plus ranges; version 1 (`tally-ledger v1`) kept
//! only rows, deduplicated by seq, which become legacy rows. Both become
//! ranges here; nothing is lost or widened.

use std::collections::BTreeMap;

use super::{
    spans::{Spans, parse_range},
    state::{State, VERSION, clip, parse_partial, parse_uuid},
};

/// Version 2: a horizon plus batches in flight.
pub const VERSION_2: &str = "tally-ledger v2";
/// The format before snapshot batches.
pub const VERSION_1: &str = "tally-ledger v1";

/// The version a header line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
    V3,
}

impl Version {
    /// The version of line 2; a newer or unknown one is refused, naming it.
    pub fn of(header: &str) -> Result<Self, String> {
        if header == VERSION_1 {
            return Ok(Self::V1);
        }
        let mut words = header.split(' ');
        let named = format!(
            "{} {}",
            words.next().unwrap_or_default(),
            words.next().unwrap_or_default()
        );
        match named.as_str() {
            VERSION => Ok(Self::V3),
            VERSION_2 => Ok(Self::V2),
            _ => Err(format!(
                "expected {VERSION:?} (or {VERSION_2:?}, {VERSION_1:?}), found {:?}: a ledger of another version{}",
                clip(header),
                if named.starts_with("tally-ledger v") {
                    ", written by a newer Tally? Upgrade this totaler"
                } else {
                    ""
                }
            )),
        }
    }
}

/// A version 2 line: `source <uuid> <horizon> [<batch>/<parts>:<ranges>]...`
/// or `legacy <uuid> <horizon> [<lo>-<hi>,...]`.
pub fn parse_v2_line(state: &mut State, line: &str) -> Result<(), String> {
    let mut fields = line.split(' ');
    match fields.next() {
        Some("source") => {
            let source = parse_uuid(fields.next())?;
            let horizon = parse_horizon(fields.next())?;
            let mut applied = Spans::through(1, horizon);
            let mut partial = BTreeMap::new();
            for token in fields {
                let (batch, entry) = parse_partial(token)?;
                if batch <= horizon || partial.contains_key(&batch) || applied.contains(batch) {
                    return Err(format!(
                        "batch {batch} is at or below the horizon, or twice"
                    ));
                }
                if entry.applied.covers(0, i64::from(entry.parts) - 1) {
                    applied.insert(batch);
                } else {
                    partial.insert(batch, entry);
                }
            }
            state.set_batches(source, applied, partial)
        }
        Some("legacy") => {
            let source = parse_uuid(fields.next())?;
            let rows = parse_horizon_and_ranges(&mut fields)?;
            state.add_legacy(source, rows)
        }
        _ => Err(format!(
            "expected a `source` or `legacy` line, found {:?}",
            clip(line)
        )),
    }
}

/// A version 1 `source <uuid> <horizon> [ranges]` line: legacy rows.
pub fn parse_v1_line(state: &mut State, line: &str) -> Result<(), String> {
    let mut fields = line.split(' ');
    if fields.next() != Some("source") {
        return Err(format!("expected a `source` line, found {:?}", clip(line)));
    }
    let source = parse_uuid(fields.next())?;
    let rows = parse_horizon_and_ranges(&mut fields)?;
    state.add_legacy(source, rows)
}

/// `<horizon> [<lo>-<hi>,...]`: every seq up to the horizon, plus ranges
/// above it, ascending and apart from it and from each other.
fn parse_horizon_and_ranges<'a>(
    fields: &mut impl Iterator<Item = &'a str>,
) -> Result<Spans, String> {
    let horizon = parse_horizon(fields.next())?;
    let mut rows = Spans::through(1, horizon);
    let mut floor = horizon + 1;
    if let Some(list) = fields.next() {
        for text in list.split(',') {
            let (lo, hi) = parse_range(text)?;
            if lo <= floor {
                return Err(format!(
                    "range {lo}-{hi} is not above the horizon or the previous range"
                ));
            }
            rows.insert_range(lo, hi);
            floor = hi + 1;
        }
    }
    if fields.next().is_some() {
        return Err("unexpected text after the ranges".into());
    }
    Ok(rows)
}

fn parse_horizon(field: Option<&str>) -> Result<i64, String> {
    field
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|h| *h >= 0)
        .ok_or_else(|| "expected a non-negative horizon".to_owned())
}
