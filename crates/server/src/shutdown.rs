//! Graceful shutdown and reload requests.
//!
//! [`Shutdown`] is a cloneable handle every component awaits: the first
//! SIGINT/SIGTERM moves the process to [`Phase::Draining`] (stop accepting,
//! finish in-flight work), and [`Shutdown::drain`] bounds that by the grace
//! deadline. A second signal forces [`Phase::Forced`] so an operator is never
//! stuck behind a slow drain. SIGHUP does not stop anything: it becomes a
//! [`ReloadRequests`] event that components holding reloadable config (the
//! gateway's routes) subscribe to.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Serving normally.
    Running,
    /// Shutdown was asked for: stop accepting, finish in-flight work.
    Draining,
    /// Stop now, abandoning in-flight work.
    Forced,
}

/// The drain did not finish before the grace deadline (or was forced).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("drain did not finish within the {0:?} grace period")]
pub struct DrainTimeout(pub Duration);

/// A cloneable handle on the process's shutdown state.
#[derive(Debug, Clone)]
pub struct Shutdown {
    phase: Arc<watch::Sender<Phase>>,
    grace: Duration,
}

impl Shutdown {
    /// A handle in [`Phase::Running`] whose drains may take up to `grace`.
    pub fn new(grace: Duration) -> Self {
        Shutdown {
            phase: Arc::new(watch::Sender::new(Phase::Running)),
            grace,
        }
    }

    /// The drain deadline.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// True once shutdown has been asked for.
    pub fn is_triggered(&self) -> bool {
        self.phase() >= Phase::Draining
    }

    /// Starts draining; idempotent.
    pub fn trigger(&self) {
        self.advance(Phase::Draining);
    }

    /// Abandons the drain; idempotent.
    pub fn force(&self) {
        self.advance(Phase::Forced);
    }

    fn advance(&self, to: Phase) {
        self.phase.send_if_modified(|phase| {
            if *phase < to {
                *phase = to;
                true
            } else {
                false
            }
        });
    }

    /// Completes once shutdown has been asked for.
    pub async fn triggered(&self) {
        self.reached(Phase::Draining).await
    }

    async fn reached(&self, phase: Phase) {
        let mut rx = self.phase.subscribe();
        // The sender lives in `self`, so `wait_for` cannot see it closed.
        let _ = rx.wait_for(|p| *p >= phase).await;
    }

    /// Runs `work` (typically a server with graceful shutdown wired to
    /// [`Shutdown::triggered`]) to completion, but once shutdown is asked for
    /// gives it at most the grace period, and stops waiting at once when the
    /// shutdown is forced.
    pub async fn drain<F: Future>(&self, work: F) -> Result<F::Output, DrainTimeout> {
        tokio::pin!(work);
        tokio::select! {
            out = &mut work => return Ok(out),
            () = self.triggered() => {}
        }
        tokio::select! {
            out = &mut work => Ok(out),
            () = tokio::time::sleep(self.grace) => Err(DrainTimeout(self.grace)),
            () = self.reached(Phase::Forced) => Err(DrainTimeout(self.grace)),
        }
    }
}

/// The sending side of reload requests (SIGHUP, or `POST /v1/reload`).
#[derive(Debug, Clone)]
pub struct Reload {
    generation: Arc<watch::Sender<u64>>,
}

impl Default for Reload {
    fn default() -> Self {
        Reload::new()
    }
}

