//! One breaker, many tasks on many threads: counts stay exact, and calls
//! cancelled mid-flight never leak a half-open probe.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Barrier;
use tower::{service_fn, Service, ServiceExt};
use trellis_resilience::breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerService, CircuitState, SlidingWindow,
};
use trellis_resilience::classify::{ErrorsFail, Outcome};
use trellis_resilience::BoxError;

const TASKS: u32 = 16;
const CALLS: u32 = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_stay_exact_under_contention() {
    let b = CircuitBreaker::new(
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::Count(TASKS * CALLS))
            // Every third call fails: a third is below the threshold.
            .failure_rate_threshold(50.0),
    )
    .unwrap();
    let start = Arc::new(Barrier::new(TASKS as usize));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (b, start) = (b.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            for i in 0..CALLS {
                let permit = b.try_acquire().expect("closed breaker admits");
                if i % 3 == 0 {
                    permit.record(Outcome::failure());
                } else {
                    permit.record(Outcome::success());
                }
                if i % 64 == task % 64 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = b.snapshot();
    assert_eq!(s.state, CircuitState::Closed);
    assert_eq!(s.calls, TASKS * CALLS);
    assert_eq!(s.failed_calls, TASKS * CALLS.div_ceil(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_clones_on_many_threads_share_exact_counts() {
    let b = CircuitBreaker::new(
        CircuitBreakerConfig::default().sliding_window(SlidingWindow::Count(TASKS * 200)),
    )
    .unwrap();
    let inner = service_fn(|fail: bool| async move {
        tokio::task::yield_now().await;
        if fail {
            Err::<(), BoxError>("boom".into())
        } else {
            Ok(())
        }
    });
    let svc = CircuitBreakerService::new(inner, b.clone());
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let mut svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..200 {
                let _ = svc.ready().await.unwrap().call(i % 10 == 0).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = b.snapshot();
    assert_eq!((s.calls, s.failed_calls), (TASKS * 200, TASKS * 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aborted_probes_leak_no_half_open_slot() {
    let b = CircuitBreaker::new(
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::Count(1))
            .minimum_calls(1)
            .open_duration(Duration::ZERO)
            .permitted_calls_in_half_open(3),
    )
    .unwrap();
    for round in 0..20 {
        b.reset();
        b.try_acquire().unwrap().record(Outcome::failure());
        assert_eq!(b.state(), CircuitState::HalfOpen, "round {round}");
        // Many tasks race for the three probe slots and hang in the call.
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let b = b.clone();
            tasks.push(tokio::spawn(async move {
                let _ = b
                    .call(&ErrorsFail, std::future::pending::<Result<(), ()>>())
                    .await;
            }));
        }
        while b.snapshot().probes_in_flight < 3 {
            tokio::task::yield_now().await;
        }
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            // Tasks refused a probe finished on their own; the rest were cancelled.
            if let Err(e) = t.await {
                assert!(e.is_cancelled());
            }
        }
        let s = b.snapshot();
        assert_eq!(
            (s.state, s.probes_in_flight, s.calls),
            (CircuitState::HalfOpen, 0, 0)
        );
        // Every slot is free again: the probes' successes close the breaker.
        for _ in 0..3 {
            b.try_acquire()
                .expect("freed probe slot")
                .record(Outcome::success());
        }
        assert_eq!(b.state(), CircuitState::Closed, "round {round}");
    }
}
