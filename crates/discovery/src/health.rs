//! Keeping each instance's health current: a supervisor task per instance
//! that expires lapsed TTLs, runs active checks with thresholds, and removes
//! an instance that has stayed critical past its deregister grace.
//!
//! Probing is behind [`Prober`] so the timing logic is tested on tokio's
//! paused clock with a scripted prober, and the network probes separately.

use futures::future::BoxFuture;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Weak};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

use crate::model::{CheckKind, HealthCheck, Status};
use crate::registry::Inner;

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub status: Status,
    pub output: String,
}

/// Runs one active check against `authority` (`host:port`).
pub trait Prober: Send + Sync + 'static {
    fn probe<'a>(
        &'a self,
        authority: &'a str,
        check: &'a HealthCheck,
    ) -> BoxFuture<'a, ProbeResult>;
}

/// The real prober: HTTP `GET` over a fresh connection, or a TCP connect,
/// each bounded by the check's timeout.
pub fn network_prober() -> Arc<dyn Prober> {
    Arc::new(NetworkProber)
}

struct NetworkProber;

impl Prober for NetworkProber {
    fn probe<'a>(
        &'a self,
        authority: &'a str,
        check: &'a HealthCheck,
    ) -> BoxFuture<'a, ProbeResult> {
        Box::pin(async move {
            let attempt = async {
                match check.kind {
                    CheckKind::Tcp => TcpStream::connect(authority)
                        .await
                        .map(|_| ProbeResult {
                            status: Status::Passing,
                            output: format!("TCP connect {authority}: ok"),
                        })
                        .unwrap_or_else(|e| ProbeResult {
                            status: Status::Critical,
                            output: format!("TCP connect {authority}: {e}"),
                        }),
                    CheckKind::Http => {
                        http_probe(authority, check.path.as_deref().unwrap_or("/")).await
                    }
                    CheckKind::Grpc => {
                        crate::grpc_health::probe(
                            authority,
                            check.grpc_service.as_deref().unwrap_or(""),
                        )
                        .await
                    }
                }
            };
            match tokio::time::timeout(check.timeout, attempt).await {
                Ok(r) => r,
                Err(_) => ProbeResult {
                    status: Status::Critical,
                    output: format!(
                        "no answer from {authority} within {}",
                        humantime::format_duration(check.timeout)
                    ),
                },
            }
        })
    }
}

async fn http_probe(authority: &str, path: &str) -> ProbeResult {
    let fail = |what: String| ProbeResult {
        status: Status::Critical,
        output: what,
    };
    let stream = match TcpStream::connect(authority).await {
        Ok(s) => s,
        Err(e) => return fail(format!("HTTP GET {path}: connect {authority}: {e}")),
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(pair) => pair,
        Err(e) => return fail(format!("HTTP GET {path}: {e}")),
    };
    let conn = tokio::spawn(conn);
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "trellis-registry-check")
        .body(Empty::<bytes::Bytes>::new());
    let request = match request {
        Ok(r) => r,
        Err(e) => return fail(format!("HTTP GET {path}: {e}")),
    };
    let result = match sender.send_request(request).await {
        Ok(resp) => {
            let code = resp.status();
            let status = if code.is_success() {
                Status::Passing
            } else if code == http::StatusCode::TOO_MANY_REQUESTS {
                Status::Warning
            } else {
                Status::Critical
            };
            ProbeResult {
                status,
                output: format!("HTTP GET {path}: {code}"),
            }
        }
        Err(e) => fail(format!("HTTP GET {path}: {e}")),
    };
    conn.abort();
    result
}

/// The supervisor of one registered instance (generation `generation`); it
/// ends when the instance is replaced or removed, or the registry is dropped.
pub(crate) async fn supervise(inner: Weak<Inner>, service: String, id: String, generation: u64) {
    let Some(kind) = with_entry(&inner, &service, &id, generation, |e| {
        (e.registration.ttl.is_some(), e.registration.check.clone())
    }) else {
        return;
    };
    match kind {
        (true, _) => supervise_ttl(inner, service, id, generation).await,
        (false, Some(check)) => supervise_check(inner, service, id, generation, check).await,
        (false, None) => {}
    }
}

fn with_entry<T>(
    inner: &Weak<Inner>,
    service: &str,
    id: &str,
    generation: u64,
    f: impl FnOnce(&crate::registry::Entry) -> T,
) -> Option<T> {
    let inner = inner.upgrade()?;
    let st = inner.state.lock();
    st.services
        .get(service)?
        .instances
        .get(id)
        .filter(|e| e.generation == generation)
        .map(f)
}

