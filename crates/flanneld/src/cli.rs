//! flanneld's command line: upstream's flags with upstream's defaults, plus a few of ours.
//!
//! Go's `flag` package accepts `-name`, `--name`, `-name=value` and `-name value`, and bool
//! flags take no separate value (`-ip-masq`, `-ip-masq=false`). We normalise single-dash long
//! flags to double-dash before clap sees them. `FLANNELD_<NAME>` environment variables
//! (upper case, `-` → `_`) apply only to flags absent from the command line, and an empty
//! value is ignored, exactly like upstream's `flagutil.SetFlagsFromEnv`.

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, ValueEnum};
use secrecy::SecretString;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

/// The environment variable prefix upstream uses.
pub const ENV_PREFIX: &str = "FLANNELD";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Parse a bool the way Go's `strconv.ParseBool` does.
pub fn go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("invalid boolean value {s:?} (use true or false)")),
    }
}

fn secret(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s.to_string()))
}

/// upstream's etcd flags, shared by flanneld and flannelctl. `Debug` never shows the password,
/// nor a user and password written into an endpoint URL.
#[derive(Clone, clap::Args)]
pub struct EtcdArgs {
    /// A comma-delimited list of etcd endpoints.
    #[arg(
        long = "etcd-endpoints",
        default_value = "http://127.0.0.1:4001,http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: String,
    /// etcd prefix.
    #[arg(long = "etcd-prefix", default_value = "/coreos.com/network")]
    pub etcd_prefix: String,
    /// SSL key file used to secure etcd communication.
    #[arg(long = "etcd-keyfile", default_value = "")]
    pub etcd_keyfile: String,
    /// SSL certification file used to secure etcd communication.
    #[arg(long = "etcd-certfile", default_value = "")]
    pub etcd_certfile: String,
    /// SSL Certificate Authority file used to secure etcd communication.
    #[arg(long = "etcd-cafile", default_value = "")]
    pub etcd_cafile: String,
    /// Username for BasicAuth to etcd.
    #[arg(long = "etcd-username", default_value = "")]
    pub etcd_username: String,
    /// Password for BasicAuth to etcd (never logged).
    #[arg(long = "etcd-password", value_parser = secret, hide_default_value = true)]
    pub etcd_password: Option<SecretString>,
}

impl std::fmt::Debug for EtcdArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdArgs")
            .field(
                "etcd_endpoints",
                &error_report::redact_urls(&self.etcd_endpoints),
            )
            .field("etcd_prefix", &self.etcd_prefix)
            .field("etcd_keyfile", &self.etcd_keyfile)
            .field("etcd_certfile", &self.etcd_certfile)
            .field("etcd_cafile", &self.etcd_cafile)
            .field("etcd_username", &self.etcd_username)
            .field("etcd_password", &self.etcd_password)
            .finish()
    }
}

impl EtcdArgs {
    pub fn to_options(&self) -> crate::subnet::etcd::EtcdOptions {
        let path = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
        let mut e = crate::subnet::etcd::EtcdOptions::new(&self.etcd_endpoints, &self.etcd_prefix);
        e.keyfile = path(&self.etcd_keyfile);
        e.certfile = path(&self.etcd_certfile);
        e.cafile = path(&self.etcd_cafile);
        e.username = (!self.etcd_username.is_empty()).then(|| self.etcd_username.clone());
        e.password = self.etcd_password.clone();
        e
    }
}

/// The Kubernetes store's flags (flanneld's, also flannelctl's).
#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    /// Contact the Kubernetes API for subnet assignment instead of etcd.
    #[arg(long = "kube-subnet-mgr", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool, action = ArgAction::Set)]
    pub kube_subnet_mgr: bool,
    /// Kubernetes API server URL. Does not need to be specified if flannel is running in a pod.
    #[arg(long = "kube-api-url", default_value = "")]
    pub kube_api_url: String,
    /// kubeconfig file location. Does not need to be specified if flannel is running in a pod.
    #[arg(long = "kubeconfig-file", default_value = "")]
    pub kubeconfig_file: String,
    /// Kubernetes annotation prefix. Can contain a single slash "/", e.g. "example.com/my-prefix".
    #[arg(
        long = "kube-annotation-prefix",
        default_value = "flannel.alpha.coreos.com"
    )]
    pub kube_annotation_prefix: String,
    /// Path to the network configuration file to use (Kubernetes and local modes).
    #[arg(
        long = "net-config-path",
        default_value = "/etc/kube-flannel/net-conf.json"
    )]
    pub net_config_path: PathBuf,
}

impl KubeArgs {
    /// The Kubernetes manager's options (the node's identity from the environment).
    pub fn to_options(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> crate::subnet::kube::KubeOptions {
        let env = |k: &str| env(k).filter(|v| !v.is_empty());
        crate::subnet::kube::KubeOptions {
            kubeconfig: (!self.kubeconfig_file.is_empty())
                .then(|| self.kubeconfig_file.clone().into()),
            api_url: (!self.kube_api_url.is_empty()).then(|| self.kube_api_url.clone()),
            node_name: env("NODE_NAME"),
            pod_name: env("POD_NAME"),
            pod_namespace: env("POD_NAMESPACE"),
            annotation_prefix: self.kube_annotation_prefix.clone(),
            net_config_path: self.net_config_path.clone(),
            set_network_unavailable: true,
        }
    }
}

/// Where the leases are, for an operator (flannelctl): etcd by default, the Kubernetes API
/// with `--kube-subnet-mgr` (the same flags as flanneld's).
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub kube: KubeArgs,
}

