//! `trellis up`: a running node. [`Node::start`] binds the listeners and
//! starts every component; [`Node::run_until_stopped`] serves until shutdown
//! and drains within the grace deadline.
//!
//! Components added later start here: register for readiness, mount their
//! control routes and metrics, spawn their servers with the shared
//! [`Shutdown`], and report ready.

mod reload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use tokio::task::JoinHandle;

use crate::config::{Config, LiveConfig};
use crate::control::{self, ControlApi, ControlContext, Readiness};
use crate::shutdown::{Phase, Reload, Shutdown};
use crate::telemetry::{LogHandle, Metrics, ProcessCollector};

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

/// A started node.
#[derive(Debug)]
pub struct Node {
    control_addr: SocketAddr,
    shutdown: Shutdown,
    live: LiveConfig,
    control: JoinHandle<std::io::Result<()>>,
}

impl Node {
    /// Prepares the data directory, binds the control listener and starts
    /// serving.
    pub async fn start(options: NodeOptions) -> anyhow::Result<Node> {
        let NodeOptions {
            config,
            config_file,
            shutdown,
            reload,
            log,
        } = options;
        let started = Instant::now();
        std::fs::create_dir_all(&config.data.dir)
            .with_context(|| format!("cannot create data.dir {}", config.data.dir.display()))?;

        let metrics = Metrics::new();
        metrics.register_collector(ProcessCollector::new());
        let readiness = Readiness::new(shutdown.clone());
        let control_ready = readiness.register("control");

        let live = LiveConfig::new(config.clone());
        tokio::spawn(
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

        let ctx = ControlContext {
            metrics,
            readiness,
            shutdown: shutdown.clone(),
            reload,
            log,
            started,
        };
        let token = config
            .control
            .bearer_token()
            .map_err(|e| anyhow::anyhow!("control.token_file: {e}"))?;
        let auth = token.is_some();
        let api = ControlApi::new(ctx, token);

        let listener = tokio::net::TcpListener::bind(config.control.listen)
            .await
            .with_context(|| {
                format!("cannot listen on control.listen {}", config.control.listen)
            })?;
        let control_addr = listener.local_addr()?;
        let control = tokio::spawn(control::serve(
            listener,
            api.into_router(),
            shutdown.clone(),
        ));
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
            control,
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

    /// The node's shutdown handle.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Serves until shutdown is triggered, then waits for in-flight work up
    /// to the grace deadline. A component failing on its own is an error
    /// (and stops the rest).
    pub async fn run_until_stopped(mut self) -> anyhow::Result<Outcome> {
        let drained = self.shutdown.drain(&mut self.control).await;
        let outcome = match drained {
            Ok(joined) => {
                let served = joined.context("control server task failed")?;
                if !self.shutdown.is_triggered() {
                    self.shutdown.trigger();
                    served.context("control server failed")?;
                    anyhow::bail!("control server stopped unexpectedly");
                }
                served.context("control server failed while draining")?;
                Outcome::Drained
            }
            Err(_) => {
                self.control.abort();
                if self.shutdown.phase() == Phase::Forced {
                    Outcome::Forced
                } else {
                    Outcome::DeadlineExceeded
                }
            }
        };
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
