//! Structured logging with `tracing`: plain text or one JSON object per line. Verbosity
//! follows klog's `-v`; `RUST_LOG` overrides it for fine-grained filters.

use crate::cli::LogFormat;
use tracing_subscriber::EnvFilter;

pub fn level_for_verbosity(v: u8) -> &'static str {
    match v {
        0 => "info",
        1..=4 => "debug",
        _ => "trace",
    }
}

/// Install the global subscriber (writes to stderr). Safe to call once per process.
pub fn init(format: LogFormat, verbosity: u8) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level_for_verbosity(verbosity)));
    // Colour only for a terminal: journald, kubectl logs and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
