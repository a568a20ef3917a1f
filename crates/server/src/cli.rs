//! The command line: `trellis up`, `check`, `status`, `services`, `auth`. Exit codes: 0 success,
//! 1 invalid config or failure to run, 2 usage error, 130 when a second stop
//! signal abandoned the drain.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::client::{render_status, ControlClient};
use crate::config::{Config, Secret};
use crate::shutdown::listen_for_signals;
use crate::telemetry::init_logging;
use crate::up::{Node, NodeOptions, Outcome};

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
    /// Run an app beside a sidecar: `trellis run --app-id orders --app-port 3001 -- ./orders`.
    Run(Box<RunArgs>),
    /// Validate a config file and exit: errors name file:line:col and key.
    Check(CheckArgs),
    /// Show a running node's version, phase and readiness (exit 0 when ready).
    Status(StatusArgs),
    /// List a running node's registered services and their instances' health.
    Services(ServicesArgs),
    /// Make credentials for the gateway's `auth` sections.
    #[command(subcommand)]
    Auth(AuthCommand),
}

/// `trellis auth …`: credentials for route auth, printed for the config.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Hash an API key (read from stdin, so it stays out of shell history)
    /// into the `sha256:<hex>` form `api_keys.keys[].hash` takes.
    HashKey,
    /// Generate a new API key: prints the key (give it to the client) and
    /// its hash (put it in the config).
    GenKey,
    /// Generate a random HMAC secret for HS256 JWT keys.
    GenSecret,
}

/// `trellis up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Config file (TOML); without it, defaults: control API on
    /// 127.0.0.1:9900, data in ./trellis-data.
    #[arg(short, long, env = "TRELLIS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `trellis run`: the app as a child process, with a sidecar node beside it.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The service name the app registers under.
    #[arg(long, value_name = "NAME")]
    pub app_id: String,
    /// The port the app listens on, on 127.0.0.1 (given to it as TRELLIS_APP_PORT).
    #[arg(long, value_name = "PORT")]
    pub app_port: u16,
    /// A path that answers 2xx once the app is ready; without it the app is
    /// ready when its port accepts connections.
    #[arg(long, value_name = "PATH")]
    pub app_health_path: Option<String>,
    /// Where the sidecar takes the app's inbound traffic (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "IP:PORT")]
    pub inbound: std::net::SocketAddr,
    /// Where the app calls other services through the sidecar (loopback).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "IP:PORT")]
    pub outbound: std::net::SocketAddr,
    /// The sidecar's control API.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "IP:PORT")]
    pub control: std::net::SocketAddr,
    /// The address registered for the app (where callers reach the inbound listener).
    #[arg(long, default_value = "127.0.0.1", value_name = "HOST")]
    pub advertise: String,
    /// The instance id in the registry (default: app id, inbound port and pid).
    #[arg(long, value_name = "ID")]
    pub instance_id: Option<String>,
    /// A tag for the registration (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Metadata for the registration, KEY=VALUE (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub meta: Vec<(String, String)>,
    /// The control API of the Trellis node whose registry to use (e.g.
    /// http://10.0.0.1:9900); without it the sidecar runs its own.
    #[arg(long, env = "TRELLIS_REGISTRY", value_name = "URL")]
    pub registry: Option<String>,
    /// Bearer token for --registry.
    #[arg(long, env = "TRELLIS_REGISTRY_TOKEN", hide_env_values = true)]
    pub registry_token: Option<String>,
    /// A trellis.toml with more for the sidecar: routes of route set
    /// `inbound` or `outbound` replace the generated ones (policies, auth).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The sidecar's data directory (default: a fresh one, removed on exit).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The registration's TTL; the sidecar heartbeats three times per TTL.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub ttl: std::time::Duration,
    /// When to restart the app after it exits.
    #[arg(long, value_enum, default_value = "on-failure")]
    pub restart: crate::sidecar::Restart,
    /// Give up after this many restarts (default: never).
    #[arg(long, value_name = "N")]
    pub max_restarts: Option<u32>,
    /// First pause before a restart; it doubles up to 30s.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub restart_backoff: std::time::Duration,
    /// How long the app may take to become ready.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub startup_timeout: std::time::Duration,
    /// After deregistering on stop, how long to keep serving while callers notice.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub drain_delay: std::time::Duration,
    /// How long the app has to exit after SIGTERM before it is killed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub app_grace: std::time::Duration,
    /// Most requests in the app at once (inbound bulkhead).
    #[arg(long, value_name = "N")]
    pub max_concurrency: Option<usize>,
    /// Inbound requests per second per client IP.
    #[arg(long, value_name = "N")]
    pub rate_limit: Option<u32>,
    /// Worker threads. A sidecar serves one app, and one thread (tokio's
    /// single-threaded scheduler) adds the least latency per hop; give more
    /// for an app that takes more traffic than one core can proxy.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
    /// The app's command and arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration such as 5s: {e}"))
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// `trellis check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Config file (TOML) to validate.
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
}

/// `trellis status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Config of the node to ask (its control.listen and token).
    #[arg(short, long, env = "TRELLIS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Control API address; overrides the config.
    #[arg(long, value_name = "IP:PORT")]
    pub addr: Option<std::net::SocketAddr>,
    /// Bearer token; overrides the config.
    #[arg(long, env = "TRELLIS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
}

