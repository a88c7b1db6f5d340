//! flanneld: the flannel-rs node agent. A thin shell: parse flags, pick the subnet manager,
//! run the daemon until a signal.

use anyhow::{bail, Context};
use flanneld::backend::Builtin;
use flanneld::cli::Options;
use flanneld::daemon::{self, DaemonConfig, DaemonError};
use flanneld::health::{self, Health};
use flanneld::kernel::SystemNetwork;
use flanneld::subnet::etcd::EtcdManager;
use flanneld::subnet::memory::MemoryManager;
use flanneld::subnet::{SubnetError, SubnetManager};
use flanneld::traffic::TrafficOptions;
use flanneld::{logging, VERSION};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

fn main() -> ExitCode {
    flanneld::name_service::pin_for_static_glibc();
    let opts = match Options::parse_with_env(std::env::args_os(), |k| std::env::var(k).ok()) {
        Ok(o) => o,
        Err(e) => e.exit(),
    };
    if opts.version {
        // Upstream prints the version to stderr.
        eprintln!("{VERSION}");
        return ExitCode::SUCCESS;
    }
    logging::init(opts.log_format, opts.verbosity);
    // One thread: the daemon waits on the network, the store and the cloud, never on its own
    // CPU, and each worker thread costs a stack and a malloc arena (and the work-stealing
    // scheduler, code the kernel maps in whether it runs or not). Blocking work (hooks, the
    // data path probe, name lookups) goes to tokio's blocking pool.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let text = flanneld::report(e.as_ref());
            error!("{text}");
            eprintln!("flanneld: {text}");
            ExitCode::FAILURE
        }
    }
}

fn unsupported_flags(opts: &Options) -> anyhow::Result<()> {
    if !opts.vmodule.is_empty() || !opts.log_backtrace_at.is_empty() {
        warn!("-vmodule and -log_backtrace_at are accepted for compatibility and ignored");
    }
    Ok(())
}

async fn subnet_manager(opts: &Options) -> anyhow::Result<Arc<dyn SubnetManager>> {
    if opts.kube.kube_subnet_mgr {
        let mut o = opts.kube.to_options(&|k| std::env::var(k).ok());
        o.set_network_unavailable = opts.set_node_network_unavailable;
        // The controller holds no lease: it is no node's.
        let m = if opts.controller {
            flanneld::subnet::kube::KubeManager::observer(&o).await
        } else {
            flanneld::subnet::kube::KubeManager::connect(&o).await
        };
        return Ok(Arc::new(m.context("Kubernetes subnet manager")?));
    }
    if opts.local_subnet_mgr {
        let path = &opts.kube.net_config_path;
        let text = std::fs::read_to_string(path).map_err(|source| SubnetError::ConfigFile {
            path: path.display().to_string(),
            source,
        })?;
        let config = flannel_core::config::parse_and_check(&text)
            .with_context(|| format!("network config {}", path.display()))?;
        return Ok(Arc::new(MemoryManager::new(config)));
    }
    let mut etcd = opts.etcd.to_options();
    etcd.lease_ttl = opts.lease_ttl();
    let mgr = EtcdManager::connect(&etcd).await;
    Ok(Arc::new(mgr.with_context(|| {
        format!(
            "etcd subnet manager ({})",
            error_report::redact_urls(&etcd.endpoints.join(","))
        )
    })?))
}

/// Resolves at the first SIGINT or SIGTERM: the daemon then drains (the reconcile in flight
/// finishes, no timer fires again) and exits. A second signal exits at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = int.recv() => info!("received SIGINT; draining (a second signal exits at once)"),
        _ = term.recv() => info!("received SIGTERM; draining (a second signal exits at once)"),
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        warn!("second signal: exiting now");
        std::process::exit(130);
    });
}

async fn run(opts: Options) -> anyhow::Result<()> {
    opts.validate()?;
    info!(version = VERSION, options = ?opts, "starting flanneld");
    unsupported_flags(&opts)?;
    let sm = subnet_manager(&opts).await?;

    let health = Arc::new(Health::default());
    if opts.healthz_port != 0 {
        let addr = std::net::SocketAddr::new(opts.healthz_ip, opts.healthz_port);
        let (bound, serve) = health::bind(addr, health.clone())
            .await
            .with_context(|| format!("binding the health server on {addr}"))?;
        info!(addr = %bound, "serving /healthz, /readyz and /metrics");
        tokio::spawn(async move {
            if let Err(e) = serve.await {
                error!(error = %e, "health server stopped");
            }
        });
    }

    if opts.controller {
        let identity = flanneld::controller::identity(&|k| std::env::var(k).ok());
        return flanneld::controller::run(
            flanneld::controller::ControllerOptions { identity },
            sm,
            health,
            shutdown_signal(),
        )
        .await
        .map_err(Into::into);
    }

    let can_reach = if opts.iface_can_reach.is_empty() {
        None
    } else {
        Some(opts.iface_can_reach.parse().with_context(|| {
            format!(
                "invalid --iface-can-reach {:?}: expected an IP address",
                opts.iface_can_reach
            )
        })?)
    };
    let cfg = DaemonConfig {
        subnet_file: opts.subnet_file.clone(),
        ifaces: opts.iface.clone(),
        iface_regexes: opts.iface_regex.clone(),
        iface_can_reach: can_reach,
        public_ip: opts.public_ip,
        public_ipv6: opts.public_ipv6,
        renew_margin: opts.renew_margin(),
        resync_period: Duration::from_secs(opts.resync_period),
        traffic: TrafficOptions {
            masquerade: opts.ip_masq,
            forward: opts.iptables_forward_rules,
            blackhole: opts.ip_blackhole_route,
            random_fully: !opts.ip_masq_fully_random_disable,
        },
        traffic_resync: Duration::from_secs(opts.iptables_resync.max(1)),
    };
    match daemon::run(cfg, sm, &Builtin, &SystemNetwork, health, shutdown_signal()).await {
        Ok(_) => Ok(()),
        Err(DaemonError::LeaseRevoked) => bail!("Lease has been revoked. Shutting down daemon."),
        Err(e) => Err(e.into()),
    }
}
