//! The queue message: one outbox row, as JSON. It carries what the totaler
//! needs to count the sum exactly once (`source` + `seq`, a unique id) and to
//! measure latency (`created_us`, `published_us`). Decoding validates; it
//! never guesses a default for a missing field.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The body of a message on the Tally queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SumMessage {
    /// Identity of the outbox database that recorded the sum, created with the
    /// outbox itself, so ids stay unique even if that database is recreated.
    pub source: Uuid,
    /// The outbox row's id within `source`: positive, almost dense, increasing.
    pub seq: i64,
    /// The recorded sum, `a + b`.
    pub sum: i64,
    /// When the outbox row was committed, microseconds since the Unix epoch.
    pub created_us: i64,
    /// When the relay published it, microseconds since the Unix epoch.
    pub published_us: i64,
}

/// Why a message body is not a valid [`SumMessage`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("body is not a valid sum message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("seq must be positive, got {0}")]
    Seq(i64),
}

impl SumMessage {
    /// Parses and validates a message body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let message: Self = serde_json::from_slice(body)?;
        if message.seq <= 0 {
            return Err(DecodeError::Seq(message.seq));
        }
        Ok(message)
    }

    /// The JSON body.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a struct of plain numbers always serialises")
    }

    /// The unique message id, `<source>:<seq>`, also set as the AMQP `message_id`.
    pub fn id(&self) -> String {
        format!("{}:{}", self.source, self.seq)
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
            seq: 42,
            sum: -3,
            created_us: 1,
            published_us: 2,
        }
    }

    #[test]
    fn message_round_trips_through_json() {
        let message = sample();
        assert_eq!(SumMessage::decode(&message.encode()).unwrap(), message);
    }

    #[test]
    fn missing_field_is_rejected() {
        let body =
            br#"{"source":"00000000-0000-0000-0000-000000000007","seq":1,"sum":1,"created_us":1}"#;
        assert!(matches!(
            SumMessage::decode(body),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn non_positive_seq_is_rejected() {
        let message = SumMessage { seq: 0, ..sample() };
        assert!(matches!(
            SumMessage::decode(&message.encode()),
            Err(DecodeError::Seq(0))
        ));
    }

    #[test]
    fn id_names_source_and_seq() {
        assert_eq!(sample().id(), "00000000-0000-0000-0000-000000000007:42");
    }
}
