//! Closing HTTP/2 connections that do not speak, which hyper's HTTP/2 server
//! never does by itself: one that has not sent the client preface and the
//! header of its first frame within [`Timeouts::handshake`], and one with no
//! open stream for [`Timeouts::idle`]. A [`Watch`] keeps the clock inside
//! the connection's reads: once a deadline has passed, the next read fails
//! with `TimedOut`, hyper ends the connection and its slot is freed.
//! [`Streams`] counts a connection's open streams; the service side holds a
//! [`StreamGuard`] per request (see `grpc`). No I/O of its own.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::Context,
    time::Duration,
};

use tokio::time::{Instant, Sleep};

/// How long an HTTP/2 connection may stay silent.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// From the accept to the end of the client preface and the header of
    /// the first frame (its SETTINGS).
    pub handshake: Duration,
    /// From the end of the last stream (or the accept) to the next stream.
    pub idle: Duration,
}

/// The 24-byte HTTP/2 client preface and a 9-byte frame header: what a
/// client has sent once its handshake is under way (RFC 9113, 3.4).
pub const HANDSHAKE_BYTES: u64 = 24 + 9;

/// The open streams of one connection, shared by its reads and its requests.
#[derive(Clone, Debug)]
pub struct Streams(Arc<Counter>);

/// One open stream; the stream counts as open until it is dropped.
#[derive(Debug)]
pub struct StreamGuard(Streams);

#[derive(Debug)]
struct Counter {
    open: AtomicUsize,
    /// The connection's start, which `idle_since_us` counts from.
    started: Instant,
    /// When the last stream ended, in µs after `started`.
    idle_since_us: AtomicU64,
}

/// The clock of one connection's silences; it lives in its `Conn`.
pub(crate) struct Watch {
    timeouts: Timeouts,
    started: Instant,
    read: u64,
    deadline: Pin<Box<Sleep>>,
    pub(crate) streams: Streams,
}

/// Why a connection is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Silence {
    Handshake,
    Idle,
}

impl Streams {
    fn new(started: Instant) -> Self {
        Self(Arc::new(Counter {
            open: AtomicUsize::new(0),
            started,
            idle_since_us: AtomicU64::new(0),
        }))
    }

    /// Counts a stream as open until the guard is dropped.
    pub fn open(&self) -> StreamGuard {
        self.0.open.fetch_add(1, Ordering::SeqCst);
        StreamGuard(self.clone())
    }

    /// `None` while a stream is open; else since when none has been.
    fn idle_since(&self) -> Option<Instant> {
        if self.0.open.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let us = self.0.idle_since_us.load(Ordering::SeqCst);
        Some(self.0.started + Duration::from_micros(us))
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let counter = &self.0.0;
        let us = u64::try_from(counter.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        counter.idle_since_us.store(us, Ordering::SeqCst);
        counter.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Watch {
    /// Starts the clock of a connection accepted now.
    pub(crate) fn new(timeouts: Timeouts) -> Self {
        let started = Instant::now();
        Self {
            timeouts,
            started,
            read: 0,
            deadline: Box::pin(tokio::time::sleep_until(started + timeouts.handshake)),
            streams: Streams::new(started),
        }
    }

    /// Counts `bytes` read from the client. The read that completes the
    /// handshake hands the clock to the idle timeout, which may be the
    /// shorter: its deadline is worked out at the next poll.
    pub(crate) fn read(&mut self, bytes: usize) {
        let before = self.read;
        self.read = before.saturating_add(bytes as u64);
        if before < HANDSHAKE_BYTES && self.read >= HANDSHAKE_BYTES {
            self.deadline.as_mut().reset(Instant::now());
        }
    }

    /// The silence that has outlasted its limit, if one has; otherwise
    /// `cx` is woken at the next deadline.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Option<Silence> {
        while self.deadline.as_mut().poll(cx).is_ready() {
            match self.next_deadline(Instant::now()) {
                Ok(at) => self.deadline.as_mut().reset(at),
                Err(silence) => return Some(silence),
            }
        }
        None
    }

    /// When to look again, or the silence that is over its limit at `now`.
    fn next_deadline(&self, now: Instant) -> Result<Instant, Silence> {
        if self.read < HANDSHAKE_BYTES {
            return if now >= self.started + self.timeouts.handshake {
                Err(Silence::Handshake)
            } else {
                Ok(self.started + self.timeouts.handshake)
            };
        }
        match self.streams.idle_since() {
            None => Ok(now + self.timeouts.idle),
            Some(since) if now >= since + self.timeouts.idle => Err(Silence::Idle),
            Some(since) => Ok(since + self.timeouts.idle),
        }
    }
}

impl fmt::Display for Silence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Handshake => "no HTTP/2 handshake within the handshake timeout",
            Self::Idle => "no open stream within the idle timeout",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        handshake: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    #[tokio::test]
    async fn a_connection_without_a_handshake_expires_at_the_handshake_timeout() {
        let mut watch = Watch::new(TIMEOUTS);
        let start = watch.started;
        watch.read(HANDSHAKE_BYTES as usize - 1);
        assert_eq!(watch.next_deadline(start), Ok(start + TIMEOUTS.handshake));
        let late = start + TIMEOUTS.handshake;
        assert_eq!(watch.next_deadline(late), Err(Silence::Handshake));
    }

    #[tokio::test]
    async fn an_idle_connection_expires_from_its_last_stream() {
        let mut watch = Watch::new(TIMEOUTS);
        let start = watch.started;
        watch.read(HANDSHAKE_BYTES as usize);
        assert_eq!(watch.next_deadline(start), Ok(start + TIMEOUTS.idle));
        let stream = watch.streams.open();
        let later = start + Duration::from_secs(100);
        assert_eq!(
            watch.next_deadline(later),
            Ok(later + TIMEOUTS.idle),
            "an open stream keeps it"
        );
        drop(stream);
        let ended = Instant::now();
        let next = watch
            .next_deadline(ended)
            .expect("idle for less than the timeout");
        assert!(next >= start + TIMEOUTS.idle && next <= ended + TIMEOUTS.idle);
        assert_eq!(
            watch.next_deadline(ended + TIMEOUTS.idle),
            Err(Silence::Idle)
        );
    }
}
