//! flannelctl: the operator CLI. `config check FILE` validates a network config exactly as
//! flanneld would and prints the effective config; `routes list` shows a VPC's route tables.

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
    /// Subnet leases in etcd.
    #[command(subcommand)]
    Leases(LeasesCommand),
}

#[derive(Subcommand)]
enum LeasesCommand {
    /// Print every lease: subnet, public IP, backend type, time left, reservation.
    List {
        #[command(flatten)]
        etcd: flanneld::cli::EtcdArgs,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Subcommand)]
enum RoutesCommand {
    /// List every route table of a VPC with its subnet associations and routes.
    List {
        #[arg(long = "vpc-id")]
        vpc_id: String,
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
    },
}

/// Exit status for invalid input, as Go's flag package and upstream use.
const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    // Accept Go-style single-dash long flags, as flanneld does.
    let cli = Cli::parse_from(flanneld::cli::normalize_args(std::env::args_os()));
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        2..=4 => "debug",
        _ => "trace",
    };
    flanneld::logging::init_at(flanneld::cli::LogFormat::Plain, level);
    match cli.command {
        Command::Config(ConfigCommand::Check { file }) => config_check(&file),
        Command::Routes(RoutesCommand::List {
            vpc_id,
            region,
            endpoint,
            metadata_url,
            output,
        }) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime");
            rt.block_on(routes_list(vpc_id, region, endpoint, metadata_url, output))
        }
        Command::Leases(LeasesCommand::List { etcd, output }) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime");
            rt.block_on(leases_list(etcd, output))
        }
    }
}

async fn leases_list(etcd: flanneld::cli::EtcdArgs, output: Output) -> ExitCode {
    let opts = etcd.to_options();
    let result = async {
        let m = flanneld::subnet::etcd::EtcdManager::connect(&opts).await?;
        m.list_with_ttl().await
    }
    .await;
    match result {
        Ok(mut leases) => {
            leases.sort_by_key(|l| l.key);
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&flanneld::ctl::leases_json(&leases))
                        .expect("JSON")
                ),
                Output::Table => print!(
                    "{}",
                    flanneld::ctl::render_leases(&leases, std::time::SystemTime::now())
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flannelctl: {}", flanneld::report(&e));
            ExitCode::FAILURE
        }
    }
}

async fn routes_list(
    vpc_id: String,
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
    let (client, region_name) = match flanneld::cloud::connect(setup, &env).await {
        Ok(c) => (c.client, c.region),
        Err(e) => {
            eprintln!("flannelctl: {}", flanneld::report(&e));
            return ExitCode::from(EXIT_INVALID);
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

fn config_check(file: &PathBuf) -> ExitCode {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            eprintln!("flannelctl: reading {}: {e}", file.display());
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let checked = flannel_core::config::parse_and_check(&text)
        .map_err(|e| flanneld::report(&e))
        .and_then(|c| {
            flanneld::backend::Builtin::check(&c)
                .map(|_| c)
                .map_err(|e| flanneld::report(&e))
        });
    match checked {
        Ok(c) => {
            let pretty = serde_json::to_string_pretty(&c.effective_json())
                .expect("a Value always serialises");
            println!("{pretty}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}
