//! The HTTP front end (warp): `POST /add`, `/metrics`, `/healthz`, `/readyz`.
//! Errors become JSON `{"error": ...}` with a 4xx/5xx status in one rejection
//! handler; clients never see SQL.

use std::{convert::Infallible, sync::Arc, time::Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use warp::{Filter, Rejection, Reply, http::StatusCode, hyper::body::Bytes, reply};

use crate::{
    add::{self, Adder},
    config::Limits,
    metrics::Metrics,
    trace::{self, Transport},
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    a: i64,
    b: i64,
    #[serde(default)]
    request_id: String,
}

#[derive(Serialize)]
struct AddReply {
    sum: i64,
    outbox_id: i64,
    replayed: bool,
}

/// Largest accepted `POST /add` body.
const MAX_BODY: u64 = 4096;

/// Serves HTTP on `listener` within `limits` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    adder: Adder,
    metrics: Arc<Metrics>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let routes = routes(adder, metrics).recover(rejection);
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
    adder: Adder,
    metrics: Arc<Metrics>,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let add = warp::path!("add")
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_BODY))
        .and(warp::body::bytes())
        .and(warp::header::optional::<String>(otel::context::TRACEPARENT))
        .and(with(adder.clone()))
        .and(with(metrics.clone()))
        .then(post_add);
    let metrics_route = warp::path!("metrics")
        .and(warp::get())
        .and(with(metrics))
        .map(|metrics: Arc<Metrics>| metrics.render());
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| reply::json(&json!({"status": "ok"})));
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with(adder))
        .then(readyz);
    add.map(Reply::into_response)
        .or(metrics_route.map(Reply::into_response))
        .unify()
        .or(healthz.map(Reply::into_response))
        .unify()
        .or(readyz)
        .unify()
}

fn with<T: Clone + Send>(value: T) -> impl Filter<Extract = (T,), Error = Infallible> + Clone {
    warp::any().map(move || value.clone())
}

/// Parses the body itself (any Content-Type, as `curl -d` sends) so a bad
/// body gets a precise JSON error.
async fn post_add(
    body: Bytes,
    traceparent: Option<String>,
    adder: Adder,
    metrics: Arc<Metrics>,
) -> warp::reply::Response {
    let started = Instant::now();
    let body: AddBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            metrics.observe(
                "http_add",
                "invalid_argument",
                started.elapsed().as_secs_f64(),
            );
            return error_reply(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}"));
        }
    };
    let span = trace::request_span(adder.tracing, Transport::Http, traceparent.as_deref());
    let result = adder
        .add(body.a, body.b, &body.request_id)
        .instrument(span)
        .await;
    let code = result.as_ref().map_or_else(add::Error::code, |_| "ok");
    metrics.observe("http_add", code, started.elapsed().as_secs_f64());
    match result {
        Ok(recorded) => reply::json(&AddReply {
            sum: recorded.sum,
            outbox_id: recorded.id,
            replayed: recorded.replayed,
        })
        .into_response(),
        Err(e) => {
            let status = match e {
                add::Error::Overflow { .. }
                | add::Error::RequestIdTooLong
                | add::Error::RequestIdHasNul
                | add::Error::Refused(_) => StatusCode::BAD_REQUEST,
                add::Error::Conflict { .. } => StatusCode::CONFLICT,
                add::Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            error_reply(status, &e.to_string())
        }
    }
}

/// Ready means "can take Adds": an outbox database answers. The relays'
/// broker channels are reported, never required: while the broker is away
/// the outbox takes the Adds, and a balancer that dropped the adder then
/// would refuse them instead. An adder whose list of databases a database
/// refuses (`membership`) is not ready: it would refuse Adds with a
/// request id, which another adder takes.
async fn readyz(adder: Adder) -> warp::reply::Response {
    let databases = adder.databases_up().await;
    let brokers = adder.status.brokers_up();
    let refused = adder.list_refused();
    let database = databases.contains(&true);
    let status = if database && refused.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({"database": database, "broker": adder.broker_up()});
    if let Some(why) = refused {
        body["error"] = json!(why);
    }
    if databases.len() > 1 {
        body["databases"] = json!(databases);
        body["brokers"] = json!(brokers);
    }
    reply::with_status(reply::json(&body), status).into_response()
}

/// The reply to a request that took longer than its limit.
fn timed_out() -> warp::reply::Response {
    error_reply(StatusCode::REQUEST_TIMEOUT, "request took too long")
}

fn error_reply(status: StatusCode, message: &str) -> warp::reply::Response {
    reply::with_status(reply::json(&json!({"error": message})), status).into_response()
}

async fn rejection(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    let (status, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "no such route".to_owned())
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {MAX_BODY} bytes"),
        )
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "a Content-Length is required".to_owned(),
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed".to_owned(),
        )
    } else {
        (
            StatusCode::BAD_REQUEST,
            format!("bad request: {rejection:?}"),
        )
    };
    Ok(error_reply(status, &message))
}