impl StoreArgs {
    /// The store, opened by one that holds no lease.
    pub async fn open(
        &self,
    ) -> Result<std::sync::Arc<dyn crate::subnet::SubnetManager>, crate::subnet::SubnetError> {
        if self.kube.kube_subnet_mgr {
            let o = self.kube.to_options(&|k| std::env::var(k).ok());
            return Ok(std::sync::Arc::new(
                crate::subnet::kube::KubeManager::observer(&o).await?,
            ));
        }
        Ok(std::sync::Arc::new(
            crate::subnet::etcd::EtcdManager::connect(&self.etcd.to_options()).await?,
        ))
    }
}

/// Every flag of flanneld. `Debug` never shows the etcd password.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "flanneld",
    about = "flannel-rs node agent: acquires a pod subnet lease and programs the network for it",
    disable_version_flag = true,
    max_term_width = 100
)]
pub struct Options {
    #[command(flatten)]
    pub etcd: EtcdArgs,

    #[command(flatten)]
    pub kube: KubeArgs,
    /// Set the NetworkUnavailable node condition to false once the network is ready.
    #[arg(long = "set-node-network-unavailable", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_parser = go_bool, action = ArgAction::Set)]
    pub set_node_network_unavailable: bool,

    // --- interface ---
    /// Interface to use (IP or name) for inter-host communication. Can be repeated; the
    /// first match wins.
    #[arg(long = "iface", action = ArgAction::Append)]
    pub iface: Vec<String>,
    /// Regex of the interface (IP or name) to use. Can be repeated; tried after --iface.
    #[arg(long = "iface-regex", action = ArgAction::Append)]
    pub iface_regex: Vec<String>,
    /// Detect the interface to use from the route to this address.
    #[arg(long = "iface-can-reach", default_value = "")]
    pub iface_can_reach: String,
    /// IP accessible by other nodes for inter-host communication.
    #[arg(long = "public-ip")]
    pub public_ip: Option<Ipv4Addr>,
    /// IPv6 accessible by other nodes for inter-host communication.
    #[arg(long = "public-ipv6")]
    pub public_ipv6: Option<Ipv6Addr>,

    // --- lease ---
    /// Filename where env variables (subnet, MTU, ...) will be written to.
    #[arg(long = "subnet-file", default_value = "/run/flannel/subnet.env")]
    pub subnet_file: PathBuf,
    /// Subnet lease renewal margin, in minutes, ranging from 1 to 1439.
    #[arg(
        long = "subnet-lease-renew-margin",
        default_value_t = 60,
        allow_negative_numbers = true
    )]
    pub subnet_lease_renew_margin: i64,
    /// (flannel-rs) Lifetime of an etcd subnet lease, in seconds, from 10 to 604800; the
    /// renewal margin is at most half of it. Upstream's is fixed at 86400 (24 h). A short
    /// lifetime lets a dead node's subnet and routes go sooner (the lab uses 30 s).
    #[arg(
        long = "subnet-lease-ttl",
        default_value_t = 86400,
        allow_negative_numbers = true
    )]
    pub subnet_lease_ttl: i64,

    // --- traffic rules ---
    /// Setup IP masquerade rule for traffic destined outside of the overlay network.
    #[arg(long = "ip-masq", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool, action = ArgAction::Set)]
    pub ip_masq: bool,
    /// Disable the fully random source port in masquerade rules.
    #[arg(long = "ip-masq-fully-random-disable", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool, action = ArgAction::Set)]
    pub ip_masq_fully_random_disable: bool,
    /// Resync period for iptables rules, in seconds (1 to 3600).
    #[arg(long = "iptables-resync", default_value_t = 5)]
    pub iptables_resync: u64,
    /// Add default accept rules to the FORWARD chain.
    #[arg(long = "iptables-forward-rules", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_parser = go_bool, action = ArgAction::Set)]
    pub iptables_forward_rules: bool,
    /// Add a blackhole route for the node's own subnet.
    #[arg(long = "ip-blackhole-route", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool, action = ArgAction::Set)]
    pub ip_blackhole_route: bool,

    // --- health and logging ---
    /// The IP address on which to listen for health checks.
    #[arg(long = "healthz-ip", default_value = "0.0.0.0")]
    pub healthz_ip: IpAddr,
    /// The port to listen on for health checks (0 disables the server).
    #[arg(long = "healthz-port", default_value_t = 0)]
    pub healthz_port: u16,
    /// Log verbosity (klog -v): 0 info, 1-4 debug, 5 and up trace.
    #[arg(long = "v", default_value_t = 0)]
    pub verbosity: u8,
    /// Accepted for compatibility with upstream's klog flags; has no effect.
    #[arg(long = "vmodule", default_value = "", hide = true)]
    pub vmodule: String,
    /// Accepted for compatibility with upstream's klog flags; has no effect.
    #[arg(long = "log_backtrace_at", default_value = "", hide = true)]
    pub log_backtrace_at: String,
    /// Log format: plain text or one JSON object per line.
    #[arg(long = "log-format", value_enum, default_value = "plain")]
    pub log_format: LogFormat,

    // --- flannel-rs additions ---
    /// Keep leases in this process instead of etcd or Kubernetes (single node, labs, tests).
    /// The network config is read from --net-config-path.
    #[arg(long = "local-subnet-mgr", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool, action = ArgAction::Set)]
    pub local_subnet_mgr: bool,
    /// Run the tencent-vpc route controller instead of a node agent: hold no lease, program
    /// no kernel state, stand for election and, while leading, route every lease.
    #[arg(long = "controller", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool, action = ArgAction::Set)]
    pub controller: bool,
    /// Seconds between full reconciliations of the backend (jittered by up to 10%), 1 to
    /// 3600.
    #[arg(long = "resync-period", default_value_t = 30)]
    pub resync_period: u64,

    /// Print version and exit.
    #[arg(long = "version", action = ArgAction::SetTrue)]
    pub version: bool,
}

