//! A span context as W3C `traceparent` text
//! (`00-<trace id>-<span id>-<flags>`), the one form it takes outside a
//! process: in gRPC metadata and HTTP headers of an Add, in the outbox row
//! and batch that carry it through PostgreSQL, and in the AMQP header of
//! every message of a batch. Here too: putting it on spans (as parent, as
//! links, as the `trace_id` field every log line inside the span shows).
//!
//! With no OpenTelemetry layer installed every span context is invalid, so
//! these functions store, send and link nothing; callers still check their
//! `tracing` flag first so that the hot path pays nothing at all.

use lapin::{
    BasicProperties,
    types::{AMQPValue, LongString},
};
use opentelemetry::{
    Context,
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header (gRPC metadata, HTTP, AMQP) that carries a span context.
pub const TRACEPARENT: &str = "traceparent";

/// Most links one span gets; the rest are counted in its `links.dropped`
/// attribute (the SDK's own default limit is the same).
pub const MAX_LINKS: usize = 128;

/// `cx` as `traceparent` text, `None` if it is not a valid context.
pub fn format(cx: &SpanContext) -> Option<String> {
    cx.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            cx.trace_id(),
            cx.span_id(),
            cx.trace_flags().to_u8()
        )
    })
}

/// Parses `traceparent` text (version 00, or a later version's first four
/// fields, as the W3C spec asks); `None` if it is malformed or all zeros.
pub fn parse(traceparent: &str) -> Option<SpanContext> {
    let mut fields = traceparent.trim().split('-');
    let (version, trace_id, span_id, flags) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let version_ok = version.len() == 2 && version != "ff" && is_lower_hex(version);
    if !version_ok || (version == "00" && fields.next().is_some()) {
        return None;
    }
    if trace_id.len() != 32 || span_id.len() != 16 || flags.len() != 2 {
        return None;
    }
    if ![trace_id, span_id, flags].into_iter().all(is_lower_hex) {
        return None;
    }
    let cx = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(span_id).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()? & 1),
        true,
        TraceState::NONE,
    );
    cx.is_valid().then_some(cx)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The current span's context as `traceparent` text, if it has one.
pub fn current() -> Option<String> {
    format(Span::current().context().span().span_context())
}

/// Makes `span` a child of the remote context in `traceparent` (if it
/// parses) and records its `trace_id` field. Call before the span is entered.
pub fn continue_from(span: &Span, traceparent: Option<&str>) {
    if let Some(parent) = traceparent.and_then(parse) {
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
    record_trace_id(span);
}

/// Records `span`'s trace id in its `trace_id` field (declared
/// `trace_id = tracing::field::Empty`), so every log line inside it shows it.
pub fn record_trace_id(span: &Span) {
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

/// Links `span` to each context in `traceparents` (malformed ones are
/// skipped), at most [`MAX_LINKS`]; `more` counts contexts beyond those
/// given. What is left out is the span's `links.dropped` attribute.
pub fn link_all<'a>(span: &Span, traceparents: impl IntoIterator<Item = &'a str>, more: usize) {
    let mut dropped = more;
    let mut linked = 0;
    for cx in traceparents.into_iter().filter_map(parse) {
        if linked < MAX_LINKS {
            span.add_link(cx);
            linked += 1;
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        span.set_attribute("links.dropped", i64::try_from(dropped).unwrap_or(i64::MAX));
    }
}

/// Links the current span (a consumer's batch) to the `traceparent` header
/// of each message in it, and records its `trace_id` field.
pub fn link_received<'a>(messages: impl IntoIterator<Item = &'a BasicProperties>) {
    let span = Span::current();
    record_trace_id(&span);
    let headers: Vec<String> = messages.into_iter().filter_map(from_amqp).collect();
    link_all(&span, headers.iter().map(String::as_str), 0);
}

/// The `traceparent` header of an AMQP message, if it has one.
pub fn from_amqp(properties: &BasicProperties) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(TRACEPARENT)? {
        AMQPValue::LongString(value) => Some(value.to_string()),
        AMQPValue::ShortString(value) => Some(value.to_string()),
        _ => None,
    }
}

/// `properties` with the header `traceparent` set.
pub fn to_amqp(properties: BasicProperties, traceparent: &str) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(
        TRACEPARENT.into(),
        AMQPValue::LongString(LongString::from(traceparent)),
    );
    properties.with_headers(headers)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_survives_parsing_and_formatting() {
        let cx = parse(SAMPLED).unwrap();
        assert_eq!(
            cx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(cx.span_id().to_string(), "00f067aa0ba902b7");
        assert!(cx.is_sampled() && cx.is_remote());
        assert_eq!(format(&cx).as_deref(), Some(SAMPLED));
        let unsampled = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn malformed_or_empty_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
        assert!(
            parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future").is_some(),
            "a later version may add fields"
        );
    }

    #[test]
    fn the_amqp_header_carries_the_traceparent() {
        let properties = to_amqp(BasicProperties::default().with_delivery_mode(2), SAMPLED);
        assert_eq!(from_amqp(&properties).as_deref(), Some(SAMPLED));
        assert_eq!(properties.delivery_mode(), &Some(2));
        assert_eq!(from_amqp(&BasicProperties::default()), None);
    }

    #[test]
    fn without_a_layer_nothing_is_current() {
        let span = tracing::info_span!("x", trace_id = tracing::field::Empty);
        continue_from(&span, Some(SAMPLED));
        assert_eq!(span.in_scope(current), None);
    }
}
