//! Group commit: Adds queue for a few writer tasks, and a free writer takes
//! everything queued (up to `GROUP_MAX_ROWS`) and inserts it with one
//! multi-row INSERT, one commit. Each caller is answered only after that
//! statement, and so its row, is committed. With a light load a writer is
//! free and an Add commits alone, as it would without grouping.
//!
//! Commits overlap only when they are full enough to be worth it: a writer
//! whose group has fewer than `GROUP_OVERLAP_ROWS` Adds while another
//! writer's commit is in flight waits for that commit to end, gathering what
//! queues meanwhile. Small commits side by side cost PostgreSQL about three
//! times as much per row as the same rows in fewer, larger commits (their
//! backends contend for the same rightmost index pages and WAL insertion);
//! see BENCHMARKS.md. The other writers are there for when groups are full.
//!
//! Request ids are resolved per group: one lookup of every id in the group
//! first (a retry is answered from its row and burns no sequence value), then
//! the INSERT skips ids another adder inserted meanwhile (`ON CONFLICT DO
//! NOTHING`), and those are looked up after it. An id repeated within one
//! group is inserted once; its repeats are answered from that row.
//!
//! A writer waiting on a primary that the adder has since left (a hung
//! server: nothing fails, nothing answers) gives its group up with
//! `Error::Moved` and goes on with the next group on the new primary.
//!
//! A group that could not get a connection (the pool timed out or is
//! closed) sent nothing: its Adds get `Error::Unreached`.
//!
//! No wait is unbounded (`bounds`). A small group waits for the commit in
//! flight at most about one commit's time (twice the recent average, 1 to
//! 100 ms), so one commit that hangs (a row lock held by someone's open
//! transaction, a server that stopped answering) does not hold every other
//! Add back. A group whose answer has not come within `Bounds::answer` is
//! given up: its Adds get `Error::Unanswered` (they may have been
//! recorded), and its connection is dropped rather than returned to the
//! pool. An Add whose caller has gone (a client deadline, a cancelled
//! call) before its group starts is not written at all.
//!
//! One caller's data never fails another: a group whose statement PostgreSQL
//! refuses for its data (an SQLSTATE of class 22 or 23) is retried row by
//! row, so only the offending Add fails, with `Error::Refused`. A group whose
//! INSERT committed is never reported as failed: if the lookup of ids that
//! raced another adder fails afterwards, only those Adds (which wrote
//! nothing) get the error.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{PgConnection, PgPool};
use tokio::sync::{Mutex, mpsc, oneshot, watch};

use super::{Bounds, Error, Recorded, Unanswered, primary};

/// An Add waiting for a group commit.
pub(super) struct Queued {
    pub a: i64,
    pub b: i64,
    pub sum: i64,
    pub request_id: Option<String>,
    /// The Add's trace context, only while tracing is on.
    pub traceparent: Option<String>,
    pub committed: oneshot::Sender<Result<Recorded, Error>>,
}

/// An existing row found by its request id: `(id, a, b, sum)`.
type Found = (i64, i64, i64, i64);

/// Most Adds one group commit inserts.
const GROUP_MAX_ROWS: usize = 1000;
/// Adds that may wait for a writer before `record` waits to queue.
const GROUP_QUEUE: usize = 16 * GROUP_MAX_ROWS;
/// Fewest Adds a group commits with while another group's commit is in
/// flight; a smaller group waits for that commit to end first.
const GROUP_OVERLAP_ROWS: usize = 100;
/// Shortest and longest a small group waits for the commit in flight.
const GATE_WAIT: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(100));

/// The group's INSERT, rows in `to_insert` order (`n`), skipping request
/// ids that exist by now.
const INSERT: &str = "INSERT INTO outbox (a, b, sum, request_id) \
    SELECT a, b, sum, r FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[]) \
    WITH ORDINALITY AS t(a, b, sum, r, n) ORDER BY n \
    ON CONFLICT (request_id) WHERE request_id IS NOT NULL DO NOTHING RETURNING id, request_id";
/// [`INSERT`] with each row's trace context (tracing on).
const INSERT_TRACED: &str = "INSERT INTO outbox (a, b, sum, request_id, traceparent) \
    SELECT a, b, sum, r, tp FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[]) \
    WITH ORDINALITY AS t(a, b, sum, r, tp, n) ORDER BY n \
    ON CONFLICT (request_id) WHERE request_id IS NOT NULL DO NOTHING RETURNING id, request_id";

