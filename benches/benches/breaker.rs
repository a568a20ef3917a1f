//! Per-call overhead of a closed circuit breaker on the allowed path:
//! trellis's breaker against the `failsafe` crate's, both through their
//! direct APIs, and trellis's tower service against the bare service it
//! wraps. "two_threads" measures one thread's calls while a second thread
//! hammers the same breaker. Results: docs/benchmarks/breaker.md.
//!
//! Times are the measuring thread's CPU time, not wall time: the machine
//! these figures come from is shared and oversubscribed, and wall time
//! there mostly measures how long the thread waited to be scheduled.

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::convert::Infallible;
use std::future::{ready, Future};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tower::{service_fn, Service};
use trellis_resilience::breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerService, SlidingWindow,
};
use trellis_resilience::classify::Outcome;

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`), in ns.
struct ThreadCpuTime;

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
}

const CLOCK_THREAD_CPUTIME_ID: i32 = 3;

fn thread_cpu_ns() -> u64 {
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; Linux x86_64 layout.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns() - start
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &Nanos
    }
}

struct Nanos;

impl ValueFormatter for Nanos {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (div, unit) = match typical {
            t if t < 1e3 => (1.0, "ns"),
            t if t < 1e6 => (1e3, "µs"),
            _ => (1e6, "ms"),
        };
        values.iter_mut().for_each(|v| *v /= div);
        unit
    }
    fn scale_throughputs(&self, _: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let n = match t {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) => *n,
        };
        values.iter_mut().for_each(|v| *v = n as f64 * 1e9 / *v);
        "elem/s"
    }
    fn scale_for_machines(&self, _: &mut [f64]) -> &'static str {
        "ns"
    }
}

type Crit = Criterion<ThreadCpuTime>;

fn trellis() -> CircuitBreaker {
    CircuitBreaker::new(CircuitBreakerConfig::default()).expect("default config is valid")
}

/// Time window and slow-call detection: the configuration that reads the clock.
fn trellis_timed() -> CircuitBreaker {
    CircuitBreaker::new(
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::time(Duration::from_secs(10)))
            .slow_calls(Duration::from_secs(1), 100.0),
    )
    .expect("valid config")
}

fn trellis_call(b: &CircuitBreaker) {
    let permit = black_box(b).try_acquire().expect("closed");
    permit.record(black_box(Outcome::success()));
}

fn failsafe_default() -> impl failsafe::CircuitBreaker + Clone + Send + Sync {
    failsafe::Config::new().build()
}

fn failsafe_consecutive() -> impl failsafe::CircuitBreaker + Clone + Send + Sync {
    let backoff = failsafe::backoff::constant(Duration::from_secs(60));
    failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::consecutive_failures(5, backoff))
        .build()
}

fn failsafe_call(b: &impl failsafe::CircuitBreaker) {
    let r = black_box(b).call(|| Ok::<_, ()>(black_box(1u32)));
    assert!(r.is_ok());
}

/// Calls `svc` once and polls the response, which is ready at once.
fn tower_call<S: Service<u32, Response = u32>>(svc: &mut S, cx: &mut Context<'_>) {
    assert!(svc.poll_ready(cx).is_ready());
    let mut fut = std::pin::pin!(svc.call(black_box(1)));
    match fut.as_mut().poll(cx) {
        Poll::Ready(Ok(n)) => {
            black_box(n);
        }
        _ => panic!("inner service is always ready and succeeds"),
    }
}

fn bare() -> impl Service<u32, Response = u32, Error = Infallible> + Clone {
    service_fn(|n: u32| ready(Ok::<_, Infallible>(n + 1)))
}

fn one_thread(c: &mut Crit) {
    let mut g = c.benchmark_group("breaker/one_thread");
    let b = trellis();
    g.bench_function("trellis", |bench| bench.iter(|| trellis_call(&b)));
    let b = trellis_timed();
    g.bench_function("trellis_time_window_slow_calls", |bench| {
        bench.iter(|| trellis_call(&b))
    });
    let f = failsafe_default();
    g.bench_function("failsafe_default", |bench| bench.iter(|| failsafe_call(&f)));
    let f = failsafe_consecutive();
    g.bench_function("failsafe_consecutive_failures", |bench| {
        bench.iter(|| failsafe_call(&f))
    });

    let mut cx = Context::from_waker(Waker::noop());
    let mut svc = bare();
    g.bench_function("tower_bare", |bench| {
        bench.iter(|| tower_call(&mut svc, &mut cx))
    });
    let mut svc = CircuitBreakerService::new(bare(), trellis());
    g.bench_function("tower_trellis", |bench| {
        bench.iter(|| tower_call(&mut svc, &mut cx))
    });
    g.finish();
}

/// Calls the second thread made while the first was being timed, and the
/// first thread's calls: their ratio says how much the two really overlapped
/// (on an oversubscribed machine they may seldom run at once).
static OTHER_CALLS: AtomicU64 = AtomicU64::new(0);
static TIMED_CALLS: AtomicU64 = AtomicU64::new(0);

/// Times `iters` calls on this thread while another thread makes the same
/// calls on the same breaker.
fn contended<T: Clone + Send>(shared: &T, iters: u64, call: impl Fn(&mut T) + Sync) -> u64 {
    let stop = AtomicBool::new(false);
    let batches = AtomicU64::new(0);
    let started = Barrier::new(2);
    std::thread::scope(|s| {
        let mut other = shared.clone();
        let (stop, batches, started, call) = (&stop, &batches, &started, &call);
        s.spawn(move || {
            started.wait();
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..64 {
                    call(&mut other);
                }
                batches.fetch_add(1, Ordering::Relaxed);
            }
        });
        let mut mine = shared.clone();
        started.wait();
        let before = batches.load(Ordering::Relaxed);
        let t = thread_cpu_ns();
        for _ in 0..iters {
            call(&mut mine);
        }
        let elapsed = thread_cpu_ns() - t;
        let other = (batches.load(Ordering::Relaxed) - before) * 64;
        stop.store(true, Ordering::Relaxed);
        OTHER_CALLS.fetch_add(other, Ordering::Relaxed);
        TIMED_CALLS.fetch_add(iters, Ordering::Relaxed);
        elapsed
    })
}

fn report_overlap(name: &str) {
    let other = OTHER_CALLS.swap(0, Ordering::Relaxed) as f64;
    let timed = TIMED_CALLS.swap(0, Ordering::Relaxed).max(1) as f64;
    eprintln!(
        "overlap {name}: the second thread made {:.2} calls per timed call",
        other / timed
    );
}

fn two_threads(c: &mut Crit) {
    let mut g = c.benchmark_group("breaker/two_threads");
    let b = trellis();
    g.bench_function("trellis", |bench| {
        bench.iter_custom(|iters| contended(&b, iters, |b| trellis_call(b)))
    });
    report_overlap("trellis");
    let f = failsafe_default();
    g.bench_function("failsafe_default", |bench| {
        bench.iter_custom(|iters| contended(&f, iters, |f| failsafe_call(f)))
    });
    report_overlap("failsafe_default");
    let f = failsafe_consecutive();
    g.bench_function("failsafe_consecutive_failures", |bench| {
        bench.iter_custom(|iters| contended(&f, iters, |f| failsafe_call(f)))
    });
    report_overlap("failsafe_consecutive_failures");
    let svc = bare();
    g.bench_function("tower_bare", |bench| {
        bench.iter_custom(|iters| {
            contended(&svc, iters, |svc| {
                tower_call(svc, &mut Context::from_waker(Waker::noop()))
            })
        })
    });
    report_overlap("tower_bare");
    let svc = CircuitBreakerService::new(bare(), trellis());
    g.bench_function("tower_trellis", |bench| {
        bench.iter_custom(|iters| {
            contended(&svc, iters, |svc| {
                tower_call(svc, &mut Context::from_waker(Waker::noop()))
            })
        })
    });
    report_overlap("tower_trellis");
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = one_thread, two_threads
}
criterion_main!(benches);
