//! Structured logging with `tracing`: plain text or one JSON object per line. Verbosity
//! follows klog's `-v` and applies to flannel-rs's own crates; dependencies (tonic, h2,
//! hyper, reqwest...) stay at warn, so `-v=2` is not drowned in frame-level lines.
//! `RUST_LOG` (`level` and `target=level` directives, comma-separated) overrides all of it.
//! The filter is tracing-subscriber's `Targets`, not `EnvFilter`: no span or field filters,
//! and so no regex engine compiled at every start.

use crate::cli::LogFormat;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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

/// The filter's directives: dependencies at warn, our crates at `ours`.
pub fn directives(ours: &str) -> String {
    std::iter::once("warn".to_string())
        .chain(OUR_CRATES.iter().map(|c| format!("{c}={ours}")))
        .collect::<Vec<_>>()
        .join(",")
}

/// The filter: `RUST_LOG` when it is set and parses, else `directives(ours)` and, for a
/// `RUST_LOG` that does not parse, why (logged once the subscriber is up).
fn filter(rust_log: Option<&str>, ours: &str) -> (Targets, Option<String>) {
    let ours = || directives(ours).parse().unwrap_or_default();
    match rust_log.map(str::parse::<Targets>) {
        None => (ours(), None),
        Some(Ok(t)) => (t, None),
        Some(Err(e)) => (ours(), Some(e.to_string())),
    }
}

/// Install the global subscriber (writes to stderr) with our crates at `ours` unless
/// `RUST_LOG` is set. Safe to call once per process.
pub fn init_at(format: LogFormat, ours: &str) {
    // Colour only for a terminal: journald, kubectl logs and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let rust_log = std::env::var("RUST_LOG").ok();
    let (targets, refused) = filter(rust_log.as_deref(), ours);
    let registry = tracing_subscriber::registry().with(targets);
    let _ = match format {
        LogFormat::Plain => registry.with(layer).try_init(),
        LogFormat::Json => registry.with(layer.json().flatten_event(true)).try_init(),
    };
    if let Some(error) = refused {
        tracing::warn!(%error, "RUST_LOG ignored: it takes `level` and `target=level` directives");
    }
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
        // The directives parse, and say what they mean.
        let t: Targets = directives("trace").parse().unwrap();
        assert_eq!(
            t.default_level(),
            Some(tracing::level_filters::LevelFilter::WARN)
        );
        assert!(t.would_enable("flannel_core::lease", &tracing::Level::TRACE));
        assert!(!t.would_enable("h2::codec", &tracing::Level::INFO));
    }

    #[test]
    fn rust_log_wins_when_it_parses_and_is_refused_by_name_when_not() {
        let (t, refused) = filter(Some("off"), "debug");
        assert!(!t.would_enable("flanneld", &tracing::Level::ERROR));
        assert!(refused.is_none());
        let (t, refused) = filter(Some("flanneld[span{x=1}]=debug"), "debug");
        assert!(t.would_enable("flanneld::daemon", &tracing::Level::DEBUG));
        assert!(!t.would_enable("h2", &tracing::Level::INFO));
        assert!(refused.is_some());
        let (t, refused) = filter(None, "info");
        assert!(!t.would_enable("flanneld", &tracing::Level::DEBUG));
        assert!(refused.is_none());
    }
}
