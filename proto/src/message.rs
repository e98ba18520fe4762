//! The queue message: one part of a snapshot batch of one outbox database,
//! as JSON. Its id, `(source, batch, part)`, is what the totaler counts
//! exactly once: `batch` is dense per source and a batch is the same rows
//! every time it is published, in `parts` parts of up to `ADDER_RELAY_PACK`
//! rows. Each row carries its outbox id (`seq`), its sum and when it was
//! committed (`created_us`); the message carries when it was published.
//!
//! A message without `batch` is a *legacy* message (the format before
//! snapshot batches, still published for rows recorded before them):
//! deduplicated row by row on `(source, seq)`.
//!
//! Decoding validates, size first: it never parses a body over
//! [`MAX_BODY_BYTES`] and never guesses a default for a missing field.

use std::{
    collections::HashSet,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The body of a message on the Tally queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SumMessage {
    /// Identity of the outbox database that recorded the sums, created with
    /// the outbox itself, so ids stay unique even if that database is recreated.
    pub source: Uuid,
    /// The batch this message is a part of, `None` in a legacy message.
    pub part: Option<Part>,
    /// When the relay published it, microseconds since the Unix epoch.
    pub published_us: i64,
    /// The rows, at least one, each `seq` at most once.
    pub sums: Vec<Sum>,
}

/// Where a message sits in its batch: part `part` (from 0) of `parts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// The batch number, dense per source from 1.
    pub batch: i64,
    pub part: u32,
    pub parts: u32,
}

/// One outbox row in a message, on the wire a JSON array
/// `[seq, sum, created_us]`: a pack of rows is mostly numbers, and parsing
/// no keys makes it cheaper to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(i64, i64, i64)", into = "(i64, i64, i64)")]
pub struct Sum {
    /// The outbox row's id within `source`: positive, almost dense, increasing.
    pub seq: i64,
    /// The recorded sum, `a + b`.
    pub sum: i64,
    /// When the outbox row was committed, microseconds since the Unix epoch.
    pub created_us: i64,
}

impl From<(i64, i64, i64)> for Sum {
    fn from((seq, sum, created_us): (i64, i64, i64)) -> Self {
        Self {
            seq,
            sum,
            created_us,
        }
    }
}

impl From<Sum> for (i64, i64, i64) {
    fn from(row: Sum) -> Self {
        (row.seq, row.sum, row.created_us)
    }
}

/// The JSON shape, read: `batch`, `part` and `parts` come all three or none.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    source: Uuid,
    batch: Option<i64>,
    part: Option<u32>,
    parts: Option<u32>,
    published_us: i64,
    sums: Vec<Sum>,
}

/// The JSON shape, written (in this field order).
#[derive(Serialize)]
struct WireRef<'a> {
    source: &'a Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    part: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parts: Option<u32>,
    published_us: i64,
    sums: &'a [Sum],
}

/// Most rows one message may carry; a bigger body is malformed.
pub const MAX_SUMS: usize = 10_000;

/// Largest body decoded: [`MAX_SUMS`] rows of the widest numbers, and room to
/// spare. A bigger body is malformed without being parsed.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Most parts one batch may have.
pub const MAX_PARTS: u32 = 1_000_000;

/// Why a message body is not a valid [`SumMessage`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the body is {0} bytes, more than {MAX_BODY_BYTES}")]
    TooLarge(usize),
    #[error(
        "batch {batch} part {part} of {parts} is impossible (batch >= 1, 1 <= parts <= {MAX_PARTS}, part < parts)"
    )]
    Part { batch: i64, part: u32, parts: u32 },
    #[error("body is not a valid sum message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the message carries no sums")]
    Empty,
    #[error("the message carries {0} sums, more than {MAX_SUMS}")]
    TooMany(usize),
    #[error("seq must be positive, got {0}")]
    Seq(i64),
    #[error("seq {0} appears twice in the message")]
    Repeated(i64),
}

impl SumMessage {
    /// Parses and validates a message body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(DecodeError::TooLarge(body.len()));
        }
        let wire: Wire = serde_json::from_slice(body)?;
        let part = match (wire.batch, wire.part, wire.parts) {
            (None, None, None) => None,
            (Some(batch), Some(part), Some(parts))
                if batch >= 1 && (1..=MAX_PARTS).contains(&parts) && part < parts =>
            {
                Some(Part { batch, part, parts })
            }
            (batch, part, parts) => {
                return Err(DecodeError::Part {
                    batch: batch.unwrap_or(0),
                    part: part.unwrap_or(0),
                    parts: parts.unwrap_or(0),
                });
            }
        };
        let message = Self {
            source: wire.source,
            part,
            published_us: wire.published_us,
            sums: wire.sums,
        };
        if message.sums.is_empty() {
            return Err(DecodeError::Empty);
        }
        if message.sums.len() > MAX_SUMS {
            return Err(DecodeError::TooMany(message.sums.len()));
        }
        if let Some(bad) = message.sums.iter().find(|s| s.seq <= 0) {
            return Err(DecodeError::Seq(bad.seq));
        }
        // The relay packs rows in increasing seq order: then no seq repeats,
        // and the set below is needed only for other orders.
        if !message.sums.windows(2).all(|w| w[0].seq < w[1].seq) {
            let mut seen = HashSet::with_capacity(message.sums.len());
            if let Some(repeated) = message.sums.iter().find(|s| !seen.insert(s.seq)) {
                return Err(DecodeError::Repeated(repeated.seq));
            }
        }
        Ok(message)
    }

    /// The JSON body.
    pub fn encode(&self) -> Vec<u8> {
        let wire = WireRef {
            source: &self.source,
            batch: self.part.map(|p| p.batch),
            part: self.part.map(|p| p.part),
            parts: self.part.map(|p| p.parts),
            published_us: self.published_us,
            sums: &self.sums,
        };
        serde_json::to_vec(&wire).expect("a struct of plain numbers always serialises")
    }

    /// The message id, also set as the AMQP `message_id`:
    /// `<source>/<batch>.<part>` (a legacy message: `<source>:<seq>` of its
    /// first row, and `+<n>` when it carries `n` more).
    pub fn id(&self) -> String {
        if let Some(p) = self.part {
            return format!("{}/{}.{}", self.source, p.batch, p.part);
        }
        let first = self.sums.first().map_or(0, |s| s.seq);
        match self.sums.len() {
            0 | 1 => format!("{}:{first}", self.source),
            n => format!("{}:{first}+{}", self.source, n - 1),
        }
    }
}

