//! Installs the tracing subscriber: `EnvFilter` from `RUST_LOG` (default
//! `info`), text or JSON lines. Only `main` calls it; tests log nothing.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber for the process.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
