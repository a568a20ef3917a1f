//! Bulkhead: Trellis's `BulkheadLayer` against tower's own
//! `ConcurrencyLimit`, both wrapping a service that answers at once, on the
//! admitted path (a permit is always free), from one thread and from two
//! threads sharing one bulkhead.
//!
//! Each call is driven by hand — `poll_ready`, `call`, poll the response —
//! with a no-op waker, so the figures are the layers' own cost and not an
//! executor's. Run: `cargo bench -p trellis-benches --bench bulkhead --
//! --warm-up-time 1 --measurement-time 3`.

use criterion::{criterion_group, criterion_main, Criterion};
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tower::limit::ConcurrencyLimit;
use tower::{service_fn, Service};
use trellis_resilience::bulkhead::{Bulkhead, BulkheadConfig, BulkheadLayer};
use trellis_resilience::BoxError;

const PERMITS: usize = 1024;

type Inner = tower::util::ServiceFn<fn(u64) -> std::future::Ready<Result<u64, BoxError>>>;

fn inner() -> Inner {
    let answer: fn(u64) -> std::future::Ready<Result<u64, BoxError>> =
        |x| std::future::ready(Ok(x));
    service_fn(answer)
}

fn trellis() -> impl Service<u64, Response = u64, Error = BoxError> + Clone + Send + 'static {
    let config = BulkheadConfig::new(PERMITS).with_queue(64, Duration::from_millis(100));
    let bulkhead = Bulkhead::new(config).unwrap();
    tower::Layer::layer(&BulkheadLayer::new(bulkhead), inner())
}

fn tower_limit() -> ConcurrencyLimit<Inner> {
    ConcurrencyLimit::new(inner(), PERMITS)
}

/// One call, start to finish, without an executor.
fn drive<S>(svc: &mut S, req: u64) -> u64
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("not ready: {other:?}"),
    }
    let mut fut = pin!(svc.call(req));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(x)) => x,
        Poll::Ready(Err(e)) => panic!("failed: {e:?}"),
        Poll::Pending => panic!("pending"),
    }
}

/// `iters` calls on each of two threads at once, each with its own clone.
fn two_threads<S>(svc: &S, iters: u64) -> Duration
where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
{
    let barrier = Arc::new(Barrier::new(3));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (mut svc, barrier) = (svc.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..iters {
                    black_box(drive(&mut svc, i));
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed()
}

fn bulkhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("bulkhead");
    group.bench_function("tower-ConcurrencyLimit/1-thread", |b| {
        let mut svc = tower_limit();
        b.iter(|| black_box(drive(&mut svc, 1)))
    });
    group.bench_function("trellis/1-thread", |b| {
        let mut svc = trellis();
        b.iter(|| black_box(drive(&mut svc, 1)))
    });
    group.bench_function("tower-ConcurrencyLimit/2-threads", |b| {
        let svc = tower_limit();
        b.iter_custom(|iters| two_threads(&svc, iters))
    });
    group.bench_function("trellis/2-threads", |b| {
        let svc = trellis();
        b.iter_custom(|iters| two_threads(&svc, iters))
    });
    group.finish();
}

criterion_group!(benches, bulkhead);
criterion_main!(benches);
