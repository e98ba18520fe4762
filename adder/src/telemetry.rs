//! Installs the process's subscriber through `otel::init`: log lines (text
//! or JSON, `RUST_LOG`, default `info`) and, when an OTLP endpoint is
//! configured, the trace exporter. Only `main` calls it; tests log nothing.

use crate::config::LogFormat;

/// Installs the global subscriber for the process. The guard flushes the
/// trace exporter when dropped: `main` holds it until the service stopped.
pub fn init(format: LogFormat, otel: &otel::Settings) -> Result<otel::Guard, otel::Error> {
    otel::init(format == LogFormat::Json, otel, "adder")
}
