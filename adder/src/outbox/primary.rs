//! Which server of the outbox database the adder uses: only a writable
//! primary. `DATABASE_URL` may name several servers (libpq's multi-host
//! form, split by `proto::outbox::Servers`); every connection the pool or
//! the relay opens is checked (`IS_PRIMARY`) and refused on a standby, and
//! with more than one server a follower task keeps the pool pointed at the
//! primary: every [`CHECK`] it asks the current one, on a connection of its
//! own, whether it still is; when it is not (or does not answer) it tries
//! each server in the given order and points the pool at the first primary.
//! Connections to a lost primary fail and leave the pool; new ones go to
//! the new primary. This module picks servers; it never writes.

use std::{io, str::FromStr, time::Duration};

use sqlx::{Connection, PgConnection, PgPool, postgres::PgConnectOptions};
use tokio::{sync::watch, task::JoinHandle};

use super::{Bounds, Error};

/// How often the follower asks whether the pool's server is still primary.
pub const CHECK: Duration = Duration::from_millis(250);
/// How long one server may take to accept a connection and answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The servers of the outbox database, in the order `DATABASE_URL` gave.
#[derive(Clone, Debug)]
pub struct Servers {
    candidates: Vec<PgConnectOptions>,
}

/// The follower task; dropping it (with the last `Outbox`) stops it.
pub struct Follower(JoinHandle<()>);

/// The follower's announcements: the count of moves to another server.
pub type Moves = watch::Receiver<u64>;

/// Resolves at the next move to another server after the call (never,
/// without a follower: one server).
pub async fn moved(moves: Option<&Moves>) {
    match moves {
        Some(moves) => {
            let mut moves = moves.clone();
            moves.borrow_and_update();
            if moves.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// A server that answered but is a standby.
#[derive(Debug, thiserror::Error)]
#[error("the server is a standby (in recovery), not the writable primary")]
pub struct NotPrimary;

impl Servers {
    /// Parses `url`: one server, or several in libpq's multi-host form. A
    /// `target_session_attrs` other than `read-write` or `primary` is
    /// refused: the adder writes, so it always needs the primary.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let servers = proto::outbox::Servers::parse(url);
        if let Some(attrs) = &servers.target_session_attrs
            && !matches!(attrs.as_str(), "read-write" | "primary")
        {
            return Err(Error::Config(format!(
                "target_session_attrs={attrs} in DATABASE_URL: the adder writes, it needs read-write (the primary)"
            )));
        }
        let candidates = servers
            .urls
            .iter()
            .map(|url| PgConnectOptions::from_str(url))
            .collect::<Result<_, _>>()?;
        Ok(Self { candidates })
    }

    /// The same servers, every session opened to them bounded by `bounds`.
    pub fn bounded(&self, bounds: &Bounds) -> Self {
        Self {
            candidates: self
                .candidates
                .iter()
                .map(|options| bounds.apply(options.clone()))
                .collect(),
        }
    }

    /// This list's options for the server `options` names (the first, if
    /// none matches).
    pub fn same_server(&self, options: &PgConnectOptions) -> PgConnectOptions {
        let server = (options.get_host(), options.get_port());
        self.candidates
            .iter()
            .find(|c| (c.get_host(), c.get_port()) == server)
            .cloned()
            .unwrap_or_else(|| self.first())
    }

    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    /// The first server named.
    pub fn first(&self) -> PgConnectOptions {
        self.candidates
            .first()
            .cloned()
            .expect("a URL always names at least one server")
    }

    /// The first server, in order, that is a writable primary.
    pub async fn find_primary(&self) -> Result<PgConnectOptions, Error> {
        let (options, connection) = find(self).await.ok_or(Error::NoPrimary)?;
        let _ = connection.close().await;
        Ok(options)
    }
}

/// Fails unless `connection` is to a writable primary; the pool's
/// `after_connect`, so no pooled connection is ever to a standby.
pub async fn require(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    let primary: bool = sqlx::query_scalar(proto::outbox::IS_PRIMARY)
        .fetch_one(connection)
        .await?;
    if primary {
        Ok(())
    } else {
        Err(sqlx::Error::Io(io::Error::other(NotPrimary)))
    }
}

/// A connection of its own to the server `options` names, only if it is
/// the writable primary.
pub async fn connect(options: &PgConnectOptions) -> Result<PgConnection, sqlx::Error> {
    let mut connection = PgConnection::connect_with(options).await?;
    require(&mut connection).await?;
    Ok(connection)
}

/// [`connect`], bounded by [`CONNECT_TIMEOUT`] (a hung server accepts the
/// TCP connection and then says nothing).
pub async fn connect_within(options: &PgConnectOptions) -> Result<PgConnection, sqlx::Error> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect(options))
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)?
}

/// Starts the follower of `pool` (see the module docs), and what it
/// announces.
pub fn follow(pool: PgPool, servers: Servers) -> (Follower, Moves) {
    let (moves, announced) = watch::channel(0);
    (Follower(tokio::spawn(run(pool, servers, moves))), announced)
}

async fn run(pool: PgPool, servers: Servers, moves: watch::Sender<u64>) {
    let mut watch: Option<PgConnection> = None;
    let mut lost = false;
    loop {
        tokio::time::sleep(CHECK).await;
        if let Some(connection) = watch.as_mut()
            && matches!(
                tokio::time::timeout(CONNECT_TIMEOUT, require(connection)).await,
                Ok(Ok(()))
            )
        {
            continue;
        }
        watch = None;
        match find(&servers).await {
            Some((options, connection)) => {
                let current = pool.connect_options();
                if (current.get_host(), current.get_port())
                    != (options.get_host(), options.get_port())
                {
                    tracing::warn!(
                        host = options.get_host(),
                        port = options.get_port(),
                        "the outbox database has a new primary; new connections go to it"
                    );
                    pool.set_connect_options(options);
                    moves.send_modify(|count| *count += 1);
                } else if lost {
                    tracing::info!("the outbox database's primary answers again");
                }
                lost = false;
                watch = Some(connection);
            }
            None if !lost => {
                lost = true;
                tracing::warn!("no server of the outbox database is a writable primary; retrying");
            }
            None => {}
        }
    }
}

/// The first primary in order, and a connection to it.
async fn find(servers: &Servers) -> Option<(PgConnectOptions, PgConnection)> {
    for options in &servers.candidates {
        if let Ok(connection) = connect_within(options).await {
            return Some((options.clone(), connection));
        }
    }
    None
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.abort();
    }
}
