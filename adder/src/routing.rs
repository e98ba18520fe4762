//! The K outbox databases an adder spreads its Adds over (`DATABASE_URL`
//! lists them), and which one an Add goes to. No SQL: each database is an
//! [`Outbox`]; this owns their slots (open or not yet, answering or not)
//! and the routing.
//!
//! - An Add with a request id goes to its **home**, the database at
//!   `fnv1a64(id) mod K` (from 0, position 1 is the first URL): the same in
//!   every adder that lists the same databases in the same order, on every
//!   build and machine, so a retry finds the first attempt's row. When its
//!   home is down it fails (`UNAVAILABLE`); it never goes elsewhere.
//! - An Add without one is new every time: it goes round robin to the
//!   databases that answer, and to another one when the one chosen was
//!   certainly not written (not open yet, or no connection could be had:
//!   `outbox::Error::nothing_sent`). An Add whose commit failed in any other
//!   way may have been recorded, so it is never sent again elsewhere.
//! - An Add with a request id is taken on a database only while its
//!   recorded list of databases agrees with this adder's (`Agreement`, kept
//!   by `crate::membership`): until then it fails as `UNAVAILABLE`.

use std::sync::{
    Arc, Mutex, OnceLock,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use tokio::sync::{Notify, OnceCell};
use uuid::Uuid;

use crate::{
    metrics::DatabaseGauges,
    outbox::{self, Outbox, Place, Recorded},
};

/// One outbox database of the list.
pub struct Slot {
    /// Set once the database is migrated and its identity and place checked.
    pub outbox: OnceCell<Outbox>,
    /// Wakes this database's relay once a row is committed.
    pub wake: Arc<Notify>,
    pub place: Place,
    /// The database's member id, once open.
    pub member: OnceLock<Uuid>,
    /// Whether its recorded list of databases agrees with this adder's.
    agreement: Mutex<Agreement>,
    /// Whether the database answered last time it was used or probed.
    up: AtomicBool,
    pub gauges: DatabaseGauges,
}

/// Whether a database's recorded list of databases agrees with this
/// adder's list, which decides whether it takes Adds with a request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Agreement {
    /// Not known yet: no list is recorded (not every database has been open
    /// at once yet), or the database is not open.
    Pending,
    Agreed,
    /// The lists differ: why, for the operator and the caller.
    Refused(String),
}

/// Every outbox database of the adder, in `DATABASE_URL` order.
pub struct Outboxes {
    slots: Vec<Slot>,
    /// Where the next Add without a request id starts looking.
    next: AtomicUsize,
}

/// One Add, as each database records it.
#[derive(Debug, Clone, Copy)]
pub struct Add<'a> {
    pub a: i64,
    pub b: i64,
    pub sum: i64,
    pub request_id: Option<&'a str>,
}

impl Outboxes {
    /// `gauges.len()` slots, none open yet.
    pub fn new(gauges: Vec<DatabaseGauges>) -> Self {
        let databases = u32::try_from(gauges.len()).unwrap_or(u32::MAX);
        let slots = gauges
            .into_iter()
            .enumerate()
            .map(|(i, gauges)| Slot {
                outbox: OnceCell::new(),
                wake: Arc::new(Notify::new()),
                place: Place {
                    position: u32::try_from(i + 1).unwrap_or(u32::MAX),
                    databases,
                },
                member: OnceLock::new(),
                agreement: Mutex::new(Agreement::Pending),
                up: AtomicBool::new(false),
                gauges,
            })
            .collect();
        Self {
            slots,
            next: AtomicUsize::new(0),
        }
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The index of the database a request id always goes to.
    pub fn home(&self, request_id: &str) -> usize {
        home(request_id, self.slots.len())
    }

    /// Records `add` on its home (with a request id) or on any database
    /// that can take it (without); returns the slot it went to.
    pub async fn record(
        &self,
        add: Add<'_>,
        traceparent: Option<String>,
    ) -> Result<(Recorded, &Slot), outbox::Error> {
        if let Some(id) = add.request_id {
            let slot = &self.slots[self.home(id)];
            return Ok((slot.record(add, traceparent).await?, slot));
        }
        let mut last = outbox::Error::NotOpen;
        for slot in self.round_robin() {
            match slot.record(add, traceparent.clone()).await {
                Ok(recorded) => return Ok((recorded, slot)),
                Err(e) if e.nothing_sent() => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Every slot once, from the next in turn: those that answer first.
    fn round_robin(&self) -> impl Iterator<Item = &Slot> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let ordered: Vec<&Slot> = (0..self.slots.len())
            .map(|n| &self.slots[(start + n) % self.slots.len()])
            .collect();
        let (up, down): (Vec<&Slot>, Vec<&Slot>) = ordered.into_iter().partition(|s| s.is_up());
        up.into_iter().chain(down)
    }
}

impl Slot {
    async fn record(
        &self,
        add: Add<'_>,
        traceparent: Option<String>,
    ) -> Result<Recorded, outbox::Error> {
        let outbox = self.outbox.get().ok_or(outbox::Error::NotOpen)?;
        if add.request_id.is_some() {
            match self.agreement() {
                Agreement::Agreed => {}
                Agreement::Pending => return Err(outbox::Error::NotOpen),
                Agreement::Refused(why) => return Err(outbox::Error::Misplaced(why)),
            }
        }
        let result = outbox
            .record_traced(add.a, add.b, add.sum, add.request_id, traceparent)
            .await;
        match &result {
            Ok(_) | Err(outbox::Error::Conflict { .. } | outbox::Error::Refused { .. }) => {
                self.set_up(true)
            }
            Err(outbox::Error::Raced) => {}
            Err(_) => self.set_up(false),
        }
        result
    }

    pub fn agreement(&self) -> Agreement {
        self.agreement
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sets the agreement; returns the one it replaces.
    pub fn set_agreement(&self, agreement: Agreement) -> Agreement {
        let mut held = self
            .agreement
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::replace(&mut held, agreement)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records whether the database answers (used by Adds and the
    /// housekeeping's probe); `adder_database_up` follows it.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        self.gauges.up.set(i64::from(up));
    }

    /// Whether the database is open and PostgreSQL answers.
    pub async fn ping(&self) -> bool {
        match self.outbox.get() {
            Some(outbox) => outbox.ping().await,
            None => false,
        }
    }
}

/// The index, of `databases`, a request id goes to: FNV-1a 64 of its UTF-8
/// bytes, mod `databases`. Written out here, so it never changes with the
/// Rust version, the build or the machine (std's hashers may).
pub fn home(request_id: &str, databases: usize) -> usize {
    let databases = databases.max(1) as u64;
    usize::try_from(fnv1a64(request_id.as_bytes()) % databases)
        .expect("a remainder of a usize count fits in usize")
}

/// FNV-1a, 64 bits (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_gives_the_published_values() {
        // The reference values of the FNV test suite (isthe.com/chongo/tech/comp/fnv).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn a_request_id_always_has_the_same_home() {
        assert_eq!(home("anything", 1), 0);
        // Pinned: a change here moves request ids between databases.
        let homes: Vec<usize> = ["a", "b", "order-17", "order-18", "ü"]
            .iter()
            .map(|id| home(id, 2))
            .collect();
        assert_eq!(homes, PINNED_HOMES_OF_TWO);
        let three: Vec<usize> = (0..30).map(|n| home(&format!("r{n}"), 3)).collect();
        for database in 0..3 {
            assert!(
                three.contains(&database),
                "{three:?} spreads over all three"
            );
        }
    }

    const PINNED_HOMES_OF_TWO: [usize; 5] = [0, 1, 0, 1, 0];
}