/// Microseconds since the Unix epoch, the clock every timestamp in a message uses.
pub fn now_us() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> SumMessage {
        SumMessage {
            source: Uuid::from_u128(7),
            part: Some(Part {
                batch: 3,
                part: 1,
                parts: 2,
            }),
            published_us: 2,
            sums: vec![
                Sum {
                    seq: 42,
                    sum: -3,
                    created_us: 1,
                },
                Sum {
                    seq: 44,
                    sum: 5,
                    created_us: 1,
                },
            ],
        }
    }

    #[test]
    fn message_round_trips_through_json() {
        let message = sample();
        assert_eq!(SumMessage::decode(&message.encode()).unwrap(), message);
    }

    #[test]
    fn rows_are_arrays_of_seq_sum_and_created_us() {
        let body = String::from_utf8(sample().encode()).unwrap();
        assert_eq!(
            body,
            r#"{"source":"00000000-0000-0000-0000-000000000007","batch":3,"part":1,"parts":2,"published_us":2,"sums":[[42,-3,1],[44,5,1]]}"#
        );
    }

    #[test]
    fn missing_field_is_rejected() {
        let body =
            br#"{"source":"00000000-0000-0000-0000-000000000007","published_us":1,"sums":[[1,1]]}"#;
        assert!(matches!(
            SumMessage::decode(body),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn non_positive_seq_is_rejected() {
        let mut message = sample();
        message.sums[1].seq = 0;
        assert!(matches!(
            SumMessage::decode(&message.encode()),
            Err(DecodeError::Seq(0))
        ));
    }

    #[test]
    fn empty_and_repeating_messages_are_rejected() {
        let mut message = sample();
        message.sums[1].seq = 42;
        assert!(matches!(
            SumMessage::decode(&message.encode()),
            Err(DecodeError::Repeated(42))
        ));
        message.sums.push(Sum {
            seq: 7,
            sum: 1,
            created_us: 1,
        });
        message.sums[1].seq = 50;
        message.sums.push(message.sums[1]);
        assert!(
            matches!(
                SumMessage::decode(&message.encode()),
                Err(DecodeError::Repeated(50))
            ),
            "a repeat out of order is found too"
        );
        message.sums.clear();
        assert!(matches!(
            SumMessage::decode(&message.encode()),
            Err(DecodeError::Empty)
        ));
    }

    #[test]
    fn too_many_sums_are_rejected() {
        let mut message = sample();
        message.sums = (1..=MAX_SUMS as i64 + 1)
            .map(|seq| Sum {
                seq,
                sum: 1,
                created_us: 1,
            })
            .collect();
        assert!(matches!(
            SumMessage::decode(&message.encode()),
            Err(DecodeError::TooMany(_))
        ));
        message.sums.pop();
        assert!(SumMessage::decode(&message.encode()).is_ok());
    }

    #[test]
    fn id_names_source_batch_and_part() {
        assert_eq!(sample().id(), "00000000-0000-0000-0000-000000000007/3.1");
    }

    #[test]
    fn a_legacy_message_has_no_batch_and_is_named_by_its_rows() {
        let body = br#"{"source":"00000000-0000-0000-0000-000000000007","published_us":2,"sums":[[42,-3,1],[44,5,1]]}"#;
        let mut legacy = SumMessage::decode(body).unwrap();
        assert_eq!(legacy.part, None);
        assert_eq!(legacy.encode(), body.to_vec(), "encoded as before");
        assert_eq!(legacy.id(), "00000000-0000-0000-0000-000000000007:42+1");
        legacy.sums.pop();
        assert_eq!(legacy.id(), "00000000-0000-0000-0000-000000000007:42");
    }

    #[test]
    fn impossible_parts_are_rejected() {
        for (batch, part, parts) in [(0, 0, 1), (1, 1, 1), (1, 0, 0), (1, 0, MAX_PARTS + 1)] {
            let mut message = sample();
            message.part = Some(Part { batch, part, parts });
            assert!(
                matches!(
                    SumMessage::decode(&message.encode()),
                    Err(DecodeError::Part { .. })
                ),
                "{batch} {part} {parts}"
            );
        }
        let mut half = String::from_utf8(sample().encode()).unwrap();
        half = half.replace(r#""parts":2,"#, "");
        assert!(
            SumMessage::decode(half.as_bytes()).is_err(),
            "batch without parts: {half}"
        );
    }

    #[test]
    fn an_oversized_body_is_refused_before_parsing() {
        let mut body = sample().encode();
        body.truncate(body.len() - 1);
        body.resize(MAX_BODY_BYTES + 1, b' ');
        assert!(matches!(
            SumMessage::decode(&body),
            Err(DecodeError::TooLarge(_))
        ));
    }
}
