//! `trellis up`: a running node. [`Node::start`] takes the data directory,
//! starts every component and binds the control API;
//! [`Node::run_until_stopped`] serves until shutdown and drains every
//! component's task within the grace deadline.
//!
//! Components join in `start_components` (this module): each gets a [`Wiring`] through
//! which it reads its config section, registers metrics and readiness, mounts
//! control routes and spawns its long-running tasks.

mod data_dir;
mod reload;
mod tasks;
mod watch;

pub use data_dir::{DataDirError, DataDirLock};
pub use tasks::Wiring;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;

use crate::components;
use crate::config::{Config, LiveConfig};
use crate::control::{self, ControlApi, ControlContext, Readiness};
use crate::directory::Directory;
use crate::shutdown::{Reload, Shutdown};
use crate::telemetry::{LogHandle, Metrics, ProcessCollector};
use tasks::Tasks;

/// How a node stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every in-flight request finished within the grace period.
    Drained,
    /// The grace period ran out; remaining requests were cut off.
    DeadlineExceeded,
    /// A second stop signal cut the drain short.
    Forced,
}

/// What a node starts from.
#[derive(Debug)]
pub struct NodeOptions {
    /// The validated config.
    pub config: Config,
    /// The file it came from, re-read on reload requests; `None` runs on
    /// defaults and reloads do nothing.
    pub config_file: Option<PathBuf>,
    /// Lifecycle; wire it to signals (see
    /// [`crate::shutdown::listen_for_signals`]) before starting so none is
    /// missed while starting.
    pub shutdown: Shutdown,
    /// Reload requests (SIGHUP, `POST /v1/reload`).
    pub reload: Reload,
    /// The log filter handle, when this process installed the subscriber.
    pub log: Option<LogHandle>,
}

impl NodeOptions {
    /// Options for `config` with fresh shutdown (grace from
    /// `control.shutdown_grace`) and reload handles.
    pub fn new(config: Config) -> Self {
        NodeOptions {
            shutdown: Shutdown::new(config.control.shutdown_grace),
            reload: Reload::new(),
            config,
            config_file: None,
            log: None,
        }
    }
}

/// Where each component is started. A component registers for readiness,
/// mounts its control routes and metrics, binds its listeners, spawns its
/// servers with [`Wiring::spawn`] (which stop on `w.shutdown`), and reports
/// ready. Returning an error aborts the start with that message.
/// What the components leave a node holding.
struct Started {
    directory: Option<Directory>,
    gateway: Option<std::sync::Arc<trellis_gateway::GatewayHandle>>,
}

async fn start_components(w: &mut Wiring<'_>) -> anyhow::Result<Started> {
    let store = components::store::open(w.config).await?;
    let events = components::events::start(w, &store).await?;
    components::cqrs::start(w, &events).await?;
    let directory = components::registry::directory(w, &store).await?;
    let gateway = components::gateway::start(w, directory.as_ref()).await?;
    Ok(Started { directory, gateway })
}

/// A started node.
#[derive(Debug)]
pub struct Node {
    control_addr: SocketAddr,
    shutdown: Shutdown,
    live: LiveConfig,
    tasks: Tasks,
    directory: Option<Directory>,
    gateway: Option<std::sync::Arc<trellis_gateway::GatewayHandle>>,
    _data_lock: DataDirLock,
}

impl Node {
    /// Takes the data directory, starts the components and the control API.
    pub async fn start(options: NodeOptions) -> anyhow::Result<Node> {
        let NodeOptions {
            config,
            config_file,
            shutdown,
            reload,
            log,
        } = options;
        let started = Instant::now();
        let data_lock = data_dir::lock(&config.data.dir)?;

        let metrics = Metrics::new();
        metrics.register_collector(ProcessCollector::new());
        let readiness = Readiness::new(shutdown.clone());
        let control_ready = readiness.register("control");
        let live = LiveConfig::new(config.clone());
        let mut tasks = Tasks::default();
        if let (Some(file), true) = (&config_file, config.reload.watch) {
            tasks.spawn(
                "config file watcher",
                watch::watch_file(file.clone(), live.clone(), reload.clone(), shutdown.clone()),
            );
        }
        tasks.spawn(
            "config reloader",
            reload::Reloader {
                file: config_file,
                live: live.clone(),
                requests: reload.subscribe(),
                log: log.clone(),
                shutdown: shutdown.clone(),
                metrics: metrics.clone(),
            }
            .run(),
        );

        let token = config
            .control
            .bearer_token()
            .map_err(|e| anyhow::anyhow!("control.token_file: {e}"))?;
        let auth = token.is_some();
        let mut api = ControlApi::new(
            ControlContext {
                metrics: metrics.clone(),
                readiness: readiness.clone(),
                shutdown: shutdown.clone(),
                reload: reload.clone(),
                log,
                started,
            },
            token,
        );

        let mut wiring = Wiring {
            config: &config,
            live: &live,
            metrics: &metrics,
            readiness: &readiness,
            shutdown: &shutdown,
            reload: &reload,
            control: &mut api,
            tasks: &mut tasks,
        };
        let Started { directory, gateway } = match start_components(&mut wiring).await {
            Ok(d) => d,
            Err(e) => {
                shutdown.trigger();
                tasks.abort_all();
                return Err(e);
            }
        };

        let listener = tokio::net::TcpListener::bind(config.control.listen)
            .await
            .with_context(|| {
                format!("cannot listen on control.listen {}", config.control.listen)
            })?;
        let control_addr = listener.local_addr()?;
        let router = api.into_router();
        let stop = tasks.others_done(&shutdown);
        tasks.spawn_last("control API", async move {
            control::serve(listener, router, stop)
                .await
                .context("control API server failed")
        });
        control_ready.set_ready();
        tracing::info!(
            addr = %control_addr,
            auth,
            data_dir = %config.data.dir.display(),
            version = env!("CARGO_PKG_VERSION"),
            "control API listening"
        );
        Ok(Node {
            control_addr,
            shutdown,
            live,
            tasks,
            directory,
            gateway,
            _data_lock: data_lock,
        })
    }

    /// The config in force; components watch it for reloads.
    pub fn live_config(&self) -> &LiveConfig {
        &self.live
    }

    /// Where the control API listens (useful with port 0).
    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    /// The registry the node uses (its own or a remote one), if any.
    pub fn directory(&self) -> Option<&Directory> {
        self.directory.as_ref()
    }

    /// Where the gateway listener called `name` is bound (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.gateway.as_ref()?.local_addr(name)
    }

    /// The node's shutdown handle.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Serves until shutdown is triggered, then waits for every component's
    /// tasks up to the grace deadline. A task that fails or ends on its own
    /// before shutdown starts a shutdown of the rest and is returned as the
    /// error.
    pub async fn run_until_stopped(mut self) -> anyhow::Result<Outcome> {
        let outcome = self.tasks.drain(&self.shutdown).await?;
        match outcome {
            Outcome::Drained => tracing::info!("stopped: all in-flight requests finished"),
            Outcome::DeadlineExceeded => tracing::warn!(
                grace = ?self.shutdown.grace(),
                "stopped: grace period ran out, in-flight requests were cut off"
            ),
            Outcome::Forced => tracing::warn!("stopped: drain abandoned by a second signal"),
        }
        Ok(outcome)
    }
}
