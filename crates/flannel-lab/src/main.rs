//! `flannel-lab`: the cluster-in-a-box command line.

use anyhow::Context;
use clap::{Parser, Subcommand};
use flannel_lab::lab::{self, Bins, ConsoleAction, Lab};
use flannel_lab::topology::{Backend, LabSpec, Mode};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "flannel-lab",
    about = "A Tencent-VPC-style flannel cluster in network namespaces (root)"
)]
struct Cli {
    /// The lab's name: 1 to 8 of a-z and 0-9, the prefix of its namespaces and the name of
    /// its state directory (several labs can coexist).
    #[arg(long, global = true, default_value = "fl", value_parser = lab_prefix)]
    prefix: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the lab and wait until every pod reaches every other pod.
    Up {
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=i64::from(flannel_lab::topology::MAX_NODES)))]
        nodes: u8,
        #[arg(long, value_enum, default_value = "tencent-vpc")]
        backend: Backend,
        #[arg(long, value_enum, default_value = "per-node")]
        mode: Mode,
        /// Routes per route table (the account quota).
        #[arg(long, default_value_t = flannel_lab::topology::DEFAULT_QUOTA)]
        route_quota: usize,
        /// tencent-vpc: reach the leases the tables cannot hold over vxlan ("Fallback": "vxlan").
        #[arg(long)]
        fallback: bool,
        /// The lease store (etcd is the one the lab runs).
        #[arg(long, default_value = "etcd", value_parser = ["etcd"])]
        store: String,
        /// Kubernetes: a control plane, containerd and a kubelet on every node, and flannel
        /// from deploy/ (the image, the DaemonSet) applied with kubectl.
        #[arg(long)]
        kube: bool,
        /// Where flanneld, flannel and tencent-vpc-emulator are (default: beside flannel-lab).
        #[arg(long)]
        bin_dir: Option<std::path::PathBuf>,
        /// `--kube`: where kube-apiserver, kube-controller-manager, kube-scheduler and kubelet
        /// are.
        #[arg(long, default_value = "/opt/flannel-rs/bin")]
        kube_bin_dir: std::path::PathBuf,
        /// `--kube`: where the image archives are (default: target/image beside the binaries).
        #[arg(long)]
        image_dir: Option<std::path::PathBuf>,
    },
    /// kubectl as the lab's admin, inside the lab (`--kube` labs): `flannel-lab kubectl get pods -A`.
    Kubectl {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Nodes, leases, route tables and the reachability matrix.
    Status {
        /// Also draw it as an SVG picture into this file.
        #[arg(long)]
        svg: Option<std::path::PathBuf>,
    },
    /// The pod-to-pod reachability matrix only.
    Ping,
    /// Add a node (and a pod on it); waits until it is reachable.
    AddNode,
    /// Kill a node's flanneld (SIGKILL: it cleans nothing up).
    KillNode { name: String },
    /// Start a node's flanneld again.
    RestartNode { name: String },
    /// Edit the route tables as a user would in the cloud console.
    Console {
        #[command(subcommand)]
        action: Console,
    },
    /// Change the routes-per-table quota (as a raise by support would).
    Quota { routes: usize },
    /// Answer PERCENT % of all cloud API calls with RequestLimitExceeded (0 stops it).
    Throttle {
        #[arg(value_parser = clap::value_parser!(u8).range(0..=100))]
        percent: u8,
    },
    /// Remove the lab: processes, namespaces, files.
    Down,
}

#[derive(Subcommand)]
enum Console {
    /// Delete the routes to DESTINATION (in TABLE, or in every table).
    DeleteRoute {
        destination: String,
        #[arg(long)]
        table: Option<String>,
    },
    /// Disable the routes to DESTINATION.
    DisableRoute {
        destination: String,
        #[arg(long)]
        table: Option<String>,
    },
}

