//! flannel-rs node daemon library: CLI, interface selection, subnet managers, backends,
//! the daemon loop and the health/metrics server. The binaries `flanneld` and `flannelctl`
//! are thin shells over this.

pub mod backend;
pub mod cli;
pub mod cloud;
pub mod ctl;
pub mod daemon;
pub mod health;
pub mod iface;
pub mod kernel;
pub mod logging;
pub mod metrics;
pub mod subnet;
pub mod subnet_file;

/// An error and its chain of causes on one line, `outer: cause: root` (each error's Display
/// names only itself, so nothing repeats).
pub fn report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !text.is_empty() && !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = c.source();
    }
    out
}

/// The version printed by `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
