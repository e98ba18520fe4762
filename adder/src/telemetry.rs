//! Installs the tracing subscriber: log lines (text or JSON) filtered by
//! `RUST_LOG` (default `info`), and, when an OTLP endpoint is configured,
//! the OpenTelemetry layer that exports every span at INFO or above
//! whatever `RUST_LOG` says (see the `otel` crate). Only `main` calls
//! it; tests log nothing.

use tracing_subscriber::{
    EnvFilter, Layer, filter::LevelFilter, layer::SubscriberExt, util::SubscriberInitExt,
};

use crate::config::LogFormat;

/// Installs the global subscriber for the process. The guard flushes the
/// trace exporter when dropped: `main` holds it until the service stopped.
pub fn init(format: LogFormat, otel: &otel::Settings) -> Result<otel::Guard, otel::Error> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (traces, guard) = otel::layer(otel, "adder")?;
    let registry = tracing_subscriber::registry().with(traces.with_filter(LevelFilter::INFO));
    match format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_filter(filter))
            .init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_filter(filter))
            .init(),
    }
    Ok(guard)
}
