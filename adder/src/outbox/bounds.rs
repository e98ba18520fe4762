//! How long the adder waits on PostgreSQL, and how a connection that stops
//! answering is given up. Nothing the adder asks of the outbox may wait
//! without bound: a server that hangs, a partition that drops packets
//! without closing the connection, a row lock held by someone's open
//! transaction.
//!
//! Two sides bound each wait. The server cancels a statement after
//! `statement` (`statement_timeout`), ends a session idle inside a
//! transaction, and probes a silent client with TCP keepalives (so a
//! partitioned adder's relay lock is released within seconds, not the
//! kernel's two hours). The adder gives up a reply that has not come
//! `statement` plus [`MARGIN`] after it asked (the server cannot cancel
//! anything it cannot reach): the connection is then dropped, not returned
//! to the pool, so the pool opens a fresh one in its place.

use std::{future::Future, time::Duration};

use sqlx::postgres::PgConnectOptions;

/// What the adder waits on the server for beyond its statement timeout:
/// the cancellation's own round trip, a commit's WAL flush.
pub const MARGIN: Duration = Duration::from_secs(2);

/// Seconds of silence before the server probes the adder's connection, the
/// seconds between probes, and the probes that may go unanswered.
const KEEPALIVES: (&str, &str, &str) = ("10", "5", "3");

/// The bounds on one outbox database's waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Longest statement the server runs for the adder (`statement_timeout`;
    /// also `idle_in_transaction_session_timeout`).
    pub statement: Duration,
}

/// A wait that reached its bound: whether the server did the work is not
/// known.
#[derive(Debug, thiserror::Error)]
#[error("the outbox database did not answer within {0:?}")]
pub struct Unanswered(pub Duration);

impl Default for Bounds {
    fn default() -> Self {
        Self {
            statement: Duration::from_secs(5),
        }
    }
}

impl Bounds {
    /// How long the adder waits for any one answer.
    pub fn answer(&self) -> Duration {
        self.statement + MARGIN
    }

    /// `options` with the server-side bounds set for every session opened
    /// with them.
    pub fn apply(&self, options: PgConnectOptions) -> PgConnectOptions {
        let statement = self.statement.as_millis().max(1).to_string();
        let user_timeout = self.answer().as_millis().to_string();
        options.options([
            ("statement_timeout", statement.as_str()),
            ("idle_in_transaction_session_timeout", statement.as_str()),
            ("tcp_keepalives_idle", KEEPALIVES.0),
            ("tcp_keepalives_interval", KEEPALIVES.1),
            ("tcp_keepalives_count", KEEPALIVES.2),
            ("tcp_user_timeout", user_timeout.as_str()),
        ])
    }

    /// `work`, given up after [`Bounds::answer`].
    pub async fn within<T>(&self, work: impl Future<Output = T>) -> Result<T, Unanswered> {
        tokio::time::timeout(self.answer(), work)
            .await
            .map_err(|_| Unanswered(self.answer()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_session_gets_the_server_side_bounds() {
        let bounds = Bounds {
            statement: Duration::from_millis(1500),
        };
        let options = bounds.apply(PgConnectOptions::new());
        let set = options.get_options().unwrap_or_default();
        for expected in [
            "statement_timeout=1500",
            "idle_in_transaction_session_timeout=1500",
            "tcp_keepalives_idle=10",
            "tcp_user_timeout=3500",
        ] {
            assert!(set.contains(expected), "{expected} in {set}");
        }
    }
}
