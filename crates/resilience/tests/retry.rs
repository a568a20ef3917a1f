//! Retry on plain (non-HTTP) services, on tokio's paused clock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};
use trellis_resilience::classify::Outcome;
use trellis_resilience::retry::{
    Backoff, GiveUpReason, Jitter, ReplayWith, Retry, RetryBudget, RetryConfig, RetryEvent,
    RetryLayer,
};
use trellis_resilience::timeout::Elapsed;
use trellis_resilience::{BoxError, Rejection};

const MS: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, Copy)]
enum Step {
    Ok,
    Fail,
    Hang,
    SlowFail(Duration),
}

#[derive(Debug, thiserror::Error)]
#[error("upstream failed")]
struct UpstreamFailed;

/// An upstream that follows `plan(call_index)` and logs when each call started.
#[derive(Clone)]
struct Upstream {
    starts: Arc<Mutex<Vec<Instant>>>,
    in_flight: Arc<AtomicUsize>,
}

impl Upstream {
    fn new() -> Self {
        Upstream {
            starts: Arc::default(),
            in_flight: Arc::default(),
        }
    }

    fn calls(&self) -> usize {
        self.starts.lock().unwrap().len()
    }

    fn gaps(&self) -> Vec<Duration> {
        let starts = self.starts.lock().unwrap();
        starts.windows(2).map(|w| w[1] - w[0]).collect()
    }

    fn service(
        &self,
        plan: impl Fn(usize) -> Step + Clone + Send + 'static,
    ) -> impl Service<u32, Response = u32, Error = BoxError, Future = impl Send> + Clone + Send
    {
        let me = self.clone();
        service_fn(move |request: u32| {
            let n = {
                let mut starts = me.starts.lock().unwrap();
                starts.push(Instant::now());
                starts.len() - 1
            };
            let step = plan(n);
            let guard = InFlight::new(&me.in_flight);
            async move {
                let _guard = guard;
                match step {
                    Step::Ok => Ok(request),
                    Step::Fail => Err(BoxError::from(UpstreamFailed)),
                    Step::Hang => std::future::pending().await,
                    Step::SlowFail(d) => {
                        tokio::time::sleep(d).await;
                        Err(UpstreamFailed.into())
                    }
                }
            }
        })
    }
}