/// Starts the group-commit writers; they stop when every `Outbox` clone
/// (every sender) is gone and the queue is empty.
pub(super) fn spawn_writers(
    pool: &PgPool,
    writers: usize,
    moves: Option<primary::Moves>,
    bounds: Bounds,
) -> mpsc::Sender<Queued> {
    let (sender, receiver) = mpsc::channel(GROUP_QUEUE);
    let receiver = Arc::new(Mutex::new(receiver));
    let gate = Arc::new(Gate::default());
    for _ in 0..writers {
        let writer = Writer {
            pool: pool.clone(),
            gate: gate.clone(),
            moves: moves.clone(),
            bounds,
        };
        tokio::spawn(writer.write_groups(receiver.clone()));
    }
    sender
}

/// What one writer works with.
struct Writer {
    pool: PgPool,
    gate: Arc<Gate>,
    moves: Option<primary::Moves>,
    bounds: Bounds,
}

/// What the writers share: the commits in flight, and how long a commit
/// has taken lately.
#[derive(Default)]
struct Gate {
    committing: watch::Sender<usize>,
    /// A moving average of the commits that were answered, in microseconds.
    recent_us: AtomicU64,
}

/// One group commit in flight, counted in the writers' shared `committing`
/// until it is dropped (answered, given up or cancelled).
struct Committing {
    gate: Arc<Gate>,
    started: Instant,
}

impl Gate {
    /// How long a small group waits for the commit in flight: about one
    /// commit's time (twice the recent average), within [`GATE_WAIT`].
    fn wait(&self) -> Duration {
        let recent = Duration::from_micros(self.recent_us.load(Ordering::Relaxed));
        (2 * recent).clamp(GATE_WAIT.0, GATE_WAIT.1)
    }

    fn answered(&self, took: Duration) {
        let took = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let recent = self.recent_us.load(Ordering::Relaxed);
        let average = if recent == 0 {
            took
        } else {
            (recent * 7 + took) / 8
        };
        self.recent_us.store(average, Ordering::Relaxed);
    }
}

impl Committing {
    fn start(gate: &Arc<Gate>) -> Committing {
        gate.committing.send_modify(|n| *n += 1);
        Committing {
            gate: gate.clone(),
            started: Instant::now(),
        }
    }

    /// The commit was answered: its time joins the average.
    fn answered(self) {
        self.gate.answered(self.started.elapsed());
    }
}

impl Drop for Committing {
    fn drop(&mut self) {
        self.gate.committing.send_modify(|n| *n -= 1);
    }
}

impl Writer {
    /// Takes everything queued (one Add at least, and while another commit
    /// is in flight, what queues until it ends, the gate's wait passes or
    /// the group has `GROUP_OVERLAP_ROWS`), drops the Adds whose callers
    /// left, commits the rest as one statement, answers each caller,
    /// repeats; gives a group up when the adder moves to a new primary
    /// before the old one answered.
    async fn write_groups(self, queue: Arc<Mutex<mpsc::Receiver<Queued>>>) {
        let mut group = Vec::with_capacity(GROUP_MAX_ROWS);
        loop {
            {
                let mut queue = queue.lock().await;
                if queue.recv_many(&mut group, GROUP_MAX_ROWS).await == 0 {
                    return;
                }
                gather(&mut queue, &mut group, &self.gate).await;
            }
            group.retain(|queued| !queued.committed.is_closed());
            if group.is_empty() {
                continue;
            }
            let committing = Committing::start(&self.gate);
            let answers = tokio::select! {
                answers = self.answer_group(&group) => answers,
                () = primary::moved(self.moves.as_ref()) => {
                    tracing::warn!(adds = group.len(), "the outbox moved to a new primary before the old one answered a group commit; its Adds get UNAVAILABLE");
                    group.iter().map(|_| Err(Error::Moved)).collect()
                }
            };
            if answers.iter().any(|a| a.is_ok()) {
                committing.answered();
            }
            for (queued, answer) in group.drain(..).zip(answers) {
                let _ = queued.committed.send(answer);
            }
        }
    }

