//! Serves one HTTP/1.1 service over an [`Incoming`]: hyper with a timer, so
//! a client that has not sent a whole request head within
//! [`Limits::header_read_timeout`] is disconnected (idle keep-alive
//! connections too), and a request not answered within
//! [`Limits::request_timeout`] (a slow body included) gets the caller's
//! timeout reply and its connection closed. On shutdown it stops accepting
//! and lets open connections finish their request. It owns no routes: the
//! caller passes any tower service (warp's `warp::service(routes)`).

use std::{error::Error as StdError, future::Future, time::Duration};

use hyper::{Request, Response, body::Incoming as Body, server::conn::http1};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio_util::sync::CancellationToken;

use crate::Incoming;

/// Time limits of one HTTP server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// From the start of a connection, or the end of its last response, to
    /// the end of the next request head.
    pub header_read_timeout: Duration,
    /// From a request head to the end of its response head (body read and
    /// handler included).
    pub request_timeout: Duration,
}

type BoxError = Box<dyn StdError + Send + Sync>;

/// Serves `service` on `incoming` until `shutdown`, then drains open
/// connections. `on_timeout` builds the reply to a request past its limit.
pub async fn serve<S, B>(
    mut incoming: Incoming,
    service: S,
    limits: Limits,
    on_timeout: fn() -> Response<B>,
    shutdown: CancellationToken,
) where
    S: tower_service::Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let graceful = GracefulShutdown::new();
    loop {
        let conn = tokio::select! {
            conn = incoming.accept() => conn,
            () = shutdown.cancelled() => break,
        };
        let service = timed(service.clone(), limits.request_timeout, on_timeout);
        let connection = builder(limits).serve_connection(TokioIo::new(conn), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(incoming);
    graceful.shutdown().await;
}

fn builder(limits: Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
}

/// `service` with every request bounded by `limit`.
fn timed<S, B>(
    service: S,
    limit: Duration,
    on_timeout: fn() -> Response<B>,
) -> impl hyper::service::Service<
    Request<Body>,
    Response = Response<B>,
    Error = S::Error,
    Future = impl Future<Output = Result<Response<B>, S::Error>> + Send + 'static,
>
where
    S: tower_service::Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send,
    B: hyper::body::Body + Send + 'static,
{
    let inner = TowerToHyperService::new(service);
    hyper::service::service_fn(move |request| {
        let call = hyper::service::Service::call(&inner, request);
        async move {
            match tokio::time::timeout(limit, call).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::debug!(
                        limit_ms = limit.as_millis() as u64,
                        "HTTP request timed out"
                    );
                    Ok(on_timeout())
                }
            }
        }
    })
}
