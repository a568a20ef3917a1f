//! `trellis up`: a running node. [`Node::start`] binds the listeners and
//! starts every component; [`Node::run_until_stopped`] serves until shutdown
//! and drains within the grace deadline.
//!
//! Components added later start here: register for readiness, mount their
//! control routes and metrics, spawn their servers with the shared
//! [`Shutdown`], and report ready.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::Context as _;
use tokio::task::JoinHandle;

use crate::config::Config;
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

/// A started node.
#[derive(Debug)]
pub struct Node {
    control_addr: SocketAddr,
    shutdown: Shutdown,
    control: JoinHandle<std::io::Result<()>>,
}

impl Node {
    /// Prepares the data directory, binds the control listener and starts
    /// serving. `shutdown` should already be wired to signals (see
    /// [`crate::shutdown::listen_for_signals`]) so none is missed while
    /// starting.
    pub async fn start(
        config: &Config,
        shutdown: Shutdown,
        reload: Reload,
        log: Option<LogHandle>,
    ) -> anyhow::Result<Node> {
        let started = Instant::now();
        std::fs::create_dir_all(&config.data.dir)
            .with_context(|| format!("cannot create data.dir {}", config.data.dir.display()))?;

        let metrics = Metrics::new();
        metrics.register_collector(ProcessCollector::new());
        let readiness = Readiness::new(shutdown.clone());
        let control_ready = readiness.register("control");

        let ctx = ControlContext {
            metrics,
            readiness,
            shutdown: shutdown.clone(),
            reload,
            log,
            started,
        };
        let api = ControlApi::new(ctx, config.control.token.clone());

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
            auth = config.control.token.is_some(),
            data_dir = %config.data.dir.display(),
            version = env!("CARGO_PKG_VERSION"),
            "control API listening"
        );
        Ok(Node {
            control_addr,
            shutdown,
            control,
        })
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