/// `trellis services`.
#[derive(Debug, Args)]
pub struct ServicesArgs {
    /// Only this service.
    pub service: Option<String>,
    /// How to reach the node.
    #[command(flatten)]
    pub node: StatusArgs,
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
        Command::Run(args) => run_sidecar(*args),
        Command::Status(args) => status(args),
        Command::Services(args) => services(args),
        Command::Auth(command) => auth(command),
    }
}

fn auth(command: AuthCommand) -> ExitCode {
    match command {
        AuthCommand::HashKey => {
            let mut key = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut key) {
                eprintln!("trellis auth hash-key: cannot read the key from stdin: {e}");
                return ExitCode::FAILURE;
            }
            let key = key.trim_end_matches(['\r', '\n']);
            if key.is_empty() {
                eprintln!("trellis auth hash-key: no key on stdin (usage: echo -n KEY | trellis auth hash-key)");
                return ExitCode::FAILURE;
            }
            println!("{}", trellis_auth::hash_api_key(key));
        }
        AuthCommand::GenKey => {
            let key = trellis_auth::generate_api_key();
            println!("key:  {}", key.plaintext);
            println!("hash: {}", key.hash);
        }
        AuthCommand::GenSecret => println!("{}", trellis_auth::generate_hmac_secret()),
    }
    ExitCode::SUCCESS
}

fn load_or_default(path: Option<&Path>) -> Result<Config, ExitCode> {
    match path {
        Some(path) => Config::load(path).map_err(|e| {
            eprintln!("{e}");
            ExitCode::FAILURE
        }),
        None => Ok(Config::default()),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("trellis: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

/// A control-API client for the node `args` name, and a runtime to drive it.
fn connect(
    args: &StatusArgs,
) -> Result<(ControlClient, std::net::SocketAddr, tokio::runtime::Runtime), ExitCode> {
    let config = load_or_default(args.config.as_deref())?;
    let addr = args
        .addr
        .unwrap_or_else(|| ControlClient::local_addr(&config));
    let token = match &args.token {
        Some(t) => Some(Secret::new(t.clone())),
        None => config.control.bearer_token().unwrap_or_default(),
    };
    let rt = runtime()?;
    Ok((ControlClient::new(addr, token), addr, rt))
}

fn services(args: ServicesArgs) -> ExitCode {
    let (client, _, rt) = match connect(&args.node) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match rt.block_on(crate::services::fetch(&client, args.service.as_deref())) {
        Ok(doc) => {
            if args.node.json {
                println!("{doc}");
            } else {
                print!("{}", crate::services::render(&doc));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("trellis: {e}");
            ExitCode::FAILURE
        }
    }
}

fn status(args: StatusArgs) -> ExitCode {
    let (client, addr, rt) = match connect(&args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match rt.block_on(client.get_json("/v1/status")) {
        Ok((_, body)) => {
            if args.json {
                println!("{body}");
            } else {
                print!("{}", render_status(addr, &body));
            }
            if body["ready"].as_bool() == Some(true) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("trellis: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            println!(
                "{}: OK (control API on {}, auth {}, data in {})",
                path.display(),
                config.control.listen,
                if config.control.token.is_some() || config.control.token_file.is_some() {
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

fn run_sidecar(args: RunArgs) -> ExitCode {
    let log_config = match &args.config {
        Some(f) => match Config::load(f) {
            Ok(c) => c.log,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => Default::default(),
    };
    if let Err(e) = init_logging(&log_config) {
        eprintln!("trellis: {e}");
        return ExitCode::FAILURE;
    }
    let built = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(n))
            .enable_all()
            .build(),
    };
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trellis: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = crate::sidecar::SidecarOptions {
        app_id: args.app_id,
        app_port: args.app_port,
        command: args.command,
        app_health_path: args.app_health_path,
        inbound: args.inbound,
        outbound: args.outbound,
        control: args.control,
        advertise: args.advertise,
        instance_id: args.instance_id,
        tags: args.tags,
        meta: args.meta,
        registry: args.registry,
        registry_token: args.registry_token,
        config_file: args.config,
        data_dir: args.data_dir,
        ttl: args.ttl,
        restart: args.restart,
        max_restarts: args.max_restarts,
        restart_backoff: args.restart_backoff,
        startup_timeout: args.startup_timeout,
        drain_delay: args.drain_delay,
        app_grace: args.app_grace,
        max_concurrency: args.max_concurrency,
        rate_limit: args.rate_limit,
    };
    let result = runtime.block_on(async move {
        let stop = crate::shutdown::Shutdown::new(options.app_grace);
        let _signals = listen_for_signals(stop.clone(), crate::shutdown::Reload::new())?;
        crate::sidecar::run(options, stop).await
    });
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn up(path: Option<&Path>) -> ExitCode {
    let config = match load_or_default(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let log = match init_logging(&config.log) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("trellis: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let mut options = NodeOptions::new(config);
    options.config_file = path.map(Path::to_path_buf);
    options.log = Some(log);
    let result = runtime.block_on(async move {
        let _signals = listen_for_signals(options.shutdown.clone(), options.reload.clone())?;
        let node = Node::start(options).await?;
        node.run_until_stopped().await
    });
    // Don't wait for stragglers (e.g. a connection cut off at the deadline).
    runtime.shutdown_background();
    match result {
        Ok(Outcome::Drained | Outcome::DeadlineExceeded) => ExitCode::SUCCESS,
        Ok(Outcome::Forced) => ExitCode::from(130),
        Err(e) => {
            // Logging is up by now, so the error goes where the logs go.
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
