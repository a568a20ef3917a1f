//! `trellis run`: the **sidecar** and **ambassador** patterns. The app runs
//! as a child process beside a Trellis node of its own:
//!
//! - inbound, the node's `inbound` listener takes the app's traffic through
//!   the route's policies (auth, rate limit, bulkhead, metrics) to the app;
//! - outbound, the `outbound` listener lets the app call other services by
//!   name (`/v1/invoke/<service>/<path>`), resolved in the registry and
//!   balanced, retried, timed out and circuit-broken by the node;
//! - the app is registered (pointing at the inbound listener) once it is
//!   ready, kept alive in the registry by TTL heartbeats, deregistered the
//!   moment it dies, and restarted with backoff.
//!
//! Stopping (SIGTERM/SIGINT) goes in the order that loses no request:
//! deregister, keep serving while callers learn of it (`drain_delay`), drain
//! the node's connections, then stop the app (SIGTERM, then SIGKILL after
//! `app_grace`).

mod app;
pub mod config;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use trellis_discovery::{Registration, Status};

use app::App;
pub use app::AppSpec;

use crate::config::Config;
use crate::directory::Directory;
use crate::shutdown::Shutdown;
use crate::up::{Node, NodeOptions};

/// When a dead app is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Restart {
    /// Whatever its exit status.
    Always,
    /// Unless it exited with status 0.
    OnFailure,
    /// Never: the sidecar stops with it.
    Never,
}

/// Everything `trellis run` needs.
#[derive(Debug, Clone)]
pub struct SidecarOptions {
    pub app_id: String,
    pub app_port: u16,
    pub command: Vec<String>,
    pub app_health_path: Option<String>,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub control: SocketAddr,
    /// The address registered for the app (where others reach the inbound listener).
    pub advertise: String,
    pub instance_id: Option<String>,
    pub tags: Vec<String>,
    pub meta: Vec<(String, String)>,
    /// A Trellis node's control API whose registry to use; the sidecar's
    /// own embedded one when absent.
    pub registry: Option<String>,
    pub registry_token: Option<String>,
    pub config_file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub ttl: Duration,
    pub restart: Restart,
    pub max_restarts: Option<u32>,
    pub restart_backoff: Duration,
    pub startup_timeout: Duration,
    pub drain_delay: Duration,
    pub app_grace: Duration,
    pub max_concurrency: Option<usize>,
    pub rate_limit: Option<u32>,
}

/// Longest pause between restarts.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);
/// An app that ran this long before dying restarts from the first backoff.
const STABLE_RUN: Duration = Duration::from_secs(30);

