//! The queue message: one or more outbox rows of one outbox database, as
//! JSON. Each row carries what the totaler needs to count its sum exactly
//! once (`source` + `seq`, a unique id) and to measure latency
//! (`created_us`); the message carries when it was published. The relay
//! packs the rows of a batch into messages of up to `ADDER_RELAY_PACK`
//! rows, so the broker moves one message per pack, not per Add. Decoding
//! validates; it never guesses a default for a missing field.

use std::{
    collections::HashSet,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The body of a message on the Tally queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SumMessage {
    /// Identity of the outbox database that recorded the sums, created with
    /// the outbox itself, so ids stay unique even if that database is recreated.
    pub source: Uuid,
    /// When the relay published it, microseconds since the Unix epoch.
    pub published_us: i64,
    /// The rows, at least one, each `seq` at most once.
    pub sums: Vec<Sum>,
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

/// Most rows one message may carry; a bigger body is malformed.
pub const MAX_SUMS: usize = 10_000;

/// Why a message body is not a valid [`SumMessage`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
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
        let message: Self = serde_json::from_slice(body)?;
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
        serde_json::to_vec(self).expect("a struct of plain numbers always serialises")
    }

    /// The message id, also set as the AMQP `message_id`: `<source>:<seq>`
    /// of its first row, and `+<n>` when it carries `n` more.
    pub fn id(&self) -> String {
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
            r#"{"source":"00000000-0000-0000-0000-000000000007","published_us":2,"sums":[[42,-3,1],[44,5,1]]}"#
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
    fn id_names_source_first_seq_and_how_many_more() {
        assert_eq!(sample().id(), "00000000-0000-0000-0000-000000000007:42+1");
        let mut one = sample();
        one.sums.pop();
        assert_eq!(one.id(), "00000000-0000-0000-0000-000000000007:42");
    }
}
