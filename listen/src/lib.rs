//! Accepting connections within bounds, for the adder's gRPC and HTTP
//! servers and the totaler's HTTP server. [`Incoming`] accepts only while
//! fewer than its limit of accepted connections are open (each [`Conn`]
//! holds a semaphore permit until it is dropped; past the limit, clients
//! wait in the kernel's listen backlog), and backs off on accept errors such
//! as EMFILE/ENFILE instead of spinning on a listener that stays readable.
//! It never ends on an accept error. For HTTP/2 it can also close
//! connections that do not speak ([`Incoming::close_quiet`]). It knows no
//! routes: no warp, and tonic only behind the `tonic` feature.
//!
//! # Layout
//! - `lib.rs`: [`Incoming`], [`Conn`], the back-off.
//! - `http`: one HTTP/1.1 service over an [`Incoming`], with header-read and
//!   request timeouts and graceful shutdown.
//! - `quiet`: the handshake and idle timeouts of HTTP/2 connections.
//! - `grpc` (feature `tonic`): `Connected` for [`Conn`] and the service
//!   wrapper that counts a connection's open streams for the idle timeout.
//! - `shutdown`: the services' stop trigger (SIGINT/SIGTERM) and their one
//!   drain bounded by the grace period.

#[cfg(feature = "tonic")]
pub mod grpc;
pub mod http;
pub mod quiet;
pub mod shutdown;

use std::{
    convert::Infallible,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};

use crate::quiet::{Timeouts, Watch};

/// A listener that accepts at most `max_connections` open connections and
/// backs off on accept errors.
pub struct Incoming {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    backoff: Backoff,
    quiet: Option<Timeouts>,
}

/// An accepted connection; its slot is freed when it is dropped.
pub struct Conn {
    stream: TcpStream,
    /// The clock of its silences, if quiet connections are closed.
    watch: Option<Watch>,
    _permit: OwnedSemaphorePermit,
}

/// First and longest pause after a failed accept.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl Incoming {
    /// Bounds `listener` to `max_connections` open connections (at least 1).
    pub fn new(listener: TcpListener, max_connections: usize) -> Self {
        let permits = max_connections.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            listener,
            permits: Arc::new(Semaphore::new(permits)),
            backoff: Backoff::default(),
            quiet: None,
        }
    }

    /// Closes HTTP/2 connections that do not speak: no handshake within
    /// `timeouts.handshake`, no open stream for `timeouts.idle` (counted by
    /// `grpc::CountStreams`; without it every connection counts as idle).
    /// Their next read fails with `TimedOut`, so the server drops them and
    /// their slots are freed.
    pub fn close_quiet(mut self, timeouts: Timeouts) -> Self {
        self.quiet = Some(timeouts);
        self
    }

    /// Waits for a free slot, then for a connection. Accept errors are
    /// logged and retried after a growing pause (5 ms doubling to 1 s), so
    /// running out of file descriptors costs no CPU and ends nothing.
    pub async fn accept(&mut self) -> Conn {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    self.backoff.reset();
                    // Replies are small and must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    return Conn {
                        stream,
                        watch: self.quiet.map(Watch::new),
                        _permit: permit,
                    };
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => self.back_off(&e).await,
            }
        }
    }

    /// The connections as a never-failing stream, for tonic's
    /// `serve_with_incoming_shutdown`. Dropping it closes the listener.
    pub fn into_stream(self) -> impl Stream<Item = Result<Conn, Infallible>> + Send + 'static {
        futures_util::stream::unfold(self, |mut incoming| async move {
            let conn = incoming.accept().await;
            Some((Ok(conn), incoming))
        })
    }

    async fn back_off(&mut self, error: &io::Error) {
        let pause = self.backoff.next_pause();
        tracing::warn!(
            error = %error,
            pause_ms = pause.as_millis() as u64,
            "accept failed, pausing before the next accept"
        );
        tokio::time::sleep(pause).await;
    }
}

/// Errors about one connection that died before it was accepted: skip it.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The pause after consecutive accept errors: doubles up to [`MAX_BACKOFF`].
#[derive(Default)]
struct Backoff {
    current: Option<Duration>,
}

impl Backoff {
    fn next_pause(&mut self) -> Duration {
        let pause = self
            .current
            .map_or(FIRST_BACKOFF, |last| (last * 2).min(MAX_BACKOFF));
        self.current = Some(pause);
        pause
    }

    fn reset(&mut self) {
        self.current = None;
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(watch) = &mut this.watch else {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        };
        if let Some(silence) = watch.poll_expired(cx) {
            tracing::debug!(%silence, "closing a quiet connection");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                silence.to_string(),
            )));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        watch.read(buf.filled().len() - before);
        read
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_second_and_resets() {
        let mut backoff = Backoff::default();
        let pauses: Vec<_> = (0..10).map(|_| backoff.next_pause()).collect();
        assert_eq!(pauses[0], FIRST_BACKOFF);
        assert_eq!(pauses[1], FIRST_BACKOFF * 2);
        assert_eq!(pauses[9], MAX_BACKOFF);
        backoff.reset();
        assert_eq!(backoff.next_pause(), FIRST_BACKOFF);
    }

    #[tokio::test]
    async fn connections_past_the_limit_wait_until_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut incoming = Incoming::new(listener, 1);
        let _client1 = TcpStream::connect(addr).await.expect("connect");
        let _client2 = TcpStream::connect(addr).await.expect("connect");
        let first = incoming.accept().await;
        let waiting = tokio::time::timeout(Duration::from_millis(200), incoming.accept()).await;
        assert!(waiting.is_err(), "a second connection is not accepted");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), incoming.accept())
            .await
            .expect("accepted once the first closed");
    }

    #[tokio::test]
    async fn a_quiet_connection_fails_its_read_after_the_handshake_timeout() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let timeouts = Timeouts {
            handshake: Duration::from_millis(200),
            idle: Duration::from_secs(60),
        };
        let mut incoming = Incoming::new(listener, 1).close_quiet(timeouts);
        let _client = TcpStream::connect(addr).await.expect("connect");
        let mut conn = incoming.accept().await;
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("the read ends at the handshake timeout");
        let error = read.expect_err("a quiet connection's read fails");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
    }
}
