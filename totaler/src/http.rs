//! The HTTP server (warp): `GET /sum` from memory, `/metrics`, `/healthz`,
//! `/readyz`. Every request is timed into the HTTP metrics; errors are JSON.

use std::{convert::Infallible, sync::Arc};

use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::{Filter, Rejection, Reply, http::StatusCode, reply};

use crate::{config::Limits, metrics::Metrics, status::Status};

/// Serves HTTP on `listener` within `limits` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let timed = metrics.clone();
    let log = warp::log::custom(move |info: warp::log::Info<'_>| {
        let path = match info.path() {
            path @ ("/sum" | "/metrics" | "/healthz" | "/readyz") => path,
            _ => "other",
        };
        timed
            .http_requests
            .with_label_values(&[path, info.status().as_str()])
            .inc();
        timed
            .http_duration
            .with_label_values(&[path])
            .observe(info.elapsed().as_secs_f64());
    });
    let routes = routes(status, metrics).recover(rejection).with(log);
    let incoming = listen::Incoming::new(listener, limits.http_max_connections);
    listen::http::serve(
        incoming,
        warp::service(routes),
        limits.http(),
        timed_out,
        shutdown,
    )
    .await;
}

fn routes(
    status: Arc<Status>,
    metrics: Arc<Metrics>,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let sum = warp::path!("sum")
        .and(with(status.clone()))
        .map(|status: Arc<Status>| sum_reply(status.total()));
    let metrics = warp::path!("metrics")
        .and(with(metrics))
        .and(with(status.clone()))
        .map(|metrics: Arc<Metrics>, status: Arc<Status>| metrics.render(&status));
    let healthz = warp::path!("healthz").map(|| reply::json(&json!({"status": "ok"})));
    let readyz = warp::path!("readyz")
        .and(with(status))
        .map(|status: Arc<Status>| {
            let (ledger, broker) = (status.ledger_ok(), status.broker_ok());
            let code = if status.ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply::with_status(
                reply::json(&json!({"ledger": ledger, "broker": broker})),
                code,
            )
        });
    warp::get().and(
        sum.map(Reply::into_response)
            .or(metrics.map(Reply::into_response))
            .unify()
            .or(healthz.map(Reply::into_response))
            .unify()
            .or(readyz.map(Reply::into_response))
            .unify(),
    )
}

/// `{"sum":<digits>}` written by hand: serde_json has no `i128` number
/// without `arbitrary_precision`, and an `f64` would round the total.
fn sum_reply(total: i128) -> warp::reply::Response {
    reply::with_header(
        format!(r#"{{"sum":{total}}}"#),
        "content-type",
        "application/json",
    )
    .into_response()
}

fn with<T: Clone + Send>(value: T) -> impl Filter<Extract = (T,), Error = Infallible> + Clone {
    warp::any().map(move || value.clone())
}

/// The reply to a request that took longer than its limit.
fn timed_out() -> warp::reply::Response {
    reply::with_status(
        reply::json(&json!({"error": "request took too long"})),
        StatusCode::REQUEST_TIMEOUT,
    )
    .into_response()
}

async fn rejection(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    let (code, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "no such route")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (StatusCode::METHOD_NOT_ALLOWED, "only GET is served")
    } else {
        (StatusCode::BAD_REQUEST, "bad request")
    };
    Ok(reply::with_status(reply::json(&json!({"error": message})), code).into_response())
}
