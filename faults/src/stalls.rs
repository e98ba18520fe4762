//! The faults that only time and size bring: a broker outage long enough
//! to leave a large backlog in the outbox (it must drain, at a rate the
//! report prints), a transaction held open in another database of the
//! server for the rest of the run (it pins every snapshot's xmin), gRPC
//! sockets that never speak (the adder must close them), and a PostgreSQL
//! that stops answering without closing its connections (the proxy between
//! the adders and the server holds its replies past the adders' bounds).

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use tokio::{io::AsyncReadExt, net::TcpStream};

use crate::{
    outbox,
    stack::{HANDSHAKE_TIMEOUT, Stack},
};

/// Rows of the backlog inserted per transaction (as many Adds would have
/// committed while the broker was down).
const BACKLOG_CHUNK: u64 = 20_000;
/// Silent gRPC sockets opened at once.
const SILENT_SOCKETS: usize = 64;
impl Stack {
    /// Stops the broker, commits `Options::backlog_rows` rows to the outbox
    /// meanwhile (each acknowledged: a committed row must be counted), starts
    /// it again and times the drain until what was pending before is gone.
    pub(crate) async fn broker_outage_backlog(&mut self) -> anyhow::Result<()> {
        let url = self.postgres.url();
        tokio::task::block_in_place(|| self.rabbit.stop());
        self.counts.broker_stops += 1;
        let rows = self.options.backlog_rows;
        let salt = self.rng.range(1, 1_000_000) as i64;
        let (inserted, sum) = insert_backlog(&url, rows, salt).await?;
        self.tally.add_backlog(sum);
        self.counts.backlog_rows += inserted;
        let pending = outbox::reconcile(&url).await?.unpublished;
        self.rabbit.start_node().await?;
        let started = Instant::now();
        let drained = self.drain_below(&url, pending - inserted as i64).await?;
        let rate = inserted as f64 / started.elapsed().as_secs_f64();
        eprintln!(
            "faults:          a backlog of {pending} rows ({inserted} left by the outage) drained in {:.1?}: {rate:.0} rows/s",
            started.elapsed()
        );
        if !drained {
            self.fail(format!(
                "a backlog of {inserted} rows left by a broker outage did not drain within {:?}",
                self.drain_limit()
            ));
        }
        self.counts.backlogs_drained.push((inserted, rate));
        Ok(())
    }

