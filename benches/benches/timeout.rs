//! Timeout and retry on the allowed path, against tower's own middleware.
//!
//! * `timeout/1-thread`: trellis `Timeout` vs `tower::timeout::Timeout` vs no
//!   timeout at all, on a service that answers at once.
//! * `timeout/2-threads`: the same, two tasks on a two-worker runtime each
//!   calling its own clone; time per call per task.
//! * `retry/success`: trellis `Retry` (without and with a budget) vs
//!   `tower::retry::Retry` with an attempt-counting policy, on a service
//!   that succeeds; and both with their retry budget (trellis `RetryBudget`
//!   vs tower `TpsBudget`, 10 s window, 10/s floor, 20%).
//!
//! Run: `cargo bench -p trellis-benches --bench timeout -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, Criterion};
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::retry::budget::{Budget, TpsBudget};
use tower::{service_fn, Service, ServiceExt};
use trellis_resilience::retry::{Retry, RetryBudget, RetryConfig};
use trellis_resilience::timeout::Timeout;

const TIMEOUT: Duration = Duration::from_secs(30);

fn echo(
) -> impl Service<u64, Response = u64, Error = Infallible, Future = Ready<Result<u64, Infallible>>>
       + Clone
       + Send
       + 'static {
    service_fn(|x: u64| ready(Ok::<_, Infallible>(x)))
}

/// Calls `svc` `iters` times, awaiting readiness each time as a caller must.
async fn drive<S>(mut svc: S, iters: u64) -> Duration
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for i in 0..iters {
        let out = svc.ready().await.unwrap().call(i).await.unwrap();
        std::hint::black_box(out);
    }
    start.elapsed()
}

fn one_thread<S>(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    svc: S,
) where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    c.bench_function(name, |b| {
        b.iter_custom(|iters| rt.block_on(drive(svc.clone(), iters)))
    });
}

fn two_threads<S>(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    svc: S,
) where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                let tasks: Vec<_> = (0..2)
                    .map(|_| tokio::spawn(drive(svc.clone(), iters)))
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
                start.elapsed()
            })
        })
    });
}

fn timeouts(c: &mut Criterion) {
    let mut g = c.benchmark_group("timeout/1-thread");
    one_thread(&mut g, "none", echo());
    one_thread(
        &mut g,
        "tower",
        tower::timeout::Timeout::new(echo(), TIMEOUT),
    );
    one_thread(&mut g, "trellis", Timeout::new(echo(), TIMEOUT));
    g.finish();

    let mut g = c.benchmark_group("timeout/2-threads");
    two_threads(&mut g, "none", echo());
    two_threads(
        &mut g,
        "tower",
        tower::timeout::Timeout::new(echo(), TIMEOUT),
    );
    two_threads(&mut g, "trellis", Timeout::new(echo(), TIMEOUT));
    g.finish();
}

/// Up to two retries of errors, the same rule as trellis's default config.
#[derive(Clone)]
struct Attempts(usize);

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for Attempts {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Err(_) if self.0 > 0 => {
                self.0 -= 1;
                Some(ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// tower's own budget, used the way its docs suggest: deposit on every
/// response, withdraw before a retry.
#[derive(Clone)]
struct Budgeted(Arc<TpsBudget>);

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for Budgeted {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => {
                self.0.deposit();
                None
            }
            Err(_) => self.0.withdraw().then(|| ready(())),
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

fn retries(c: &mut Criterion) {
    let mut g = c.benchmark_group("retry/success");
    one_thread(
        &mut g,
        "tower",
        tower::retry::Retry::new(Attempts(2), echo()),
    );
    one_thread(
        &mut g,
        "trellis",
        Retry::new(echo(), RetryConfig::default()),
    );
    let budgeted = RetryConfig {
        budget: Some(RetryBudget::default()),
        ..RetryConfig::default()
    };
    one_thread(&mut g, "trellis+budget", Retry::new(echo(), budgeted));
    let tower_budget = Budgeted(Arc::new(TpsBudget::default()));
    one_thread(
        &mut g,
        "tower+budget",
        tower::retry::Retry::new(tower_budget, echo()),
    );
    g.finish();
}

criterion_group!(benches, timeouts, retries);
criterion_main!(benches);
