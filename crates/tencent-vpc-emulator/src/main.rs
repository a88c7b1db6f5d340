//! tencent-vpc-emulator: serve an emulated Tencent Cloud VPC account from a scenario file.
//! Prints one JSON line with the bound addresses, then serves until SIGINT/SIGTERM.

use anyhow::Context;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use tencent_vpc_emulator::scenario::Scenario;
use tencent_vpc_emulator::{Emulator, EmulatorConfig, TlsListen};

#[derive(Parser)]
#[command(
    name = "tencent-vpc-emulator",
    version,
    about = "Tencent Cloud VPC emulator (API, metadata, admin, netns data plane)"
)]
struct Args {
    /// Scenario file (JSON): credentials, VPCs, route tables, subnets, instances, quotas.
    #[arg(long)]
    scenario: PathBuf,
    /// The signed API (POST /).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// The metadata service (/latest/meta-data/...); off when absent.
    #[arg(long = "metadata-listen")]
    metadata_listen: Option<SocketAddr>,
    /// The admin API (faults, state, calls, console edits, reset); off when absent.
    #[arg(long = "admin-listen")]
    admin_listen: Option<SocketAddr>,
    /// Keep state across restarts in this file.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Mirror route tables into this network namespace (the VPC router).
    #[arg(long = "dataplane-netns")]
    dataplane_netns: Option<String>,
    /// Metadata answers for this instance when the caller's address is no instance's.
    #[arg(long = "metadata-default-instance")]
    metadata_default_instance: Option<String>,
    /// Also serve the API over HTTPS here (with --tls-cert and --tls-key), for tccli.
    #[arg(long = "tls-listen", requires_all = ["tls_cert", "tls_key"])]
    tls_listen: Option<SocketAddr>,
    /// Certificate chain (PEM) of the HTTPS listener.
    #[arg(long = "tls-cert")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of the HTTPS listener.
    #[arg(long = "tls-key")]
    tls_key: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: never escape codes in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.scenario)
        .with_context(|| format!("reading {}", args.scenario.display()))?;
    let scenario =
        Scenario::from_json(&text).with_context(|| format!("{}", args.scenario.display()))?;
    let emu = Emulator::start(EmulatorConfig {
        scenario,
        api_listen: args.listen,
        metadata_listen: args.metadata_listen,
        admin_listen: args.admin_listen,
        state_file: args.state,
        dataplane_netns: args.dataplane_netns,
        metadata_default_instance: args.metadata_default_instance,
        api_tls: match (args.tls_listen, args.tls_cert, args.tls_key) {
            (Some(addr), Some(cert), Some(key)) => Some(TlsListen { addr, cert, key }),
            _ => None,
        },
    })
    .await?;
    println!(
        "{}",
        serde_json::json!({"api": emu.api.to_string(), "api_tls": emu.api_tls.map(|a| a.to_string()), "metadata": emu.metadata.map(|a| a.to_string()), "admin": emu.admin.map(|a| a.to_string())})
    );
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
