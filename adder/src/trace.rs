//! What the adder does with trace context, only while tracing is on: each
//! Add runs in a request span continuing the caller's `traceparent` (gRPC
//! metadata or HTTP header), whose context the group commit stores with the
//! row; the relay's `publish batch` span links to the contexts of its rows
//! (at most `otel::context::MAX_LINKS`, the rest counted) and its own
//! context is stored with the batch and sent in every part's AMQP header.
//! A batch published again sends the context it was first published under.
//!
//! With tracing off nothing here runs: callers check their `tracing` flag.

use tracing::Span;

use otel::context;

use crate::outbox::{self, Active, Batch};

/// Which front end an Add came through.
#[derive(Clone, Copy, Debug)]
pub enum Transport {
    Grpc,
    Http,
}

/// The span an Add runs in: `Span::none()` with tracing off, else a server
/// span continuing `traceparent` when it parses (a new trace when not).
pub fn request_span(tracing: bool, transport: Transport, traceparent: Option<&str>) -> Span {
    if !tracing {
        return Span::none();
    }
    let span = match transport {
        Transport::Grpc => tracing::info_span!(
            "tally.v1.Adder/Add",
            otel.kind = "server",
            rpc.system = "grpc",
            trace_id = tracing::field::Empty
        ),
        Transport::Http => tracing::info_span!(
            "POST /add",
            otel.kind = "server",
            http.request.method = "POST",
            trace_id = tracing::field::Empty
        ),
    };
    context::continue_from(&span, traceparent);
    span
}

/// Inside the relay's publish span: links it to the batch's rows' contexts
/// (a first publication, whose own context is then stored with the batch)
/// or to the context it was first published under (a republication), and
/// returns the `traceparent` every part carries.
pub async fn publish_context(
    active: &mut Active,
    batch: &Batch,
) -> Result<Option<String>, outbox::Error> {
    let span = Span::current();
    context::record_trace_id(&span);
    if let Some(first) = &batch.traceparent {
        context::link_all(&span, [first.as_str()], 0);
        return Ok(Some(first.clone()));
    }
    let limit = i64::try_from(context::MAX_LINKS).unwrap_or(i64::MAX);
    let (rows, all) = active.traceparents(batch, limit).await?;
    let more = all.saturating_sub(rows.len());
    context::link_all(&span, rows.iter().map(String::as_str), more);
    let Some(own) = context::current() else {
        return Ok(None);
    };
    active.set_traceparent(batch, &own).await?;
    Ok(Some(own))
}