    /// Commits `group` on a connection of its own and answers each of its
    /// Adds, in order; gives the connection up (not back to the pool) when
    /// the database does not answer within the bound.
    async fn answer_group(&self, group: &[Queued]) -> Vec<Result<Recorded, Error>> {
        let mut connection = match self.pool.acquire().await {
            Ok(connection) => connection,
            Err(e) => {
                let e = Arc::new(e);
                return group
                    .iter()
                    .map(|_| Err(Error::Unreached(e.clone())))
                    .collect();
            }
        };
        match self.bounds.within(answer_on(&mut connection, group)).await {
            Ok(answers) => answers,
            Err(Unanswered(waited)) => {
                drop(connection.detach());
                tracing::warn!(
                    adds = group.len(),
                    ?waited,
                    "a group commit got no answer in time; its connection is dropped and its Adds get UNAVAILABLE (they may have been recorded)"
                );
                group
                    .iter()
                    .map(|_| Err(Error::Unanswered(Unanswered(waited))))
                    .collect()
            }
        }
    }
}

/// While another commit is in flight, `group` is smaller than
/// `GROUP_OVERLAP_ROWS` and the gate's wait has not passed, adds what
/// queues until that commit ends; then whatever is queued, up to
/// `GROUP_MAX_ROWS`.
async fn gather(queue: &mut mpsc::Receiver<Queued>, group: &mut Vec<Queued>, gate: &Gate) {
    let mut commits = gate.committing.subscribe();
    let waited = tokio::time::sleep(gate.wait());
    tokio::pin!(waited);
    while group.len() < GROUP_OVERLAP_ROWS {
        let room = GROUP_OVERLAP_ROWS - group.len();
        tokio::select! {
            biased;
            _ = commits.wait_for(|n| *n == 0) => break,
            () = &mut waited => break,
            taken = queue.recv_many(group, room) => if taken == 0 { break },
        }
    }
    while group.len() < GROUP_MAX_ROWS {
        match queue.try_recv() {
            Ok(queued) => group.push(queued),
            Err(_) => break,
        }
    }
}

/// Commits `group` on `connection` and answers each of its Adds, in order.
async fn answer_on(
    connection: &mut PgConnection,
    group: &[Queued],
) -> Vec<Result<Recorded, Error>> {
    match commit_group(connection, group).await {
        Err(e) if group.len() > 1 && is_data_error(&e) => {
            tracing::warn!(error = %e, adds = group.len(), "a group commit was refused for its data; retrying its Adds one by one");
            one_by_one(connection, group).await
        }
        Err(e) if is_data_error(&e) => vec![Err(refused(&e))],
        Err(e) => {
            let e = Arc::new(e);
            group.iter().map(|_| Err(Error::Group(e.clone()))).collect()
        }
        Ok(answers) => answers,
    }
}

/// Commits each Add of `group` on its own, so only an Add whose own data
/// PostgreSQL refuses fails.
async fn one_by_one(
    connection: &mut PgConnection,
    group: &[Queued],
) -> Vec<Result<Recorded, Error>> {
    let mut answers = Vec::with_capacity(group.len());
    for queued in group {
        let alone = std::slice::from_ref(queued);
        answers.push(match commit_group(connection, alone).await {
            Ok(mut answer) => answer
                .pop()
                .expect("commit_group answers every Add of its group"),
            Err(e) if is_data_error(&e) => Err(refused(&e)),
            Err(e) => Err(Error::Group(Arc::new(e))),
        });
    }
    answers
}

/// Whether PostgreSQL refused the statement for the data it carries (SQLSTATE
/// class 22, data exception, or 23, integrity constraint violation) rather
/// than for being unavailable.
fn is_data_error(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
}

fn refused(error: &sqlx::Error) -> Error {
    let reason = error
        .as_database_error()
        .map_or_else(|| error.to_string(), |e| e.message().to_owned());
    Error::Refused { reason }
}