/// When the instance's deregister grace ends, if it is critical.
fn removal_due(inner: &Inner, e: &crate::registry::Entry) -> Option<Instant> {
    e.critical_since.map(|since| since + e.grace(&inner.config))
}

async fn supervise_ttl(inner: Weak<Inner>, service: String, id: String, generation: u64) {
    loop {
        let (wake, notify) = {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            let st = strong.state.lock();
            let Some(e) = st
                .services
                .get(&service)
                .and_then(|s| s.instances.get(&id))
                .filter(|e| e.generation == generation)
            else {
                return;
            };
            let wake = match (removal_due(&strong, e), e.ttl_deadline) {
                (Some(due), _) => due,
                (None, Some(deadline)) => deadline,
                (None, None) => return,
            };
            (wake, e.wake.clone())
        };
        tokio::select! {
            _ = sleep_until(wake) => {}
            // A heartbeat moved the deadline: recompute when to wake.
            _ = notify.notified() => continue,
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let now = Instant::now();
        let remove = {
            let mut st = strong.state.lock();
            let Some(e) = st
                .services
                .get(&service)
                .and_then(|s| s.instances.get(&id))
                .filter(|e| e.generation == generation)
            else {
                return;
            };
            let expired = e.ttl_deadline.is_some_and(|d| d <= now) && e.status != Status::Critical;
            let due = removal_due(&strong, e).is_some_and(|d| d <= now);
            if expired {
                let ttl = e.registration.ttl.unwrap_or_default();
                strong.set_status_locked(
                    &mut st,
                    &service,
                    &id,
                    generation,
                    Status::Critical,
                    format!(
                        "TTL of {} expired without a heartbeat",
                        humantime::format_duration(ttl)
                    ),
                    now,
                );
            }
            due
        };
        if remove {
            expire(&strong, &service, &id, generation).await;
            return;
        }
    }
}

async fn supervise_check(
    inner: Weak<Inner>,
    service: String,
    id: String,
    generation: u64,
    check: HealthCheck,
) {
    let Some(authority) = with_entry(&inner, &service, &id, generation, |e| {
        e.registration.authority()
    }) else {
        return;
    };
    let mut next = Instant::now();
    loop {
        sleep_until(next).await;
        next += check.interval;
        let prober = match inner.upgrade() {
            Some(s) => s.prober.clone(),
            None => return,
        };
        let result = prober.probe(&authority, &check).await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let now = Instant::now();
        let remove = {
            let mut st = strong.state.lock();
            let Some(e) = st
                .services
                .get_mut(&service)
                .and_then(|s| s.instances.get_mut(&id))
                .filter(|e| e.generation == generation)
            else {
                return;
            };
            let target = apply_thresholds(e, &check, result.status);
            let status = target.unwrap_or(e.status);
            strong.set_status_locked(
                &mut st,
                &service,
                &id,
                generation,
                status,
                result.output,
                now,
            );
            st.services
                .get(&service)
                .and_then(|s| s.instances.get(&id))
                .and_then(|e| removal_due(&strong, e))
                .is_some_and(|d| d <= now)
        };
        if remove {
            expire(&strong, &service, &id, generation).await;
            return;
        }
        // Catch up rather than burst if a probe overran the interval.
        next = next.max(Instant::now());
    }
}

/// Counts consecutive results and decides the status they imply, if it
/// changes: `failure_threshold` failures in a row make a served instance
/// critical, and `success_threshold` passes in a row bring a critical one back
/// (a newly registered instance starts critical and needs the same).
fn apply_thresholds(
    e: &mut crate::registry::Entry,
    check: &HealthCheck,
    probe: Status,
) -> Option<Status> {
    match probe {
        Status::Critical => {
            e.passes = 0;
            e.failures = e.failures.saturating_add(1);
            (e.status == Status::Critical || e.failures >= check.failure_threshold)
                .then_some(Status::Critical)
        }
        ok => {
            e.failures = 0;
            e.passes = e.passes.saturating_add(1);
            (e.status != Status::Critical || e.passes >= check.success_threshold).then_some(ok)
        }
    }
}

async fn expire(inner: &Arc<Inner>, service: &str, id: &str, generation: u64) {
    tracing::info!(
        service,
        id,
        "removing instance critical past its deregister grace"
    );
    if let Err(e) = inner.remove(service, id, Some(generation)).await {
        tracing::error!(service, id, error = %e, "could not remove expired instance; it stays critical");
    }
}
