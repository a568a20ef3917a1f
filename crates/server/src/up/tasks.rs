//! The node's long-running tasks and how they stop together: a component
//! that fails takes the node down gracefully, and the drain waits for all of
//! them, bounded by the grace deadline.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::Outcome;
use crate::config::{Config, LiveConfig};
use crate::control::{ControlApi, Readiness};
use crate::shutdown::{Phase, Reload, Shutdown};
use crate::telemetry::Metrics;

/// What a starting component can reach.
pub struct Wiring<'a> {
    /// The config the node started with (its own section is a field).
    pub config: &'a Config,
    /// The config in force, for components that apply reloads.
    pub live: &'a LiveConfig,
    /// The shared metrics registry.
    pub metrics: &'a Metrics,
    /// Register the component here and report ready when it serves.
    pub readiness: &'a Readiness,
    /// Stop accepting and finish in-flight work when this triggers.
    pub shutdown: &'a Shutdown,
    /// Reload requests.
    pub reload: &'a Reload,
    /// Mount control endpoints here.
    pub control: &'a mut ControlApi,
    pub(super) tasks: &'a mut Tasks,
}

impl Wiring<'_> {
    /// Runs a component's long-running task (a server, a relay…) until it
    /// returns; it must return soon after `shutdown` triggers. The control
    /// API keeps serving (with `/readyz` reporting `draining`) until every
    /// such task has finished or the grace period ends.
    pub fn spawn(
        &mut self,
        name: &str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        self.tasks.spawn(name, task);
    }
}

#[derive(Debug)]
pub(super) struct Tasks {
    set: JoinSet<(String, anyhow::Result<()>)>,
    /// Component tasks still running; the control API waits for zero.
    running: Arc<watch::Sender<usize>>,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks {
            set: JoinSet::new(),
            running: Arc::new(watch::Sender::new(0)),
        }
    }
}

/// Counts a component task as finished however it ends (returns, panics or
/// is aborted), so the control API is never left waiting for it.
struct Running(Arc<watch::Sender<usize>>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Tasks {
    /// A component task: it is expected to run until shutdown.
    pub fn spawn(
        &mut self,
        name: &str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        self.running.send_modify(|n| *n += 1);
        let running = Running(self.running.clone());
        let name = name.to_owned();
        self.set.spawn(async move {
            let _running = running;
            (name, task.await)
        });
    }

    /// A task that should stop only after the components: it is not counted
    /// by [`Tasks::others_done`], and it should stop on that signal.
    pub fn spawn_last(
        &mut self,
        name: &str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let name = name.to_owned();
        self.set.spawn(async move { (name, task.await) });
    }

    /// Completes once shutdown has begun and every component task (those
    /// from [`Tasks::spawn`]) has finished.
    pub fn others_done(&self, shutdown: &Shutdown) -> impl Future<Output = ()> + Send + 'static {
        let shutdown = shutdown.clone();
        let mut running = self.running.subscribe();
        async move {
            shutdown.triggered().await;
            // The sender lives in `Tasks`; if it is gone, nothing is left to wait for.
            let _ = running.wait_for(|n| *n == 0).await;
        }
    }

    pub fn abort_all(&mut self) {
        self.set.abort_all();
    }

    /// Waits for shutdown and then for every task, within the grace period.
    pub async fn drain(&mut self, shutdown: &Shutdown) -> anyhow::Result<Outcome> {
        let joined = shutdown.drain(join_all(&mut self.set, shutdown)).await;
        match joined {
            Ok(None) => Ok(Outcome::Drained),
            Ok(Some(failure)) => Err(failure),
            Err(_) => {
                self.set.abort_all();
                Ok(if shutdown.phase() == Phase::Forced {
                    Outcome::Forced
                } else {
                    Outcome::DeadlineExceeded
                })
            }
        }
    }
}