/// Runs the sidecar and its app until `stop` triggers or the app is done;
/// returns the process exit code.
pub async fn run(options: SidecarOptions, stop: Shutdown) -> anyhow::Result<u8> {
    let base = match &options.config_file {
        Some(f) => Config::load(f).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Config::default(),
    };
    let ports = config::SidecarPorts {
        app_port: options.app_port,
        inbound: options.inbound,
        outbound: options.outbound,
        max_concurrency: options.max_concurrency,
        rate_limit: options.rate_limit,
    };
    let mut config = config::build(base, options.config_file.as_deref(), &ports)?;
    config.control.listen = options.control;
    if let Some(url) = &options.registry {
        config.registry.remote = Some(url.clone());
        config.registry.remote_token = options.registry_token.clone();
    }
    let scratch = match &options.data_dir {
        Some(dir) => {
            config.data.dir = dir.clone();
            None
        }
        None => {
            remove_stale_scratch_dirs(&options.app_id);
            // Several sidecars share a machine, so each gets its own data directory.
            let dir = std::env::temp_dir().join(format!(
                "trellis-run-{}-{}",
                options.app_id,
                std::process::id()
            ));
            config.data.dir = dir.clone();
            Some(ScratchDir(dir))
        }
    };

    let node_options = NodeOptions::new(config);
    let node_stop = node_options.shutdown.clone();
    let node = Node::start(node_options).await?;
    let inbound = node
        .listener_addr("inbound")
        .context("the inbound listener did not start")?;
    let outbound = node
        .listener_addr("outbound")
        .context("the outbound listener did not start")?;
    let directory = node.directory().cloned().context(
        "the sidecar needs a registry: give --registry URL or leave registry.enabled on",
    )?;
    let instance_id = options
        .instance_id
        .clone()
        .unwrap_or_else(|| default_instance_id(&options.app_id, inbound));
    let env = vec![
        ("TRELLIS_APP_ID".to_owned(), options.app_id.clone()),
        ("TRELLIS_INSTANCE_ID".to_owned(), instance_id.clone()),
        ("TRELLIS_APP_PORT".to_owned(), options.app_port.to_string()),
        ("APP_PORT".to_owned(), options.app_port.to_string()),
        ("TRELLIS_INBOUND_ADDR".to_owned(), inbound.to_string()),
        ("TRELLIS_HTTP_PORT".to_owned(), outbound.port().to_string()),
        (
            "TRELLIS_HTTP_ENDPOINT".to_owned(),
            format!("http://{outbound}"),
        ),
        (
            "TRELLIS_CONTROL_ADDR".to_owned(),
            node.control_addr().to_string(),
        ),
    ];
    tracing::info!(
        app_id = %options.app_id,
        instance = %instance_id,
        %inbound,
        %outbound,
        control = %node.control_addr(),
        "sidecar listening"
    );
    let supervisor = Supervisor {
        spec: AppSpec {
            app_id: options.app_id.clone(),
            command: options.command.clone(),
            env,
        },
        registration: Registration {
            address: options.advertise.clone(),
            port: inbound.port(),
            tags: options.tags.clone(),
            meta: options.meta.iter().cloned().collect(),
            ttl: Some(options.ttl),
            check: None,
            deregister_after: None,
        },
        instance_id,
        directory,
        options,
        http: reqwest::Client::new(),
    };

    let app_grace = supervisor.options.app_grace;
    let node_run = tokio::spawn(node.run_until_stopped());
    let ended = supervisor.run(&stop, &node_stop).await;
    // The app is out of the registry by now; drain the node, then stop the app.
    node_stop.trigger();
    let drained = node_run.await;
    let (code, app) = match ended {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e:#}");
            (1, None)
        }
    };
    if let Some(app) = app {
        app.stop(app_grace).await;
    }
    drop(scratch);
    match drained {
        Ok(Ok(_)) => Ok(code),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(anyhow::anyhow!("the sidecar node panicked: {e}")),
    }
}

