//! flannelctl: the operator CLI. `config check FILE [--cloud]` validates a network config
//! exactly as flanneld would (and, with --cloud, preflights the VPC); `leases list` shows the
//! leases (etcd, or the Kubernetes API with --kube-subnet-mgr) and whether nodes may use
//! each; `routes list|plan|gc` show and tend the tencent-vpc routes. A thin shell over
//! `flanneld::ctl`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "flannelctl", version, about = "flannel-rs operator CLI")]
struct Cli {
    /// Log verbosity on stderr for flannel-rs's own crates, klog-style as flanneld's
    /// `-v=N`: 0 warnings only, 1 info, 2-4 debug, 5 and up trace. RUST_LOG overrides it.
    #[arg(long = "v", value_name = "N", default_value_t = 0, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Network config (net-conf.json or the etcd config value).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Tencent Cloud VPC route tables.
    #[command(subcommand)]
    Routes(RoutesCommand),
    /// Subnet leases (etcd, or the Kubernetes API with --kube-subnet-mgr).
    #[command(subcommand)]
    Leases(LeasesCommand),
}

#[derive(Subcommand)]
enum LeasesCommand {
    /// Print every lease: subnet, public IP, backend type, time left, reservation, and
    /// whether nodes use it (a refused lease: the rule it broke).
    List {
        #[command(flatten)]
        store: flanneld::cli::StoreArgs,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Output,
    },
}

/// Where the cloud is, when the net-conf Backend section does not say (flags win).
#[derive(clap::Args)]
struct CloudArgs {
    /// Region (default: Backend.Region, TENCENTCLOUD_REGION, else the metadata service).
    #[arg(long)]
    region: Option<String>,
    /// public, regional, internal, a host name, or an http(s) URL (e.g. the emulator).
    #[arg(long)]
    endpoint: Option<String>,
    /// The VPC (default: Backend.VpcId, else the metadata service).
    #[arg(long = "vpc-id")]
    vpc_id: Option<String>,
    #[arg(long = "metadata-url")]
    metadata_url: Option<String>,
}

impl CloudArgs {
    fn overrides(&self) -> flanneld::ctl::routes::Overrides {
        flanneld::ctl::routes::Overrides {
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            vpc_id: self.vpc_id.clone(),
            metadata_url: self.metadata_url.clone(),
        }
    }
}

