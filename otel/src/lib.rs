//! OpenTelemetry tracing for the adder and the totaler, off by default: the
//! standard `OTEL_*` variables ([`Settings`]) switch it on, [`layer`] builds
//! the OTLP/gRPC exporter and the `tracing` layer that feeds it, and the
//! returned [`Guard`] flushes what is buffered when the service stops.
//! [`context`] carries a span context across the services' boundaries as
//! W3C `traceparent` text: gRPC metadata and HTTP headers in, AMQP headers
//! and outbox columns through the queue.
//!
//! [`init`] installs the whole subscriber (logs and traces) for a service's
//! `main`, which alone calls it. Nothing here runs per Add unless tracing is
//! on: callers check [`Settings::enabled`] once and keep a `bool`.
//!
//! # Layout
//! - [`Settings`], [`layer`], [`Guard`]: configuration and the pipeline.
//! - [`init`]: the process's subscriber.
//! - [`context`]: `traceparent` text, links, span fields, AMQP headers.

pub mod context;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::{
    EnvFilter, Layer, filter::LevelFilter, layer::SubscriberExt, registry::LookupSpan,
    util::SubscriberInitExt,
};

/// The OpenTelemetry variables the services honour (the names are the
/// standard ones, so a collector's usual set-up works unchanged).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Settings {
    /// OTLP/gRPC endpoint traces are exported to, e.g. http://localhost:4317;
    /// tracing is off while this (and OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is
    /// unset. The OpenTelemetry SDK also reads OTEL_EXPORTER_OTLP_HEADERS,
    /// OTEL_EXPORTER_OTLP_TIMEOUT, OTEL_TRACES_SAMPLER(_ARG),
    /// OTEL_RESOURCE_ATTRIBUTES, OTEL_SPAN_LINK_COUNT_LIMIT and OTEL_BSP_*.
    #[arg(long = "otel-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub endpoint: Option<String>,

    /// OTLP/gRPC endpoint for traces only; wins over OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(
        long = "otel-traces-endpoint",
        env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )]
    pub traces_endpoint: Option<String>,

    /// OTLP transport: only `grpc` is built in (Jaeger and the OpenTelemetry
    /// Collector take it on port 4317); any other value is refused at start.
    #[arg(
        long = "otel-protocol",
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        default_value = "grpc",
        value_parser = ["grpc"]
    )]
    pub protocol: String,

    /// `service.name` of the exported spans [default: the binary's name].
    #[arg(long = "otel-service-name", env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,

    /// `true` turns tracing off even with an endpoint set.
    #[arg(
        long = "otel-sdk-disabled",
        env = "OTEL_SDK_DISABLED",
        default_value_t = false
    )]
    pub sdk_disabled: bool,
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the OTLP exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Keeps the tracer provider alive; dropping it (or [`Guard::shutdown`])
/// exports the spans still buffered, bounded by the exporter's timeout.
#[derive(Default)]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Settings {
    /// Whether spans are exported: an endpoint is set and the SDK is not disabled.
    pub fn enabled(&self) -> bool {
        !self.sdk_disabled && self.endpoint().is_some()
    }

    fn endpoint(&self) -> Option<&str> {
        [&self.traces_endpoint, &self.endpoint]
            .into_iter()
            .filter_map(|e| e.as_deref())
            .find(|e| !e.is_empty())
    }
}

/// The `tracing` layer that exports spans over OTLP, or `None` when tracing
/// is off, and the guard that flushes them. Must be called inside the Tokio
/// runtime: the gRPC client runs on it.
pub fn layer<S>(
    settings: &Settings,
    default_service: &'static str,
) -> Result<
    (
        Option<OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>>,
        Guard,
    ),
    Error,
>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let Some(endpoint) = settings.endpoint().filter(|_| settings.enabled()) else {
        return Ok((None, Guard::default()));
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|source| Error::Exporter {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    let service = settings
        .service_name
        .clone()
        .unwrap_or_else(|| default_service.to_owned());
    let provider = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build())
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer(default_service);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_error_records_to_exceptions(true);
    Ok((
        Some(layer),
        Guard {
            provider: Some(provider),
        },
    ))
}

/// Installs the global subscriber of a service's process: log lines (JSON
/// or text) filtered by `RUST_LOG` (default `info`), and, when tracing is
/// on, the OTLP layer exporting every span at INFO or above whatever
/// `RUST_LOG` says. The guard flushes the exporter when dropped: `main`
/// holds it until the service stopped. Must run inside the Tokio runtime.
pub fn init(json: bool, settings: &Settings, service: &'static str) -> Result<Guard, Error> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (traces, guard) = layer(settings, service)?;
    let registry = tracing_subscriber::registry().with(traces.with_filter(LevelFilter::INFO));
    let logs = tracing_subscriber::fmt::layer();
    if json {
        registry.with(logs.json().with_filter(filter)).init();
    } else {
        registry.with(logs.with_filter(filter)).init();
    }
    Ok(guard)
}

impl Guard {
    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(mut self) {
        self.flush();
    }

    fn flush(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "flushing the trace exporter failed");
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.flush();
    }
}