impl Reload {
    /// No reload requested yet.
    pub fn new() -> Self {
        Reload {
            generation: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Asks subscribers to reload; returns the new request number.
    pub fn request(&self) -> u64 {
        let mut generation = 0;
        self.generation.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        generation
    }

    /// A stream of reload requests made after this call.
    pub fn subscribe(&self) -> ReloadRequests {
        let mut rx = self.generation.subscribe();
        rx.mark_unchanged();
        ReloadRequests(rx)
    }
}

/// Reload requests as seen by one component. Requests made while the
/// component is busy reloading coalesce into one: reloading reads the latest
/// config, so there is no point doing it twice.
#[derive(Debug)]
pub struct ReloadRequests(watch::Receiver<u64>);

impl ReloadRequests {
    /// Waits for the next request and returns its number; `None` once no
    /// more can come.
    pub async fn next(&mut self) -> Option<u64> {
        self.0.changed().await.ok()?;
        Some(*self.0.borrow_and_update())
    }
}

/// Turns process signals into shutdown and reload requests for as long as the
/// process runs: SIGINT/SIGTERM drain (a second one forces), SIGHUP reloads.
///
/// Handlers are installed before this returns, so a signal that arrives after
/// it cannot kill the process with the default action.
pub fn listen_for_signals(
    shutdown: Shutdown,
    reload: Reload,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        Ok(tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    Some(()) = int.recv() => "SIGINT",
                    Some(()) = term.recv() => "SIGTERM",
                    Some(()) = hup.recv() => {
                        let n = reload.request();
                        tracing::info!(signal = "SIGHUP", request = n, "config reload requested");
                        continue;
                    }
                    else => return,
                };
                on_stop_signal(&shutdown, name);
            }
        }))
    }
    #[cfg(not(unix))]
    {
        let _ = reload;
        Ok(tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                on_stop_signal(&shutdown, "Ctrl-C");
            }
        }))
    }
}

fn on_stop_signal(shutdown: &Shutdown, name: &str) {
    if shutdown.is_triggered() {
        tracing::warn!(
            signal = name,
            "second stop signal: abandoning in-flight work"
        );
        shutdown.force();
    } else {
        tracing::info!(
            signal = name,
            grace = ?shutdown.grace(),
            "shutdown requested: draining"
        );
        shutdown.trigger();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_returns_the_result_when_work_finishes_in_time() {
        let shutdown = Shutdown::new(Duration::from_secs(5));
        let s = shutdown.clone();
        let work = async move {
            s.triggered().await;
            tokio::time::sleep(Duration::from_secs(4)).await;
            "done"
        };
        shutdown.trigger();
        assert_eq!(shutdown.drain(work).await, Ok("done"));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_at_the_grace_deadline() {
        let shutdown = Shutdown::new(Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        let work = std::future::pending::<()>();
        shutdown.trigger();
        assert_eq!(
            shutdown.drain(work).await,
            Err(DrainTimeout(Duration::from_secs(5)))
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn grace_starts_at_the_trigger_not_at_the_start() {
        let shutdown = Shutdown::new(Duration::from_secs(5));
        let s = shutdown.clone();
        let work = async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            s.triggered().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
        };
        let s = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            s.trigger();
        });
        assert_eq!(shutdown.drain(work).await, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn forcing_abandons_the_drain_at_once() {
        let shutdown = Shutdown::new(Duration::from_secs(3600));
        let started = tokio::time::Instant::now();
        shutdown.trigger();
        let s = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            s.force();
        });
        assert!(shutdown.drain(std::future::pending::<()>()).await.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(shutdown.phase(), Phase::Forced);
    }

    #[test]
    fn phases_only_move_forward() {
        let shutdown = Shutdown::new(Duration::ZERO);
        shutdown.force();
        shutdown.trigger();
        assert_eq!(shutdown.phase(), Phase::Forced);
    }

    #[tokio::test(start_paused = true)]
    async fn reload_requests_reach_subscribers_and_coalesce() {
        let reload = Reload::new();
        reload.request();
        let mut rx = reload.subscribe();
        reload.request();
        reload.request();
        assert_eq!(rx.next().await, Some(3));
        let pending = tokio::time::timeout(Duration::from_millis(10), rx.next()).await;
        assert!(pending.is_err(), "no request made since the last one seen");
        drop(reload);
        assert_eq!(rx.next().await, None);
    }
}