#[derive(Subcommand)]
enum RoutesCommand {
    /// Print what a controller would change to route every lease, without writing.
    Plan {
        #[command(flatten)]
        store: flanneld::cli::StoreArgs,
        #[command(flatten)]
        cloud: CloudArgs,
    },
    /// Delete this cluster's routes whose lease is gone (--dry-run: only print them).
    Gc {
        #[command(flatten)]
        store: flanneld::cli::StoreArgs,
        #[command(flatten)]
        cloud: CloudArgs,
        /// Print what would be deleted; delete nothing.
        #[arg(long = "dry-run")]
        dry_run: bool,
        /// Every route of this cluster, leased or not (uninstall).
        #[arg(long = "all-ours")]
        all_ours: bool,
        /// Also every route with this cluster's tag outside the Network (an earlier
        /// version's, for leases it should have refused), whatever its next hop.
        #[arg(long = "outside-network")]
        outside_network: bool,
    },
    /// List every route table of a VPC with its subnet associations and routes.
    List {
        /// The VPC (default: this instance's, from the metadata service).
        #[arg(long = "vpc-id")]
        vpc_id: Option<String>,
        /// Region (default: TENCENTCLOUD_REGION, else the metadata service).
        #[arg(long)]
        region: Option<String>,
        /// public, regional, internal, a host name, or an http(s) URL (e.g. the emulator).
        #[arg(long)]
        endpoint: Option<String>,
        #[arg(long = "metadata-url", default_value = tencent_cloud::metadata::DEFAULT_BASE_URL)]
        metadata_url: String,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate FILE and print the effective config with every default filled.
    Check {
        /// The config file ("-" for standard input).
        file: PathBuf,
        /// Also check the cloud (tencent-vpc): Network against the VPC, credentials,
        /// permissions for every action used, route tables, quota headroom.
        #[arg(long)]
        cloud: bool,
        #[command(flatten)]
        cloud_args: CloudArgs,
    },
}

use flanneld::ctl::commands::{self, CtlError, GcRequest, EXIT_INVALID};

fn main() -> ExitCode {
    flanneld::name_service::pin_for_static_glibc();
    // Accept Go-style single-dash long flags, as flanneld does.
    let cli = Cli::parse_from(flanneld::cli::normalize_args(std::env::args_os()));
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        2..=4 => "debug",
        _ => "trace",
    };
    flanneld::logging::init_at(flanneld::cli::LogFormat::Plain, level);
    let result: Result<(), CtlError> = match cli.command {
        Command::Config(ConfigCommand::Check {
            file,
            cloud,
            cloud_args,
        }) => {
            return match config_check(&file) {
                Some(config) if cloud => runtime().block_on(preflight(config, cloud_args)),
                Some(_) => ExitCode::SUCCESS,
                None => ExitCode::from(EXIT_INVALID),
            }
        }
        Command::Routes(RoutesCommand::Plan { store, cloud }) => runtime().block_on(async {
            let store = store.open().await?;
            let text = commands::routes_plan(store.as_ref(), &cloud.overrides()).await?;
            print!("{text}");
            Ok(())
        }),
        Command::Routes(RoutesCommand::Gc {
            store,
            cloud,
            dry_run,
            all_ours,
            outside_network,
        }) => runtime().block_on(async {
            let store = store.open().await?;
            let req = GcRequest {
                dry_run,
                all_ours,
                outside_network,
            };
            let mut say = |line: &str| println!("{line}");
            commands::routes_gc(store.as_ref(), &cloud.overrides(), req, &mut say).await
        }),
        Command::Routes(RoutesCommand::List {
            vpc_id,
            region,
            endpoint,
            metadata_url,
            output,
        }) => {
            return runtime().block_on(routes_list(vpc_id, region, endpoint, metadata_url, output))
        }
        Command::Leases(LeasesCommand::List { store, output }) => runtime().block_on(async {
            let store = store.open().await?;
            let report = commands::leases(store.as_ref()).await?;
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&report.json()).expect("JSON")
                ),
                Output::Table => print!("{}", report.render(std::time::SystemTime::now())),
            }
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flannelctl: {}", flanneld::report(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

async fn routes_list(
    vpc_id: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    metadata_url: String,
    output: Output,
) -> ExitCode {
    use tencent_cloud::ErrorClass;
    let env = |k: &str| std::env::var(k).ok();
    let setup = flanneld::cloud::CloudSetup {
        region,
        endpoint,
        metadata_url: Some(metadata_url),
        ..Default::default()
    };
    let (client, metadata, region_name) = match flanneld::cloud::connect(setup, &env).await {
        Ok(c) => (c.client, c.metadata, c.region),
        Err(e) => {
            eprintln!("flannelctl: {}", flanneld::report(&e));
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let vpc_id = match vpc_id {
        Some(v) => v,
        None => {
            let cfg = flannel_core::backend_config::TencentVpcConfig::default();
            match flanneld::backend::tencent_vpc::resolve_vpc(&cfg, &metadata).await {
                Some(v) => v,
                None => {
                    eprintln!("flannelctl: --vpc-id not given and the metadata service did not say this instance's VPC");
                    return ExitCode::from(EXIT_INVALID);
                }
            }
        }
    };
    let filters = [tencent_cloud::vpc::Filter::new(
        "vpc-id",
        &[vpc_id.as_str()],
    )];
    match client.describe_route_tables(&filters).await {
        // Every VPC has a main route table: none means no such VPC in this region.
        Ok(tables) if tables.is_empty() => {
            eprintln!("flannelctl: VPC {vpc_id} not found in region {region_name}");
            ExitCode::from(EXIT_INVALID)
        }
        Ok(tables) => {
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&tables).expect("route tables serialise")
                ),
                Output::Table => print!("{}", flanneld::ctl::render_route_tables(&tables)),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flannelctl: {}", flanneld::report(&e));
            // Auth and parameter errors are the caller's to fix (2); the rest may pass (1).
            match e.class() {
                ErrorClass::Retryable => ExitCode::FAILURE,
                _ => ExitCode::from(EXIT_INVALID),
            }
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

async fn open_routes(
    config: &flannel_core::ValidatedNetConfig,
    cloud: &CloudArgs,
) -> Result<flanneld::ctl::routes::Routes, ExitCode> {
    flanneld::ctl::routes::Routes::open(config, &cloud.overrides())
        .await
        .map_err(|e| {
            eprintln!("flannelctl: {}", flanneld::report(&e));
            ExitCode::from(EXIT_INVALID)
        })
}

async fn preflight(config: flannel_core::ValidatedNetConfig, cloud: CloudArgs) -> ExitCode {
    let routes = match open_routes(&config, &cloud).await {
        Ok(r) => r,
        Err(code) => return code,
    };
    let checks = routes.preflight(1).await;
    for c in &checks {
        eprintln!("{c}");
    }
    if checks.iter().all(|c| c.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INVALID)
    }
}

/// Check the file as flanneld would; print the effective config. None (after saying why)
/// when it is invalid.
fn config_check(file: &PathBuf) -> Option<flannel_core::ValidatedNetConfig> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            eprintln!("flannelctl: reading {}: {e}", file.display());
            return None;
        }
    };
    let checked = flannel_core::config::parse_and_check(&text)
        .map_err(|e| flanneld::report(&e))
        .and_then(|c| {
            flanneld::backend::Builtin::check(&c)
                .map(|b| (c, b))
                .map_err(|e| flanneld::report(&e))
        });
    match checked {
        Ok((c, backend)) => {
            let mut effective = c.effective_json();
            effective["Backend"] = backend.effective_json(c.network().as_ref());
            let pretty =
                serde_json::to_string_pretty(&effective).expect("a Value always serialises");
            println!("{pretty}");
            Some(c)
        }
        Err(message) => {
            eprintln!("{message}");
            None
        }
    }
}
