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
pub mod subnet;
pub mod subnet_file;
pub mod traffic;

pub use error_report::{report, Report};

/// The version printed by `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
