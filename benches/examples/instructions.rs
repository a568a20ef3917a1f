//! Runs one layer's admitted path N times, for `valgrind --tool=callgrind`:
//! instruction counts do not move when the machine is busy, so they show a
//! change that wall-clock benchmarks on a shared machine cannot.
//!
//! `benches/instructions.sh` runs every case twice (N and 2N calls) and
//! prints the difference divided by N: instructions per call.

use std::future::Future;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tower::{service_fn, Service};
use trellis_resilience::bulkhead::{Bulkhead, BulkheadConfig, BulkheadLayer};
use trellis_resilience::ratelimit::{DirectStore, FastClock, Quota, RateLimiter};
use trellis_resilience::BoxError;

fn drive<S: Service<u64, Response = u64>>(svc: &mut S, req: u64) -> u64 {
    let mut cx = Context::from_waker(Waker::noop());
    let Poll::Ready(Ok(())) = svc.poll_ready(&mut cx) else {
        std::process::exit(2)
    };
    let mut fut = pin!(svc.call(req));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(x)) => x,
        _ => std::process::exit(3),
    }
}

fn echo(x: u64) -> std::future::Ready<Result<u64, BoxError>> {
    std::future::ready(Ok(x))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let case = args.next().unwrap_or_default();
    let n: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    match case.as_str() {
        "bulkhead/trellis" => {
            let config = BulkheadConfig::new(1024).with_queue(64, Duration::from_millis(100));
            let Ok(bulkhead) = Bulkhead::new(config) else {
                return;
            };
            let mut svc = tower::Layer::layer(&BulkheadLayer::new(bulkhead), service_fn(echo));
            for i in 0..n {
                black_box(drive(&mut svc, i));
            }
        }
        "bulkhead/tower" => {
            let mut svc = tower::limit::ConcurrencyLimit::new(service_fn(echo), 1024);
            for i in 0..n {
                black_box(drive(&mut svc, i));
            }
        }
        "direct/trellis" => {
            let Ok(quota) = Quota::per_second(1_000_000_000) else {
                return;
            };
            let limiter = RateLimiter::new(quota, DirectStore::with_clock(FastClock::new()));
            for _ in 0..n {
                // What governor+state reports: admitted, and the burst left.
                let d = limiter.check_now(&());
                black_box((d.allowed, d.remaining));
            }
        }
        "direct/governor" => {
            let Some(rate) = NonZeroU32::new(1_000_000_000) else {
                return;
            };
            let gov = governor::RateLimiter::direct(governor::Quota::per_second(rate));
            for _ in 0..n {
                black_box(gov.check().is_ok());
            }
        }
        "direct/governor+state" => {
            let Some(rate) = NonZeroU32::new(1_000_000_000) else {
                return;
            };
            let gov = governor::RateLimiter::direct(governor::Quota::per_second(rate))
                .with_middleware::<governor::middleware::StateInformationMiddleware>();
            for _ in 0..n {
                black_box(gov.check().map(|s| s.remaining_burst_capacity()).is_ok());
            }
        }
        _ => {
            eprintln!("unknown case {case:?}");
            std::process::exit(1);
        }
    }
}