/// Commits one group and answers each Add in it, in `group` order. Err
/// means nothing of the group was written. Once its INSERT committed, it
/// returns Ok: an Add whose id raced another adder and could not be looked
/// up afterwards gets its own error (it wrote nothing, so a retry is safe).
async fn commit_group(
    connection: &mut PgConnection,
    group: &[Queued],
) -> Result<Vec<Result<Recorded, Error>>, sqlx::Error> {
    let ids: Vec<&str> = group
        .iter()
        .filter_map(|q| q.request_id.as_deref())
        .collect();
    let mut found = if ids.is_empty() {
        HashMap::new()
    } else {
        find_all(connection, &ids).await?
    };
    // Every id-less Add, and the first Add of each request id not found.
    let mut first_of: HashMap<&str, usize> = HashMap::new();
    let mut to_insert = Vec::with_capacity(group.len());
    for (i, queued) in group.iter().enumerate() {
        match queued.request_id.as_deref() {
            None => to_insert.push(i),
            Some(id) if !found.contains_key(id) && !first_of.contains_key(id) => {
                first_of.insert(id, i);
                to_insert.push(i);
            }
            Some(_) => {}
        }
    }
    let inserted = insert_group(connection, group, &to_insert).await?;
    // From here on the group's rows are committed: nothing below may fail it.
    let raced: Vec<&str> = to_insert
        .iter()
        .filter(|i| !inserted.contains_key(i))
        .filter_map(|&i| group[i].request_id.as_deref())
        .collect();
    let mut lookup_failed = None;
    if !raced.is_empty() {
        match find_all(connection, &raced).await {
            Ok(rows) => found.extend(rows),
            Err(e) => lookup_failed = Some(Arc::new(e)),
        }
    }
    Ok(group
        .iter()
        .enumerate()
        .map(|(i, queued)| {
            if let Some(&id) = inserted.get(&i) {
                return Ok(Recorded {
                    id,
                    sum: queued.sum,
                    replayed: false,
                });
            }
            let request_id = queued
                .request_id
                .as_deref()
                .expect("only Adds with a request id are left out of the insert");
            let earlier = first_of.get(request_id).and_then(|&first| {
                let q = &group[first];
                inserted.get(&first).map(|&id| (id, q.a, q.b, q.sum))
            });
            match earlier.or_else(|| found.get(request_id).copied()) {
                Some(row) => replay(row, request_id, queued.a, queued.b),
                None => Err(match &lookup_failed {
                    Some(e) => Error::Group(e.clone()),
                    None => Error::Raced,
                }),
            }
        })
        .collect())
}

/// The rows of these request ids, by request id.
async fn find_all(
    connection: &mut PgConnection,
    request_ids: &[&str],
) -> Result<HashMap<String, Found>, sqlx::Error> {
    let rows: Vec<(String, i64, i64, i64, i64)> =
        sqlx::query_as("SELECT request_id, id, a, b, sum FROM outbox WHERE request_id = ANY($1)")
            .bind(request_ids)
            .fetch_all(connection)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(request_id, id, a, b, sum)| (request_id, (id, a, b, sum)))
        .collect())
}

/// Inserts the Adds `group[i]` for `i` in `to_insert` in one statement (so
/// in one commit), skipping request ids that exist by now, and returns the
/// id of each inserted one by its index. Rows are inserted in `to_insert`
/// order (`ORDER BY n`), and an identity column hands out increasing ids
/// within a statement, so the sorted ids of the inserted rows follow that
/// order, whatever order RETURNING uses.
async fn insert_group(
    connection: &mut PgConnection,
    group: &[Queued],
    to_insert: &[usize],
) -> Result<HashMap<usize, i64>, sqlx::Error> {
    if to_insert.is_empty() {
        return Ok(HashMap::new());
    }
    let a: Vec<i64> = to_insert.iter().map(|&i| group[i].a).collect();
    let b: Vec<i64> = to_insert.iter().map(|&i| group[i].b).collect();
    let sum: Vec<i64> = to_insert.iter().map(|&i| group[i].sum).collect();
    let request_id: Vec<Option<&str>> = to_insert
        .iter()
        .map(|&i| group[i].request_id.as_deref())
        .collect();
    // Trace contexts only when an Add of the group has one: with tracing
    // off the statement is the one without them.
    let traced = to_insert.iter().any(|&i| group[i].traceparent.is_some());
    let traceparent: Vec<Option<&str>> = if traced {
        to_insert
            .iter()
            .map(|&i| group[i].traceparent.as_deref())
            .collect()
    } else {
        Vec::new()
    };
    let mut query = sqlx::query_as(if traced { INSERT_TRACED } else { INSERT })
        .bind(&a)
        .bind(&b)
        .bind(&sum)
        .bind(&request_id);
    if traced {
        query = query.bind(&traceparent);
    }
    let mut rows: Vec<(i64, Option<String>)> = query.fetch_all(connection).await?;
    rows.sort_unstable_by_key(|(id, _)| *id);
    let returned: HashSet<&str> = rows.iter().filter_map(|(_, r)| r.as_deref()).collect();
    let kept: Vec<usize> = to_insert
        .iter()
        .copied()
        .filter(|&i| {
            group[i]
                .request_id
                .as_deref()
                .is_none_or(|r| returned.contains(r))
        })
        .collect();
    if kept.len() != rows.len() {
        return Err(sqlx::Error::Protocol(format!(
            "INSERT … RETURNING answered {} rows for the {} it inserted",
            rows.len(),
            kept.len()
        )));
    }
    Ok(kept
        .into_iter()
        .zip(rows.into_iter().map(|(id, _)| id))
        .collect())
}

