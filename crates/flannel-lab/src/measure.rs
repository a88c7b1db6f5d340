//! What the lab's benchmarks share: knobs from the environment, medians, iperf3 between
//! namespaces.

use crate::lab::{self, Bins, Lab, Reach};
use crate::netns::{wait_until, Netns};
use crate::topology::LabSpec;
use std::time::Duration;

/// A lab for a benchmark: any leftover of the same prefix removed first, progress on stderr,
/// and on failure removed again before panicking. `FLANNELD=path` runs another build of the
/// daemon (e.g. the shipped `target/shipped/flanneld`) than the one in `bin_dir`.
pub fn fresh_lab(spec: LabSpec, nodes: u8, bin_dir: std::path::PathBuf, reach: Reach) -> Lab {
    let prefix = spec.prefix.clone();
    let _ = lab::down(&prefix);
    let mut bins = Bins::from_dir(Some(bin_dir));
    if let Some(daemon) = std::env::var_os("FLANNELD") {
        bins.flanneld = daemon.into();
    }
    Lab::up_until(spec, nodes, bins, &mut |s| eprintln!("  {s}"), reach).unwrap_or_else(|e| {
        let _ = lab::down(&prefix);
        panic!("lab up: {e}")
    })
}

/// Every API call the emulator has answered, whatever the action and result.
pub fn total_calls(
    calls: &std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
) -> u64 {
    calls.values().flat_map(|r| r.values()).sum()
}

/// A numeric knob from the environment, or its default.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One iperf3 TCP run of `secs` from namespace `from` to `to` (a server must be listening
/// there); Gbit/s received. Retried until the server answers.
pub fn iperf3_gbps(from: &str, to: &str, secs: u64) -> Result<f64, String> {
    wait_until(Duration::from_secs(secs + 30), || {
        let out = Netns::named(from)
            .run(&["iperf3", "-c", to, "-t", &secs.to_string(), "-J"], None)
            .map_err(|e| e.to_string())?;
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        json["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .map(|b| b / 1e9)
            .ok_or_else(|| json["error"].to_string())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(super::median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(super::median(vec![]).is_nan());
    }
}
