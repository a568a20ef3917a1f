//! The command line: `trellis up`, `trellis check`. Exit codes: 0 success,
//! 1 invalid config or failure to run, 2 usage error, 130 when a second stop
//! signal abandoned the drain.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::shutdown::{listen_for_signals, Reload, Shutdown};
use crate::telemetry::init_logging;
use crate::up::{Node, Outcome};

/// Trellis: distributed-system patterns (gateway, resilience, registry,
/// events, messaging, sagas, flags) as one runtime.
#[derive(Debug, Parser)]
#[command(name = "trellis", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node on this machine with embedded storage.
    Up(UpArgs),
    /// Validate a config file and exit: errors name file:line:col and key.
    Check(CheckArgs),
}

/// `trellis up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Config file (TOML); without it, defaults: control API on
    /// 127.0.0.1:9900, data in ./trellis-data.
    #[arg(short, long, env = "TRELLIS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `trellis check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Config file (TOML) to validate.
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
}

/// Parses the process arguments and runs the command.
pub fn main() -> ExitCode {
    run(Cli::parse())
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Check(args) => check(&args.config),
        Command::Up(args) => up(args.config.as_deref()),
    }
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            println!(
                "{}: OK (control API on {}, auth {}, data in {})",
                path.display(),
                config.control.listen,
                if config.control.token.is_some() {
                    "on"
                } else {
                    "off"
                },
                config.data.dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn up(path: Option<&Path>) -> ExitCode {
    let config = match path {
        Some(path) => match Config::load(path) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => Config::default(),
    };
    let log = match init_logging(&config.log) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("trellis: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trellis: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let shutdown = Shutdown::new(config.control.shutdown_grace);
        let reload = Reload::new();
        let _signals = listen_for_signals(shutdown.clone(), reload.clone())?;
        let node = Node::start(&config, shutdown, reload, Some(log)).await?;
        node.run_until_stopped().await
    });
    // Don't wait for stragglers (e.g. a connection cut off at the deadline).
    runtime.shutdown_background();
    match result {
        Ok(Outcome::Drained | Outcome::DeadlineExceeded) => ExitCode::SUCCESS,
        Ok(Outcome::Forced) => ExitCode::from(130),
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("trellis: {e:#}");
            ExitCode::FAILURE
        }
    }
}
