//! flannel-rs node daemon library: CLI, interface selection, subnet managers, backends,
//! the daemon loop and the health/metrics server. The binaries `flanneld` and `flannelctl`
//! are thin shells over this.

pub mod backend;
pub mod cli;
pub mod cloud;
pub mod controller;
pub mod ctl;
pub mod daemon;
pub mod health;
pub mod iface;
pub mod kernel;
pub mod lease_feed;
pub mod logging;
pub mod metrics;
pub mod name_service;
pub mod probe;
pub mod subnet;
pub mod subnet_file;
pub mod traffic;

pub use error_report::{report, Report};

/// The version printed by `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `d` from now, or a year from now when `d` would overflow the clock: timers built from
/// configuration or the store never panic.
pub fn after(d: std::time::Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + std::time::Duration::from_secs(365 * 24 * 3600))
}
