//! flannelctl: the operator CLI. `config check FILE` validates a network config exactly as
//! flanneld would and prints the effective config.

use clap::{Parser, Subcommand};
use flannel_core::NetConfig;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "flannelctl", version, about = "flannel-rs operator CLI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Network config (net-conf.json or the etcd config value).
    #[command(subcommand)]
    Config(ConfigCommand),
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
    let cli = Cli::parse();
    match cli.command {
        Command::Config(ConfigCommand::Check { file }) => config_check(&file),
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
    match NetConfig::parse_and_check(&text) {
        Ok(c) => {
            let pretty = serde_json::to_string_pretty(&c.effective_json())
                .expect("a Value always serialises");
            println!("{pretty}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}
