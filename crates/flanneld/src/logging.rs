//! Structured logging with `tracing`: plain text or one JSON object per line. Verbosity
//! follows klog's `-v` and applies to flannel-rs's own crates; dependencies (tonic, h2,
//! hyper, reqwest...) stay at warn, so `-v=2` is not drowned in frame-level lines.
//! `RUST_LOG` overrides all of it for fine-grained filters.

use crate::cli::LogFormat;
use tracing_subscriber::EnvFilter;

/// The tracing targets of our own crates (a target is the crate's module path).
const OUR_CRATES: &[&str] = &[
    "flanneld",
    "flannelctl",
    "flannel_core",
    "tencent_cloud",
    "jittered_backoff",
];

/// flanneld's level for our crates at klog verbosity `v`.
pub fn level_for_verbosity(v: u8) -> &'static str {
    match v {
        0 => "info",
        1..=4 => "debug",
        _ => "trace",
    }
}

/// An EnvFilter directive: dependencies at warn, our crates at `ours`.
pub fn directives(ours: &str) -> String {
    std::iter::once("warn".to_string())
        .chain(OUR_CRATES.iter().map(|c| format!("{c}={ours}")))
        .collect::<Vec<_>>()
        .join(",")
}

/// Install the global subscriber (writes to stderr) with our crates at `ours` unless
/// `RUST_LOG` is set. Safe to call once per process.
pub fn init_at(format: LogFormat, ours: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(directives(ours)));
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

/// flanneld's logging: klog verbosity.
pub fn init(format: LogFormat, verbosity: u8) {
    init_at(format, level_for_verbosity(verbosity));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_raises_our_crates_only() {
        assert_eq!(
            directives("debug"),
            "warn,flanneld=debug,flannelctl=debug,flannel_core=debug,tencent_cloud=debug,jittered_backoff=debug"
        );
        // The directive is one EnvFilter accepts.
        assert!(EnvFilter::try_new(directives("trace")).is_ok());
    }
}