/// Bad command-line input found after parsing.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("invalid --subnet-lease-renew-margin {0}: must be between 1 and 1439 minutes")]
    RenewMargin(i64),
    #[error("invalid --subnet-lease-ttl {0}: must be between 10 and 604800 seconds")]
    LeaseTtl(i64),
    #[error("invalid --iface-regex {pattern:?}")]
    IfaceRegex {
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error("invalid --resync-period {0}: must be between 1 and {MAX_PERIOD_SECS} seconds")]
    ResyncPeriod(u64),
    #[error("invalid --iptables-resync {0}: must be between 1 and {MAX_PERIOD_SECS} seconds")]
    IptablesResync(u64),
}

/// The longest period a flag may set (an hour): a timer beyond it is a typo, and a huge one
/// would overflow the clock.
pub const MAX_PERIOD_SECS: u64 = 3600;

/// Turn Go-style single-dash long flags (`-iface=eth0`) into `--iface=eth0`. `-h` stays.
pub fn normalize_args<I: IntoIterator<Item = OsString>>(args: I) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut done = false;
    for (i, a) in args.into_iter().enumerate() {
        if i == 0 || done {
            out.push(a);
            continue;
        }
        match a.to_str() {
            Some("--") => {
                done = true;
                out.push(a);
            }
            Some(s) if s.starts_with('-') && !s.starts_with("--") && s.len() > 2 => {
                out.push(OsString::from(format!("-{s}")));
            }
            _ => out.push(a),
        }
    }
    out
}

/// The environment variable that feeds flag `long`.
pub fn env_var_name(long: &str) -> String {
    format!(
        "{ENV_PREFIX}_{}",
        long.to_ascii_uppercase().replace('-', "_")
    )
}

impl Options {
    /// How long a subnet lease lives in etcd.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.subnet_lease_ttl.unsigned_abs())
    }

    /// When to renew before expiry: the margin, but at most half the lease's lifetime.
    pub fn renew_margin(&self) -> Duration {
        Duration::from_secs(self.subnet_lease_renew_margin.unsigned_abs() * 60)
            .min(self.lease_ttl() / 2)
    }

    /// Parse `args` (argv, program name first) with `env` as the environment.
    pub fn parse_with_env(
        args: impl IntoIterator<Item = OsString>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Options, clap::Error> {
        let mut args = normalize_args(args);
        let cmd = Options::command();
        let first = cmd.clone().try_get_matches_from(&args)?;
        let mut from_env = Vec::new();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            if first.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
                continue;
            }
            if let Some(v) = env(&env_var_name(long)).filter(|v| !v.is_empty()) {
                from_env.push(OsString::from(format!("--{long}={v}")));
            }
        }
        if from_env.is_empty() {
            return Options::from_arg_matches(&first);
        }
        let at = args.len().min(1);
        args.splice(at..at, from_env);
        let matches = cmd.try_get_matches_from(&args)?;
        Options::from_arg_matches(&matches)
    }

    /// Checks clap cannot express; upstream exits 1 on a bad renew margin.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if !(1..=1439).contains(&self.subnet_lease_renew_margin) {
            return Err(OptionsError::RenewMargin(self.subnet_lease_renew_margin));
        }
        if !(10..=604_800).contains(&self.subnet_lease_ttl) {
            return Err(OptionsError::LeaseTtl(self.subnet_lease_ttl));
        }
        for p in &self.iface_regex {
            regex::Regex::new(p).map_err(|source| OptionsError::IfaceRegex {
                pattern: p.clone(),
                source,
            })?;
        }
        if !(1..=MAX_PERIOD_SECS).contains(&self.resync_period) {
            return Err(OptionsError::ResyncPeriod(self.resync_period));
        }
        if !(1..=MAX_PERIOD_SECS).contains(&self.iptables_resync) {
            return Err(OptionsError::IptablesResync(self.iptables_resync));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