fn replay(found: Found, request_id: &str, a: i64, b: i64) -> Result<Recorded, Error> {
    let (id, found_a, found_b, sum) = found;
    if (found_a, found_b) != (a, b) {
        return Err(Error::Conflict {
            request_id: request_id.to_owned(),
            a: found_a,
            b: found_b,
        });
    }
    Ok(Recorded {
        id,
        sum,
        replayed: true,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::outbox::Outbox;

    #[tokio::test]
    async fn concurrent_adds_each_get_their_own_committed_row() {
        let url = testkit::database::fresh().await;
        let outbox = Outbox::open(&url, 4, 2).await.unwrap();
        let calls: Vec<_> = (0..300i64)
            .map(|a| {
                let outbox = outbox.clone();
                tokio::spawn(async move { (a, outbox.record(a, 1000, a + 1000, None).await) })
            })
            .collect();
        let mut ids = std::collections::HashSet::new();
        for call in calls {
            let (a, recorded) = call.await.unwrap();
            let recorded = recorded.unwrap();
            assert_eq!(recorded.sum, a + 1000);
            assert!(!recorded.replayed);
            let row: (i64, i64) = sqlx::query_as("SELECT a, b FROM outbox WHERE id = $1")
                .bind(recorded.id)
                .fetch_one(&outbox.pool)
                .await
                .unwrap();
            assert_eq!(row, (a, 1000), "row {} belongs to another Add", recorded.id);
            assert!(ids.insert(recorded.id));
        }
    }

    #[tokio::test]
    async fn concurrent_repeats_of_a_request_id_share_one_row() {
        let url = testkit::database::fresh().await;
        let outbox = Outbox::open(&url, 4, 1).await.unwrap();
        let calls: Vec<_> = (0..200i64)
            .map(|i| {
                let outbox = outbox.clone();
                tokio::spawn(async move {
                    let id = match i % 4 {
                        0 | 1 => Some("same".to_owned()),
                        2 => Some(format!("own-{i}")),
                        _ => None,
                    };
                    (i, outbox.record(2, 3, 5, id.as_deref()).await.unwrap())
                })
            })
            .collect();
        let mut same_ids = std::collections::HashSet::new();
        let mut same_fresh = 0;
        for call in calls {
            let (i, recorded) = call.await.unwrap();
            assert_eq!(recorded.sum, 5);
            if i % 4 < 2 {
                same_ids.insert(recorded.id);
                same_fresh += usize::from(!recorded.replayed);
            } else {
                assert!(!recorded.replayed, "call {i}");
            }
        }
        assert_eq!(same_ids.len(), 1, "every repeat is answered from one row");
        assert_eq!(same_fresh, 1, "exactly one of the repeats wrote it");
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&outbox.pool)
            .await
            .unwrap();
        assert_eq!(rows, 1 + 50 + 50, "one row for 'same', one per other Add");
        let conflict = outbox.record(2, 4, 6, Some("same")).await;
        assert!(
            matches!(conflict, Err(Error::Conflict { a: 2, b: 3, .. })),
            "{conflict:?}"
        );
    }

    #[tokio::test]
    async fn a_row_postgres_refuses_fails_only_its_own_add() {
        let url = testkit::database::fresh().await;
        // One writer, so concurrent Adds really share groups.
        let outbox = Outbox::open(&url, 4, 1).await.unwrap();
        let calls: Vec<_> = (0..200i64)
            .map(|i| {
                let outbox = outbox.clone();
                tokio::spawn(async move {
                    let id = (i % 10 == 0).then(|| format!("bad\0{i}"));
                    (i, outbox.record(i, 1, i + 1, id.as_deref()).await)
                })
            })
            .collect();
        for call in calls {
            let (i, recorded) = call.await.unwrap();
            if i % 10 == 0 {
                assert!(
                    matches!(recorded, Err(Error::Refused { .. })),
                    "Add {i}: {recorded:?}"
                );
            } else {
                assert_eq!(recorded.unwrap().sum, i + 1, "Add {i}");
            }
        }
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&outbox.pool)
            .await
            .unwrap();
        assert_eq!(rows, 180, "every good Add has its row, no refused one does");
    }
}
