//! The gRPC front end: `tally.v1.Adder`, `grpc.health.v1` and server
//! reflection (`grpc.reflection.v1` and, for grpcurl before 1.9, `v1alpha`).
//! The only module that knows tonic types; it translates `add::Error` to a
//! `Status` in one place.

use std::{sync::Arc, time::Instant};

use listen::grpc::CountStreams;
use proto::tally::v1::{
    AddRequest, AddResponse,
    adder_server::{Adder as AdderRpc, AdderServer},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, service::Routes};
use tracing::Instrument;

use crate::{
    add::{self, Adder},
    config::Limits,
    metrics::Metrics,
    trace::{self, Transport},
};

struct Service {
    adder: Adder,
    metrics: Arc<Metrics>,
}

impl From<add::Error> for Status {
    fn from(error: add::Error) -> Self {
        match &error {
            add::Error::Overflow { .. }
            | add::Error::RequestIdTooLong
            | add::Error::RequestIdHasNul
            | add::Error::Refused(_) => Status::invalid_argument(error.to_string()),
            add::Error::Conflict { .. } => Status::already_exists(error.to_string()),
            add::Error::Unavailable(_) => Status::unavailable(error.to_string()),
        }
    }
}

#[tonic::async_trait]
impl AdderRpc for Service {
    async fn add(&self, request: Request<AddRequest>) -> Result<Response<AddResponse>, Status> {
        let started = Instant::now();
        let span = trace::request_span(self.adder.tracing, Transport::Grpc, traceparent(&request));
        let AddRequest { a, b, request_id } = request.into_inner();
        let result = self.adder.add(a, b, &request_id).instrument(span).await;
        let code = result.as_ref().map_or_else(add::Error::code, |_| "ok");
        self.metrics
            .observe("grpc_add", code, started.elapsed().as_secs_f64());
        match result {
            Ok(recorded) => Ok(Response::new(AddResponse {
                sum: recorded.sum,
                outbox_id: recorded.id,
                replayed: recorded.replayed,
            })),
            Err(e) => {
                if let add::Error::Unavailable(cause) = &e {
                    tracing::warn!(error = %cause, "Add failed: outbox unavailable");
                }
                Err(e.into())
            }
        }
    }
}

/// The caller's `traceparent` metadata, if it is text.
fn traceparent<T>(request: &Request<T>) -> Option<&str> {
    request
        .metadata()
        .get(otel::context::TRACEPARENT)
        .and_then(|value| value.to_str().ok())
}

/// Serves gRPC on `listener` within `limits` until `shutdown`, then
/// finishes in-flight calls. Accepting goes through `listen::Incoming`:
/// tonic retries a failed accept at once, which spins on EMFILE, and
/// neither tonic nor hyper closes a connection that never speaks; it closes
/// one without a handshake or a call in progress for too long, and HTTP/2
/// PINGs find those that stopped answering.
pub async fn serve(
    listener: TcpListener,
    adder: Adder,
    metrics: Arc<Metrics>,
    limits: Limits,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AdderServer<Service>>().await;
    let reflection = reflection_builder().build_v1()?;
    // grpcurl before 1.9 (PyPI's is 1.8.6) and other older clients ask for v1alpha.
    let reflection_v1alpha = reflection_builder().build_v1alpha()?;
    let incoming = listen::Incoming::new(listener, limits.grpc_max_connections)
        .close_quiet(limits.grpc_quiet())
        .into_stream();
    let routes = Routes::new(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(AdderServer::new(Service { adder, metrics }))
        .prepare();
    tonic::transport::Server::builder()
        .max_concurrent_streams(limits.grpc_max_streams)
        .timeout(limits.grpc_timeout())
        .http2_keepalive_interval(limits.grpc_keepalive_interval())
        .http2_keepalive_timeout(Some(limits.grpc_keepalive_timeout()))
        .serve_with_incoming_shutdown(
            CountStreams::new(routes),
            incoming,
            shutdown.cancelled_owned(),
        )
        .await?;
    Ok(())
}

/// Server reflection over Tally's and the health service's descriptors.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