/// Counts calls in flight; dropping the call's future releases it.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(counter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn config(max_attempts: u32, backoff: Backoff) -> RetryConfig {
    RetryConfig {
        max_attempts,
        backoff,
        ..RetryConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_call_is_retried_until_it_succeeds() {
    let upstream = Upstream::new();
    let svc = Retry::new(
        upstream.service(|n| if n < 2 { Step::Fail } else { Step::Ok }),
        config(3, Backoff::Constant(10 * MS)),
    );
    assert_eq!(svc.oneshot(7).await.unwrap(), 7);
    assert_eq!(upstream.calls(), 3);
    assert_eq!(upstream.gaps(), [10 * MS, 10 * MS]);
}

#[tokio::test(start_paused = true)]
async fn max_attempts_bounds_the_attempts_and_the_last_error_is_returned() {
    let upstream = Upstream::new();
    let layer = RetryLayer::new(config(4, Backoff::None));
    let mut events = layer.events().subscribe();
    let svc = layer.layer(upstream.service(|_| Step::Fail));
    let err = svc.oneshot(1).await.unwrap_err();
    assert!(err.downcast_ref::<UpstreamFailed>().is_some(), "{err}");
    assert_eq!(upstream.calls(), 4);
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    let expected: Vec<_> = (2..=4)
        .map(|attempt| RetryEvent::Retrying {
            attempt,
            delay: Duration::ZERO,
            retry_after: false,
        })
        .chain([RetryEvent::GaveUp {
            attempts: 4,
            reason: GiveUpReason::MaxAttempts,
        }])
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(layer.snapshot().retries, 3);
    assert_eq!(layer.snapshot().gave_up, 1);
}

#[tokio::test(start_paused = true)]
async fn delays_of_every_jitter_kind_stay_within_bounds_and_the_cap() {
    let base = 100 * MS;
    let cap = 1000 * MS;
    for jitter in [
        Jitter::None,
        Jitter::Full,
        Jitter::Equal,
        Jitter::Decorrelated,
    ] {
        for seed in 0..20 {
            let upstream = Upstream::new();
            let backoff = Backoff::Exponential { base, cap, jitter };
            let layer = RetryLayer::new(config(8, backoff)).seed(seed);
            let mut events = layer.events().subscribe();
            let svc = layer.layer(upstream.service(|_| Step::Fail));
            svc.oneshot(0).await.unwrap_err();
            let gaps = upstream.gaps();
            assert_eq!(gaps.len(), 7);
            let mut previous = Duration::ZERO;
            for (n, gap) in gaps.iter().copied().enumerate() {
                // The wait is the announced delay, rounded up to tokio's
                // millisecond timer resolution.
                let delay = match events.try_recv().unwrap() {
                    RetryEvent::Retrying { delay, .. } => delay,
                    other => panic!("unexpected {other:?}"),
                };
                assert!(
                    gap >= delay && gap - delay < MS,
                    "waited {gap:?} for {delay:?}"
                );
                let gap = delay;
                let ceiling = (base * 2u32.pow(n as u32)).min(cap);
                assert!(gap <= cap, "{jitter:?} gap {gap:?} above cap");
                match jitter {
                    Jitter::None => assert_eq!(gap, ceiling),
                    Jitter::Full => assert!(gap <= ceiling),
                    Jitter::Equal => assert!(gap >= ceiling / 2 && gap <= ceiling),
                    Jitter::Decorrelated => {
                        assert!(gap >= base && gap <= (previous.max(base) * 3).min(cap))
                    }
                }
                previous = gap;
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_budget_stops_a_retry_storm() {
    let (ratio, floor, seconds, requests) = (0.2, 10u32, 10u64, 1000usize);
    let upstream = Upstream::new();
    let budget = RetryBudget::new(Duration::from_secs(seconds), floor, ratio).unwrap();
    let layer = RetryLayer::new(RetryConfig {
        budget: Some(budget),
        ..config(3, Backoff::None)
    });
    let mut svc = layer.layer(upstream.service(|_| Step::Fail));
    let spacing = Duration::from_secs(seconds) / requests as u32;
    for _ in 0..requests {
        assert!(svc.ready().await.unwrap().call(0).await.is_err());
        tokio::time::advance(spacing).await;
    }
    let retries = upstream.calls() - requests;
    let bound = ratio * requests as f64 + f64::from(floor) * seconds as f64;
    assert!(retries as f64 <= bound, "{retries} retries > {bound}");
    // The budget limits a storm; it does not forbid retrying.
    assert!(
        retries as f64 >= ratio * requests as f64,
        "only {retries} retries"
    );
    assert!(
        retries < 2 * requests,
        "without a budget there would be 2000"
    );
    let snapshot = layer.snapshot();
    assert_eq!(snapshot.retries as usize, retries);
    assert!(snapshot.budget_exhausted > 0);
}

#[tokio::test(start_paused = true)]
async fn retry_after_from_the_classifier_replaces_the_backoff() {
    let upstream = Upstream::new();
    let classify = |r: &Result<u32, BoxError>| match r {
        Ok(_) => Outcome::success(),
        Err(_) => Outcome::failure().with_retry_after(Some(Duration::from_secs(2))),
    };
    let layer = RetryLayer::new(config(2, Backoff::Constant(10 * MS))).classify(classify);
    let svc = layer.layer(upstream.service(|n| if n == 0 { Step::Fail } else { Step::Ok }));
    let mut events = layer.events().subscribe();
    svc.oneshot(0).await.unwrap();
    assert_eq!(upstream.gaps(), [Duration::from_secs(2)]);
    assert_eq!(
        events.try_recv().unwrap(),
        RetryEvent::Retrying {
            attempt: 2,
            delay: Duration::from_secs(2),
            retry_after: true
        }
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_beyond_the_deadline_or_the_maximum_gives_up_at_once() {
    let classify = |r: &Result<u32, BoxError>| match r {
        Ok(_) => Outcome::success(),
        Err(_) => Outcome::failure().with_retry_after(Some(Duration::from_secs(5))),
    };
    for (deadline, max_retry_after, reason) in [
        (
            Some(Duration::from_secs(1)),
            Duration::from_secs(60),
            GiveUpReason::Deadline,
        ),
        (
            None,
            Duration::from_secs(3),
            GiveUpReason::RetryAfterTooLong,
        ),
    ] {
        let upstream = Upstream::new();
        let layer = RetryLayer::new(RetryConfig {
            deadline,
            max_retry_after,
            ..config(5, Backoff::None)
        })
        .classify(classify);
        let mut events = layer.events().subscribe();
        let svc = layer.layer(upstream.service(|_| Step::Fail));
        let start = Instant::now();
        svc.oneshot(0).await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::ZERO, "must not wait in vain");
        assert_eq!(upstream.calls(), 1);
        assert_eq!(
            events.try_recv().unwrap(),
            RetryEvent::GaveUp {
                attempts: 1,
                reason
            }
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_overall_deadline_spans_attempts_and_backoff() {
    let upstream = Upstream::new();
    let svc = Retry::new(
        upstream.service(|_| Step::SlowFail(400 * MS)),
        RetryConfig {
            deadline: Some(Duration::from_secs(1)),
            ..config(10, Backoff::Constant(100 * MS))
        },
    );
    let start = Instant::now();
    let err = svc.oneshot(0).await.unwrap_err();
    assert!(err.downcast_ref::<UpstreamFailed>().is_some());
    // 0–400 ms, wait, 500–900 ms, wait would end at 1000 ms: the deadline.
    assert_eq!(upstream.calls(), 2);
    assert_eq!(start.elapsed(), 900 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_attempt_is_cut_off_by_the_overall_deadline() {
    let upstream = Upstream::new();
    let svc = Retry::new(
        upstream.service(|_| Step::Hang),
        RetryConfig {
            deadline: Some(Duration::from_secs(1)),
            ..config(10, Backoff::None)
        },
    );
    let start = Instant::now();
    let err = svc.oneshot(0).await.unwrap_err();
    assert!(err.is::<Elapsed>());
    assert_eq!(Rejection::of(&err), Some(Rejection::Timeout));
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(upstream.calls(), 1);
    assert_eq!(upstream.in_flight.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_per_try_timeout_abandons_a_slow_attempt_and_retries() {
    let upstream = Upstream::new();
    let svc = Retry::new(
        upstream.service(|n| if n == 0 { Step::Hang } else { Step::Ok }),
        RetryConfig {
            per_try_timeout: Some(200 * MS),
            ..config(3, Backoff::Constant(50 * MS))
        },
    );
    let start = Instant::now();
    assert_eq!(svc.oneshot(5).await.unwrap(), 5);
    assert_eq!(start.elapsed(), 250 * MS);
    assert_eq!(upstream.gaps(), [250 * MS]);
    assert_eq!(upstream.in_flight.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_per_try_timeout_never_outlives_the_deadline() {
    let upstream = Upstream::new();
    let svc = Retry::new(
        upstream.service(|_| Step::Hang),
        RetryConfig {
            per_try_timeout: Some(Duration::from_secs(1)),
            deadline: Some(300 * MS),
            ..config(3, Backoff::None)
        },
    );
    let start = Instant::now();
    assert!(svc.oneshot(0).await.unwrap_err().is::<Elapsed>());
    assert_eq!(start.elapsed(), 300 * MS);
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_fatal_failure_is_not_retried_and_success_is_silent() {
    let upstream = Upstream::new();
    let classify = |r: &Result<u32, BoxError>| match r {
        Ok(_) => Outcome::success(),
        Err(_) => Outcome::fatal(),
    };
    let layer = RetryLayer::new(config(5, Backoff::None)).classify(classify);
    let mut events = layer.events().subscribe();
    let mut svc = layer.layer(upstream.service(|n| if n == 0 { Step::Fail } else { Step::Ok }));
    svc.ready().await.unwrap().call(0).await.unwrap_err();
    assert_eq!(upstream.calls(), 1);
    svc.ready().await.unwrap().call(0).await.unwrap();
    assert_eq!(events.try_recv(), Err(TryRecvError::Empty));
    assert_eq!(layer.snapshot().retries, 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_the_policy_cannot_copy_is_sent_once() {
    let upstream = Upstream::new();
    let layer = RetryLayer::new(config(5, Backoff::None))
        .policy(ReplayWith(|r: &u32| (*r % 2 == 0).then_some(*r)));
    let mut events = layer.events().subscribe();
    let mut svc = layer.layer(upstream.service(|_| Step::Fail));
    svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(upstream.calls(), 1);
    assert_eq!(
        events.try_recv().unwrap(),
        RetryEvent::GaveUp {
            attempts: 1,
            reason: GiveUpReason::NotReplayable
        }
    );
    svc.ready().await.unwrap().call(2).await.unwrap_err();
    assert_eq!(upstream.calls(), 6);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_call_mid_backoff_or_mid_attempt_leaves_nothing_behind() {
    let upstream = Upstream::new();
    // A concurrency limit of one below the retry: a leaked permit would
    // block every later call.
    let limited =
        tower::limit::ConcurrencyLimitLayer::new(1).layer(upstream.service(|n| match n {
            0 => Step::Fail,
            1 => Step::Hang,
            _ => Step::Ok,
        }));
    let layer = RetryLayer::new(config(3, Backoff::Constant(Duration::from_secs(10))));
    let mut svc = layer.layer(limited);

    // Mid-backoff: the first attempt failed, the retry sleeps for 10 s.
    let call = svc.ready().await.unwrap().call(1);
    assert!(tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .is_err());
    assert_eq!(upstream.calls(), 1);

    // Mid-attempt: the next call hangs and is dropped.
    let call = svc.ready().await.unwrap().call(2);
    assert!(tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .is_err());
    assert_eq!(upstream.in_flight.load(Ordering::SeqCst), 0);

    // Neither left a permit, a timer or a call behind.
    let next = tokio::time::timeout(MS, svc.ready().await.unwrap().call(3)).await;
    assert_eq!(next.unwrap().unwrap(), 3);
    assert_eq!(upstream.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn clones_share_counters_and_budget() {
    let upstream = Upstream::new();
    let budget = RetryBudget::new(Duration::from_secs(10), 1, 0.0).unwrap();
    let layer = RetryLayer::new(RetryConfig {
        budget: Some(budget.clone()),
        ..config(20, Backoff::None)
    });
    let a = layer.layer(upstream.service(|_| Step::Fail));
    let b = a.clone();
    a.oneshot(0).await.unwrap_err();
    b.oneshot(0).await.unwrap_err();
    // A floor of 1/s over 10 s: ten retries in all, across both clones.
    assert_eq!(upstream.calls(), 2 + 10);
    assert_eq!(layer.snapshot().retries, 10);
    assert_eq!(budget.snapshot().available, 0);
}

/// An upstream whose first `rejections` calls are refused with `rejection`.
fn refusing(
    upstream: &Upstream,
    rejections: usize,
    rejection: fn() -> BoxError,
) -> impl Service<u32, Response = u32, Error = BoxError, Future = impl Send> + Clone + Send {
    let starts = Arc::clone(&upstream.starts);
    service_fn(move |request: u32| {
        let n = {
            let mut starts = starts.lock().unwrap();
            starts.push(Instant::now());
            starts.len() - 1
        };
        let result = if n < rejections {
            Err(rejection())
        } else {
            Ok(request)
        };
        std::future::ready(result)
    })
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_below_is_not_retried_by_default() {
    use trellis_resilience::breaker::BreakerOpen;
    let upstream = Upstream::new();
    let layer = RetryLayer::new(config(3, Backoff::Constant(10 * MS)));
    let mut events = layer.events().subscribe();
    let svc = layer.layer(refusing(&upstream, 1, || {
        BreakerOpen::new(Duration::from_secs(5)).into()
    }));
    let err = svc.oneshot(1).await.unwrap_err();
    assert!(
        matches!(Rejection::of(&err), Some(Rejection::BreakerOpen { .. })),
        "{err}"
    );
    assert_eq!(upstream.calls(), 1);
    assert_eq!(layer.snapshot().retries, 0);
    assert_eq!(events.try_recv().unwrap_err(), TryRecvError::Empty);
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_below_is_not_retried_by_default() {
    use trellis_resilience::bulkhead::BulkheadFull;
    let upstream = Upstream::new();
    let svc = Retry::new(
        refusing(&upstream, 1, || BulkheadFull.into()),
        config(3, Backoff::None),
    );
    let err = svc.oneshot(1).await.unwrap_err();
    assert_eq!(Rejection::of(&err), Some(Rejection::BulkheadFull));
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn rejections_are_retried_when_asked_to() {
    use trellis_resilience::breaker::BreakerOpen;
    use trellis_resilience::bulkhead::BulkheadFull;
    let upstream = Upstream::new();
    let layer = RetryLayer::new(config(3, Backoff::Constant(10 * MS))).retry_rejections(true);
    let svc = layer.layer(refusing(&upstream, 2, || BulkheadFull.into()));
    assert_eq!(svc.oneshot(4).await.unwrap(), 4);
    assert_eq!(upstream.calls(), 3);
    assert_eq!(upstream.gaps(), [10 * MS, 10 * MS]);

    let upstream = Upstream::new();
    let svc = layer.layer(refusing(&upstream, 1, || {
        BreakerOpen::new(Duration::from_secs(5)).into()
    }));
    assert_eq!(svc.oneshot(5).await.unwrap(), 5);
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_below_is_retried_after_its_retry_after() {
    use trellis_resilience::ratelimit::RateLimited;
    let upstream = Upstream::new();
    let layer = RetryLayer::new(config(3, Backoff::Constant(10 * MS)));
    let mut events = layer.events().subscribe();
    let svc = layer.layer(refusing(&upstream, 1, || {
        RateLimited::new(Duration::from_millis(700)).into()
    }));
    assert_eq!(svc.oneshot(9).await.unwrap(), 9);
    assert_eq!(upstream.calls(), 2);
    // The limiter's wait, not the 10 ms backoff.
    assert_eq!(upstream.gaps(), [700 * MS]);
    assert_eq!(
        events.try_recv().unwrap(),
        RetryEvent::Retrying {
            attempt: 2,
            delay: 700 * MS,
            retry_after: true
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_that_outlasts_the_deadline_is_returned_at_once() {
    use trellis_resilience::ratelimit::RateLimited;
    let upstream = Upstream::new();
    let layer = RetryLayer::new(RetryConfig {
        deadline: Some(Duration::from_millis(500)),
        ..config(3, Backoff::Constant(10 * MS))
    });
    let mut events = layer.events().subscribe();
    let svc = layer.layer(refusing(&upstream, 1, || {
        RateLimited::new(Duration::from_secs(2)).into()
    }));
    let started = Instant::now();
    let err = svc.oneshot(1).await.unwrap_err();
    assert_eq!(
        Rejection::of(&err),
        Some(Rejection::RateLimited {
            retry_after: Duration::from_secs(2)
        })
    );
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(upstream.calls(), 1);
    assert_eq!(
        events.try_recv().unwrap(),
        RetryEvent::GaveUp {
            attempts: 1,
            reason: GiveUpReason::Deadline
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_longer_than_max_retry_after_is_not_waited_for() {
    use trellis_resilience::ratelimit::RateLimited;
    let upstream = Upstream::new();
    let layer = RetryLayer::new(RetryConfig {
        max_retry_after: Duration::from_secs(1),
        ..config(3, Backoff::None)
    });
    let mut events = layer.events().subscribe();
    let svc = layer.layer(refusing(&upstream, 1, || {
        RateLimited::new(Duration::from_secs(30)).into()
    }));
    assert!(svc.oneshot(1).await.is_err());
    assert_eq!(upstream.calls(), 1);
    assert_eq!(
        events.try_recv().unwrap(),
        RetryEvent::GaveUp {
            attempts: 1,
            reason: GiveUpReason::RetryAfterTooLong
        }
    );
}
