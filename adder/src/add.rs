//! The Add operation both front ends share: check the sum fits in int64,
//! commit it to an outbox database (`routing` picks which), wake that
//! database's relay. Its `Error` is what gRPC and HTTP translate to their
//! wire codes; it never exposes SQL.

use std::sync::Arc;

use crate::{
    outbox::{self, Recorded},
    routing::{self, Agreement, Outboxes},
    status::Status,
};

/// Everything an Add needs, shared by the gRPC and HTTP servers.
#[derive(Clone)]
pub struct Adder {
    /// The outbox databases; each takes Adds once it is migrated and its
    /// identity and place checked (until then its Adds are `Unavailable`).
    pub outboxes: Arc<Outboxes>,
    /// What the relay reports: whether it holds a broker channel.
    pub status: Arc<Status>,
    /// Whether traces are exported: then each row stores its Add's context.
    pub tracing: bool,
}

/// Why an Add was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{a} + {b} overflows a 64-bit signed integer")]
    Overflow { a: i64, b: i64 },
    #[error("request_id must be at most {MAX_REQUEST_ID} bytes")]
    RequestIdTooLong,
    #[error("request_id must not contain a NUL character (PostgreSQL text cannot store it)")]
    RequestIdHasNul,
    #[error("request_id {request_id:?} was already used with other numbers (a = {a}, b = {b})")]
    Conflict { request_id: String, a: i64, b: i64 },
    #[error("{0}")]
    Refused(String),
    #[error("{}", unavailable(.0))]
    Unavailable(#[source] outbox::Error),
}

/// What an Add that failed for the database tells its caller: whether it
/// may have been recorded all the same, and what retry is safe.
fn unavailable(cause: &outbox::Error) -> &'static str {
    if let outbox::Error::Misplaced(_) = cause {
        "this adder's list of outbox databases (DATABASE_URL) disagrees with the one the databases \
         record: it takes no Add with a request_id until an operator fixes it; retry on another adder"
    } else if cause.outcome_unknown() {
        "the outbox database did not confirm this Add in time: it may have been recorded; \
         a retry with the same request_id is safe (without one it may be counted twice)"
    } else {
        "the outbox database is unavailable, retry later"
    }
}

/// Longest accepted idempotency key, in bytes.
pub const MAX_REQUEST_ID: usize = 256;

impl Error {
    /// The label used in `adder_requests_total{code}`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Overflow { .. }
            | Error::RequestIdTooLong
            | Error::RequestIdHasNul
            | Error::Refused(_) => "invalid_argument",
            Error::Conflict { .. } => "already_exists",
            Error::Unavailable(_) => "unavailable",
        }
    }
}

impl Adder {
    /// Returns `a + b` once its outbox row is committed. An empty request id
    /// counts every call.
    #[tracing::instrument(skip_all, fields(a, b, replayed))]
    pub async fn add(&self, a: i64, b: i64, request_id: &str) -> Result<Recorded, Error> {
        let sum = a.checked_add(b).ok_or(Error::Overflow { a, b })?;
        check_request_id(request_id)?;
        let request_id = (!request_id.is_empty()).then_some(request_id);
        let traceparent = if self.tracing {
            otel::context::current()
        } else {
            None
        };
        let add = routing::Add {
            a,
            b,
            sum,
            request_id,
        };
        let (recorded, slot) =
            self.outboxes
                .record(add, traceparent)
                .await
                .map_err(|e| match e {
                    outbox::Error::Conflict { request_id, a, b } => {
                        Error::Conflict { request_id, a, b }
                    }
                    outbox::Error::Refused { reason } => Error::Refused(reason),
                    other => Error::Unavailable(other),
                })?;
        tracing::Span::current().record("replayed", recorded.replayed);
        if !recorded.replayed {
            slot.wake.notify_one();
        }
        Ok(recorded)
    }

    /// Whether each outbox database is open and answers, in `DATABASE_URL`
    /// order.
    pub async fn databases_up(&self) -> Vec<bool> {
        let mut up = Vec::new();
        for slot in self.outboxes.slots() {
            up.push(slot.ping().await);
        }
        up
    }

    /// Why a database refuses this adder's list of databases, if one does.
    pub fn list_refused(&self) -> Option<String> {
        self.outboxes
            .slots()
            .iter()
            .find_map(|slot| match slot.agreement() {
                Agreement::Refused(why) => Some(why),
                _ => None,
            })
    }

    /// Whether the relay currently holds a broker channel.
    pub fn broker_up(&self) -> bool {
        self.status.broker_up()
    }
}

/// Refuses, before it can join a group commit, an id the outbox cannot
/// store: one failed row would fail every Add of its group. The database is
/// UTF-8 and a Rust `str` is valid UTF-8, so NUL is the one character
/// PostgreSQL `text` rejects.
fn check_request_id(request_id: &str) -> Result<(), Error> {
    if request_id.len() > MAX_REQUEST_ID {
        return Err(Error::RequestIdTooLong);
    }
    if request_id.contains('\0') {
        return Err(Error::RequestIdHasNul);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_the_outbox_cannot_store_are_refused() {
        assert!(check_request_id("").is_ok());
        assert!(check_request_id(&"x".repeat(MAX_REQUEST_ID)).is_ok());
        assert!(check_request_id("tab\tbell\u{7}emoji\u{1F600}").is_ok());
        assert!(matches!(
            check_request_id(&"x".repeat(MAX_REQUEST_ID + 1)),
            Err(Error::RequestIdTooLong)
        ));
        assert!(matches!(
            check_request_id("a\0b"),
            Err(Error::RequestIdHasNul)
        ));
    }
}