fn lab_prefix(s: &str) -> Result<String, String> {
    flannel_lab::topology::check_prefix(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flannel-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_status(lab: &Lab) -> anyhow::Result<()> {
    let status = flannel_lab::status(lab)?;
    print!("{}", flannel_lab::render::render(&status));
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let prefix = cli.prefix;
    match cli.command {
        Command::Up {
            nodes,
            backend,
            mode,
            route_quota,
            fallback,
            store: _,
            kube,
            bin_dir,
            kube_bin_dir,
            image_dir,
        } => {
            let spec = LabSpec {
                prefix: prefix.clone(),
                backend,
                mode,
                route_quota,
                fallback,
                kube,
            };
            let mut bins = Bins::from_dir(bin_dir);
            bins.kube_bin_dir = kube_bin_dir;
            if let Some(dir) = image_dir {
                bins.image_dir = dir;
            }
            let started = std::time::Instant::now();
            let lab = Lab::up(spec, nodes, bins, &mut |step| {
                println!("[{:5.1}s] {step}", started.elapsed().as_secs_f64());
            })
            .with_context(|| format!("lab up failed; logs in {}; `flannel-lab --prefix {prefix} down` removes what was made", lab::state_dir(&prefix).display()))?;
            println!();
            print_status(&lab)?;
            println!("\nThe lab stays up: `flannel-lab status`, `ping`, `add-node`, `kill-node node-2`, `console delete-route 10.244.x.0/24`, `throttle 50`, `down`.");
            println!("Logs and files: {}", lab.dir.display());
            println!(
                "The cloud API also answers on https://172.16.1.1 (inside the lab) for tccli; trust its CA with:\n  cat {}/ca.pem >> \"$(python3 -m certifi)\"   # in tccli's Python environment",
                lab.dir.display()
            );
        }
        Command::Status { svg } => {
            let lab = Lab::load(&prefix)?;
            let status = flannel_lab::status(&lab)?;
            print!("{}", flannel_lab::render::render(&status));
            if let Some(path) = svg {
                std::fs::write(&path, flannel_lab::render::render_svg(&status))
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("drawn to {}", path.display());
            }
        }
        Command::Ping => {
            let lab = Lab::load(&prefix)?;
            let mut status = flannel_lab::status(&lab)?;
            status.tables.clear();
            print!("{}", flannel_lab::render::render(&status));
            let failed = status.failed_pairs();
            anyhow::ensure!(
                failed == 0,
                "{failed} pairs of live pods cannot reach each other"
            );
        }
        Command::AddNode => {
            let mut lab = Lab::load(&prefix)?;
            let n = lab.add_node()?;
            println!(
                "{} added ({}, {}); reachable after {:.1} s",
                n.name,
                n.ip,
                n.subnet.id(),
                lab.state.converged_secs.unwrap_or_default()
            );
        }
        Command::KillNode { name } => {
            Lab::load(&prefix)?.kill_node(&name)?;
            println!("{name}: flanneld killed (its lease and routes stay until they expire or are collected)");
        }
        Command::RestartNode { name } => {
            Lab::load(&prefix)?.restart_node(&name)?;
            println!("{name}: flanneld restarted");
        }
        Command::Console { action } => {
            let lab = Lab::load(&prefix)?;
            let (what, destination, table) = match &action {
                Console::DeleteRoute { destination, table } => {
                    (ConsoleAction::DeleteRoute, destination, table)
                }
                Console::DisableRoute { destination, table } => {
                    (ConsoleAction::DisableRoute, destination, table)
                }
            };
            let touched = lab.console(what, destination, table.as_deref())?;
            anyhow::ensure!(
                !touched.is_empty(),
                "no route to {destination} in {}",
                table.as_deref().unwrap_or("any table")
            );
            println!("{:?} {}: {}", what, destination, touched.join(", "));
        }
        Command::Quota { routes } => {
            Lab::load(&prefix)?.set_quota(routes)?;
            println!("route quota now {routes} per table");
        }
        Command::Throttle { percent } => {
            Lab::load(&prefix)?.throttle(percent)?;
            println!("throttling {percent} % of API calls");
        }
        Command::Kubectl { args } => {
            let lab = Lab::load(&prefix)?;
            anyhow::ensure!(lab.spec().kube, "lab {prefix:?} is not a --kube lab");
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            print!("{}", lab.kubectl(&args)?);
        }
        Command::Down => {
            let removed = lab::down(&prefix)?;
            println!(
                "removed {} namespaces and {} processes",
                removed.namespaces.len(),
                removed.processes
            );
        }
    }
    Ok(())
}