/// Removes scratch data directories of this app's sidecars that were killed
/// (their process is gone), which could not clean up after themselves.
fn remove_stale_scratch_dirs(app_id: &str) {
    let prefix = format!("trellis-run-{app_id}-");
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive && pid != std::process::id() {
            tracing::info!(dir = %entry.path().display(), "removing a killed sidecar's data directory");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Removes the sidecar's own data directory when the run ends.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `<app-id>-<inbound port>-<pid>`: unique on a machine, readable in lists.
fn default_instance_id(app_id: &str, inbound: SocketAddr) -> String {
    format!("{app_id}-{}-{}", inbound.port(), std::process::id())
}

/// Keeps the app running and its registration true.
struct Supervisor {
    spec: AppSpec,
    registration: Registration,
    instance_id: String,
    directory: Directory,
    options: SidecarOptions,
    http: reqwest::Client,
}

/// How one run of the app ended.
enum RunEnd {
    /// The sidecar was asked to stop; the app still runs.
    Stopping(App),
    /// The app exited (or never became ready) with this code.
    Exited(Option<i32>, bool),
}

impl Supervisor {
    fn app_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.options.app_port))
    }

    /// Starts the app, restarting it as the policy says, until `stop`
    /// triggers (then deregisters and lets callers notice before returning
    /// the still-running app) or the app is done for good.
    async fn run(
        &self,
        stop: &Shutdown,
        node_stop: &Shutdown,
    ) -> anyhow::Result<(u8, Option<App>)> {
        let mut restarts = 0u32;
        let mut backoff = self.options.restart_backoff;
        loop {
            let started = Instant::now();
            let app = App::spawn(&self.spec)?;
            match self.run_once(app, stop, node_stop).await {
                RunEnd::Stopping(app) => {
                    self.deregister().await;
                    tracing::info!(delay = ?self.options.drain_delay, "deregistered; draining");
                    tokio::time::sleep(self.options.drain_delay).await;
                    return Ok((0, Some(app)));
                }
                RunEnd::Exited(code, success) => {
                    self.deregister().await;
                    let again = match self.options.restart {
                        Restart::Always => true,
                        Restart::OnFailure => !success,
                        Restart::Never => false,
                    } && self.options.max_restarts.is_none_or(|m| restarts < m)
                        && !stop.is_triggered()
                        && !node_stop.is_triggered();
                    if !again {
                        tracing::info!(?code, restarts, "app exited; the sidecar stops with it");
                        let code = code.and_then(|c| u8::try_from(c).ok()).unwrap_or(1);
                        return Ok((if success { 0 } else { code.max(1) }, None));
                    }
                    if started.elapsed() >= STABLE_RUN {
                        backoff = self.options.restart_backoff;
                    }
                    restarts += 1;
                    tracing::warn!(
                        ?code,
                        restart = restarts,
                        ?backoff,
                        "app exited; restarting it"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.triggered() => return Ok((0, None)),
                    }
                    backoff = (backoff * 2).min(MAX_RESTART_BACKOFF);
                }
            }
        }
    }

    /// One life of the app: wait until it is ready, register it, heartbeat
    /// while it lives.
    async fn run_once(&self, mut app: App, stop: &Shutdown, node_stop: &Shutdown) -> RunEnd {
        let deadline = tokio::time::Instant::now() + self.options.startup_timeout;
        let health = self.options.app_health_path.as_deref();
        // Ready?
        loop {
            tokio::select! {
                status = app.exited() => return exited(status),
                () = stop.triggered() => return RunEnd::Stopping(app),
                () = node_stop.triggered() => return RunEnd::Stopping(app),
                ready = app::probe(&self.http, self.app_addr(), health) => {
                    if ready {
                        break;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        tracing::error!(timeout = ?self.options.startup_timeout, port = self.options.app_port, "the app never became ready");
                        app.stop(self.options.app_grace).await;
                        return RunEnd::Exited(None, false);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let mut registered = self.register().await;
        let mut beat = tokio::time::interval(self.options.ttl / 3);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        beat.tick().await;
        loop {
            tokio::select! {
                status = app.exited() => return exited(status),
                () = stop.triggered() => return RunEnd::Stopping(app),
                () = node_stop.triggered() => return RunEnd::Stopping(app),
                _ = beat.tick() => {
                    let status = if health.is_none() || app::probe(&self.http, self.app_addr(), health).await {
                        Status::Passing
                    } else {
                        Status::Critical
                    };
                    if !registered {
                        registered = self.register().await;
                    } else if let Err(e) = self.directory.heartbeat(&self.spec.app_id, &self.instance_id, status).await {
                        // Lapsed, or the registry restarted without us: register again.
                        tracing::warn!(error = %format!("{e:#}"), "heartbeat refused; registering again");
                        registered = self.register().await;
                    }
                }
            }
        }
    }

    async fn register(&self) -> bool {
        match self
            .directory
            .register(
                &self.spec.app_id,
                &self.instance_id,
                self.registration.clone(),
            )
            .await
        {
            Ok(()) => {
                tracing::info!(service = %self.spec.app_id, instance = %self.instance_id, port = self.registration.port, "app registered");
                true
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot register the app; will retry");
                false
            }
        }
    }

    async fn deregister(&self) {
        if let Err(e) = self
            .directory
            .deregister(&self.spec.app_id, &self.instance_id)
            .await
        {
            tracing::warn!(error = %format!("{e:#}"), "cannot deregister the app; its TTL will lapse");
        } else {
            tracing::info!(instance = %self.instance_id, "app deregistered");
        }
    }
}

fn exited(status: std::io::Result<std::process::ExitStatus>) -> RunEnd {
    match status {
        Ok(s) => RunEnd::Exited(s.code(), s.success()),
        Err(e) => {
            tracing::error!(error = %e, "cannot wait for the app");
            RunEnd::Exited(None, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_dirs_of_dead_sidecars_are_removed_and_live_ones_kept() {
        let app = format!("scratch-test-{}", std::process::id());
        // No process has pid u32::MAX - 1; ours is alive.
        let dead = std::env::temp_dir().join(format!("trellis-run-{app}-{}", u32::MAX - 1));
        let live = std::env::temp_dir().join(format!("trellis-run-{app}-{}", std::process::id()));
        let other = std::env::temp_dir().join(format!("trellis-run-{app}x-{}", u32::MAX - 1));
        for d in [&dead, &live, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        remove_stale_scratch_dirs(&app);
        assert!(!dead.exists());
        assert!(live.exists() && other.exists());
        for d in [&live, &other] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
}