/// Joins every task; the first one to fail or to end before shutdown
/// triggers shutdown for the rest and is returned.
async fn join_all(
    set: &mut JoinSet<(String, anyhow::Result<()>)>,
    shutdown: &Shutdown,
) -> Option<anyhow::Error> {
    let mut failure = None;
    while let Some(joined) = set.join_next().await {
        let problem = match joined {
            Ok((_, Ok(()))) if shutdown.is_triggered() => None,
            Ok((name, Ok(()))) => Some(anyhow::anyhow!("{name} stopped unexpectedly")),
            Ok((name, Err(e))) => Some(e.context(format!("{name} failed"))),
            Err(e) => Some(anyhow::anyhow!("a task panicked or was cancelled: {e}")),
        };
        if let Some(problem) = problem {
            tracing::error!("{problem:#}; shutting down");
            shutdown.trigger();
            failure.get_or_insert(problem);
        }
    }
    failure
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drains_every_task_after_shutdown() {
        let shutdown = Shutdown::new(Duration::from_secs(10));
        let mut tasks = Tasks::default();
        for (name, linger) in [("a", 1), ("b", 3)] {
            let s = shutdown.clone();
            tasks.spawn(name, async move {
                s.triggered().await;
                tokio::time::sleep(Duration::from_secs(linger)).await;
                Ok(())
            });
        }
        let started = tokio::time::Instant::now();
        shutdown.trigger();
        assert_eq!(tasks.drain(&shutdown).await.unwrap(), Outcome::Drained);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_task_shuts_the_others_down_and_is_reported() {
        let shutdown = Shutdown::new(Duration::from_secs(10));
        let mut tasks = Tasks::default();
        let s = shutdown.clone();
        tasks.spawn("server", async move {
            s.triggered().await;
            Ok(())
        });
        tasks.spawn("relay", async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            anyhow::bail!("lost the store")
        });
        let err = tasks.drain(&shutdown).await.unwrap_err();
        assert_eq!(format!("{err:#}"), "relay failed: lost the store");
        assert!(shutdown.is_triggered());
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_ending_early_is_an_error_too() {
        let shutdown = Shutdown::new(Duration::from_secs(10));
        let mut tasks = Tasks::default();
        tasks.spawn("listener", async { Ok(()) });
        let err = tasks.drain(&shutdown).await.unwrap_err();
        assert_eq!(err.to_string(), "listener stopped unexpectedly");
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_task_stops_after_the_components_have_drained() {
        let shutdown = Shutdown::new(Duration::from_secs(10));
        let mut tasks = Tasks::default();
        let s = shutdown.clone();
        tasks.spawn("gateway", async move {
            s.triggered().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(())
        });
        let stop = tasks.others_done(&shutdown);
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
        let started = tokio::time::Instant::now();
        tasks.spawn_last("control", async move {
            stop.await;
            let _ = stopped_tx.send(started.elapsed());
            Ok(())
        });
        shutdown.trigger();
        assert_eq!(tasks.drain(&shutdown).await.unwrap(), Outcome::Drained);
        assert_eq!(stopped_rx.await.unwrap(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn an_aborted_component_does_not_hold_the_last_task() {
        let shutdown = Shutdown::new(Duration::from_secs(1));
        let mut tasks = Tasks::default();
        tasks.spawn("stuck", std::future::pending());
        let stop = tasks.others_done(&shutdown);
        shutdown.trigger();
        assert_eq!(
            tasks.drain(&shutdown).await.unwrap(),
            Outcome::DeadlineExceeded
        );
        // `drain` aborted the stuck task; the count drops once it is dropped.
        tokio::time::timeout(Duration::from_secs(1), stop)
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn stragglers_are_cut_off_at_the_deadline() {
        let shutdown = Shutdown::new(Duration::from_secs(2));
        let mut tasks = Tasks::default();
        tasks.spawn("stuck", std::future::pending());
        shutdown.trigger();
        assert_eq!(
            tasks.drain(&shutdown).await.unwrap(),
            Outcome::DeadlineExceeded
        );
    }
}