    /// Holds a transaction id open in another database of the server until
    /// the load stops; a second one while it is held is not needed.
    pub(crate) async fn transaction_elsewhere(&mut self) -> anyhow::Result<()> {
        if self.held_elsewhere.is_some() {
            return Ok(());
        }
        let mut admin = PgConnection::connect(&self.postgres.url()).await?;
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'elsewhere')",
        )
        .fetch_one(&mut admin)
        .await?;
        if !exists {
            sqlx::query("CREATE DATABASE elsewhere")
                .execute(&mut admin)
                .await?;
        }
        let _ = admin.close().await;
        let mut connection = PgConnection::connect(&self.postgres.url_of("elsewhere")).await?;
        sqlx::query("BEGIN").execute(&mut connection).await?;
        let xid: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
            .fetch_one(&mut connection)
            .await?;
        eprintln!(
            "faults:          transaction {xid} open in database elsewhere until the load stops"
        );
        self.held_elsewhere = Some(connection);
        self.counts.transactions_elsewhere += 1;
        Ok(())
    }

    /// Ends the transaction `transaction_elsewhere` holds, if any.
    pub async fn release_elsewhere(&mut self) {
        if let Some(connection) = self.held_elsewhere.take() {
            let _ = connection.close().await;
        }
    }

    /// Opens sockets to both adders' gRPC that send nothing; each must be
    /// closed by the adder soon after its handshake timeout.
    pub(crate) async fn silent_grpc_sockets(&mut self) -> anyhow::Result<()> {
        let mut sockets = Vec::with_capacity(SILENT_SOCKETS);
        for i in 0..SILENT_SOCKETS {
            let port = if i % 2 == 0 {
                self.grpc
            } else {
                self.second_grpc
            };
            if let Ok(socket) = TcpStream::connect(("127.0.0.1", port)).await {
                sockets.push(socket);
            }
        }
        let deadline = HANDSHAKE_TIMEOUT + Duration::from_secs(5);
        let until = tokio::time::Instant::now() + deadline;
        let mut closed = 0;
        for socket in &mut sockets {
            if tokio::time::timeout_at(until, closed_by_peer(socket))
                .await
                .is_ok()
            {
                closed += 1;
            }
        }
        self.counts.silent_sockets += sockets.len();
        self.counts.silent_sockets_closed += closed;
        if closed < sockets.len() {
            self.fail(format!(
                "{} of {} silent gRPC sockets were still open {deadline:?} after they connected",
                sockets.len() - closed,
                sockets.len()
            ));
        }
        Ok(())
    }

    /// Holds every reply PostgreSQL sends the adders (the connections stay
    /// open) for longer than their bounds, then lets them through: the
    /// adders must give the silent connections up and answer again.
    pub(crate) async fn silent_postgres(&mut self) -> anyhow::Result<()> {
        self.pg_proxy.hold_replies();
        self.counts.silent_postgres += 1;
        self.pause(7_000, 9_000).await;
        self.pg_proxy.release_replies();
        let recovered = Self::ready(self.adder.http, Duration::from_secs(30)).await;
        if !recovered {
            self.fail("an adder was not ready 30 s after PostgreSQL answered again".to_owned());
        }
        Ok(())
    }

    /// How long a backlog may take to drain before the run fails.
    fn drain_limit(&self) -> Duration {
        Duration::from_secs(self.options.settle_seconds)
    }

    /// Waits until the outbox's unpublished rows are at most `target`
    /// (what the load adds meanwhile aside); false past the drain limit.
    async fn drain_below(&mut self, url: &str, target: i64) -> anyhow::Result<bool> {
        let deadline = Instant::now() + self.drain_limit();
        let mut connection = PgConnection::connect(url).await?;
        while Instant::now() < deadline {
            let unpublished = outbox::unpublished(&mut connection).await?;
            if unpublished <= target.max(0) + 2_000 {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(false)
    }
}

/// Resolves when the peer closes `socket`, reading (and dropping) what it
/// sends first (a gRPC server's SETTINGS frame).
async fn closed_by_peer(socket: &mut TcpStream) {
    let mut buffer = [0u8; 256];
    while let Ok(n) = socket.read(&mut buffer).await {
        if n == 0 {
            return;
        }
    }
}

/// Commits `rows` rows in transactions of [`BACKLOG_CHUNK`], each a small
/// sum of its own (`salt` varies them from run to run, so a row lost or
/// counted twice shows in the total); returns the rows and their sum.
async fn insert_backlog(url: &str, rows: u64, salt: i64) -> anyhow::Result<(u64, i128)> {
    let mut connection = PgConnection::connect(url).await?;
    let (mut inserted, mut total) = (0u64, 0i128);
    while inserted < rows {
        let chunk = BACKLOG_CHUNK.min(rows - inserted) as i64;
        let (count, sum): (i64, String) = sqlx::query_as(
            "WITH added AS ( \
               INSERT INTO outbox (a, b, sum) \
               SELECT v, 0, v FROM (SELECT ((g * 7919 + $2) % 2001) - 1000 AS v \
                                    FROM generate_series(1, $1) g) s \
               RETURNING sum) \
             SELECT count(*), coalesce(sum(sum), 0)::text FROM added",
        )
        .bind(chunk)
        .bind(salt + inserted as i64)
        .fetch_one(&mut connection)
        .await?;
        inserted += count as u64;
        total += sum.parse::<i128>()?;
    }
    Ok((inserted, total))
}
