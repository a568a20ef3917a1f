//! The circuit breaker's behaviour through its direct API: every
//! transition, both windows, slow calls, growing open durations, half-open
//! probes, operator overrides and events. Time is tokio's paused clock.

use std::time::Duration;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::time::advance;
use trellis_resilience::breaker::{
    BreakerEvent, CircuitBreaker, CircuitBreakerConfig, CircuitState, InvalidConfig, SlidingWindow,
};
use trellis_resilience::classify::{ErrorsFail, Outcome};
use trellis_resilience::{BoxError, Rejection};

const SEC: Duration = Duration::from_secs(1);

fn breaker(config: CircuitBreakerConfig) -> CircuitBreaker {
    CircuitBreaker::new(config).expect("valid config")
}

fn ok(b: &CircuitBreaker) {
    b.try_acquire()
        .expect("admitted")
        .record(Outcome::success());
}

fn fail(b: &CircuitBreaker) {
    b.try_acquire()
        .expect("admitted")
        .record(Outcome::failure());
}

fn count(n: u32, min: u32, threshold: f32) -> CircuitBreakerConfig {
    CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::Count(n))
        .minimum_calls(min)
        .failure_rate_threshold(threshold)
        .open_duration(10 * SEC)
}

/// A breaker from `config`, failed until it opened.
fn tripped(config: CircuitBreakerConfig) -> CircuitBreaker {
    let b = breaker(config);
    while b.state() == CircuitState::Closed {
        fail(&b);
    }
    b
}

#[tokio::test(start_paused = true)]
async fn opens_at_the_failure_rate_only_after_the_minimum_calls() {
    let b = breaker(count(10, 4, 50.0));
    fail(&b);
    fail(&b);
    ok(&b);
    // 2 of 3 failed, but 3 calls are fewer than the minimum.
    assert_eq!(b.state(), CircuitState::Closed);
    assert_eq!(b.snapshot().failure_rate, None);
    ok(&b);
    // 2 of 4: exactly the threshold trips.
    assert_eq!(b.state(), CircuitState::Open);
    let err = b.try_acquire().expect_err("open breaker admitted a call");
    assert_eq!(err.retry_after(), 10 * SEC);
}

#[tokio::test(start_paused = true)]
async fn stays_closed_below_the_threshold() {
    let b = breaker(count(10, 4, 50.0));
    for _ in 0..100 {
        fail(&b);
        ok(&b);
        ok(&b);
        ok(&b);
    }
    let s = b.snapshot();
    assert_eq!(s.state, CircuitState::Closed);
    assert_eq!(s.calls, 10);
    assert!(s.failure_rate.expect("rated") < 50.0);
}

#[tokio::test(start_paused = true)]
async fn count_window_forgets_calls_older_than_its_size() {
    let b = breaker(count(4, 4, 75.0));
    for outcome in [false, false, true, true, true, false, false] {
        if outcome {
            ok(&b);
        } else {
            fail(&b);
        }
    }
    // The last four calls are ok, ok, fail, fail: the first two failures left.
    let s = b.snapshot();
    assert_eq!((s.calls, s.failed_calls), (4, 2));
    assert_eq!(s.failure_rate, Some(50.0));
    assert_eq!(s.state, CircuitState::Closed);
    fail(&b);
    assert_eq!(b.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_ages_out_old_buckets() {
    let config = CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::Time {
            size: 10 * SEC,
            buckets: 10,
        })
        .minimum_calls(3)
        .failure_rate_threshold(50.0);
    let b = breaker(config);
    fail(&b);
    fail(&b);
    assert_eq!(b.snapshot().calls, 2);
    advance(9 * SEC).await;
    assert_eq!(b.snapshot().calls, 2, "still inside the window");
    advance(SEC).await;
    assert_eq!(b.snapshot().calls, 0, "aged out after the window's size");
    fail(&b);
    ok(&b);
    ok(&b);
    // 1 of 3; had the old failures stayed it would be 3 of 5 and open.
    assert_eq!(b.state(), CircuitState::Closed);
    advance(5 * SEC).await;
    fail(&b);
    assert_eq!(b.state(), CircuitState::Open, "2 of 4 inside the window");
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_the_breaker_at_their_own_rate() {
    let config = count(10, 4, 100.0).slow_calls(100 * Duration::from_millis(1), 50.0);
    let b = breaker(config);
    let mut events = b.subscribe();
    b.try_acquire()
        .unwrap()
        .record_with_duration(Outcome::success(), Duration::from_millis(150));
    // Exactly the threshold is not slow.
    b.try_acquire()
        .unwrap()
        .record_with_duration(Outcome::success(), Duration::from_millis(100));
    ok(&b);
    assert_eq!(
        events.try_recv().unwrap(),
        BreakerEvent::SlowSuccess {
            duration: Duration::from_millis(150)
        }
    );
    assert_eq!(
        events.try_recv().unwrap_err(),
        TryRecvError::Empty,
        "fast calls are silent"
    );
    // A call measured by the breaker itself, on the paused clock.
    let permit = b.try_acquire().unwrap();
    advance(Duration::from_millis(101)).await;
    permit.record(Outcome::failure());
    assert_eq!(
        events.try_recv().unwrap(),
        BreakerEvent::Failure {
            duration: Some(Duration::from_millis(101)),
            slow: true
        }
    );
    // 2 of 4 slow: open, although only 1 of 4 failed.
    assert_eq!(b.state(), CircuitState::Open);
    assert_eq!(
        events.try_recv().unwrap(),
        BreakerEvent::StateChanged {
            from: CircuitState::Closed,
            to: CircuitState::Open
        }
    );
}

#[tokio::test(start_paused = true)]
async fn open_becomes_half_open_when_its_time_is_up() {
    let b = tripped(count(2, 2, 50.0));
    advance(4 * SEC).await;
    assert_eq!(b.try_acquire().unwrap_err().retry_after(), 6 * SEC);
    assert_eq!(b.snapshot().half_open_in, Some(6 * SEC));
    advance(6 * SEC).await;
    assert_eq!(b.state(), CircuitState::HalfOpen);
    let probe = b.try_acquire().expect("probe admitted");
    assert_eq!(probe.state(), CircuitState::HalfOpen);
    probe.record(Outcome::success());
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_its_permitted_calls_then_closes_on_their_success() {
    let b = tripped(count(2, 2, 50.0).permitted_calls_in_half_open(4));
    advance(10 * SEC).await;
    let probes: Vec<_> = (0..4).map(|_| b.try_acquire().expect("probe")).collect();
    let refused = b.try_acquire().expect_err("a fifth probe");
    assert_eq!(refused.retry_after(), Duration::ZERO);
    assert_eq!(b.snapshot().probes_in_flight, 4);
    let mut probes = probes.into_iter();
    probes.next().unwrap().record(Outcome::success());
    probes.next().unwrap().record(Outcome::failure());
    probes.next().unwrap().record(Outcome::success());
    // 1 of 3 failed; a last failure would make 2 of 4, the threshold.
    assert_eq!(b.state(), CircuitState::HalfOpen);
    probes.next().unwrap().record(Outcome::success());
    assert_eq!(b.state(), CircuitState::Closed);
    assert_eq!(b.snapshot().calls, 0, "closing starts a fresh window");
}

#[tokio::test(start_paused = true)]
async fn half_open_reopens_as_soon_as_the_probes_must_fail() {
    let b = tripped(count(2, 2, 50.0).permitted_calls_in_half_open(4));
    advance(10 * SEC).await;
    let probes: Vec<_> = (0..4).map(|_| b.try_acquire().expect("probe")).collect();
    let mut probes = probes.into_iter();
    probes.next().unwrap().record(Outcome::failure());
    assert_eq!(b.state(), CircuitState::HalfOpen);
    probes.next().unwrap().record(Outcome::failure());
    // 2 of 4 have failed whatever the others do.
    assert_eq!(b.state(), CircuitState::Open);
    // The late probes belong to a half-open that is over: ignored.
    probes.next().unwrap().record(Outcome::success());
    probes.next().unwrap().record(Outcome::success());
    assert_eq!(b.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn half_open_closes_as_soon_as_the_probes_cannot_fail() {
    let b = tripped(count(2, 2, 50.0).permitted_calls_in_half_open(4));
    advance(10 * SEC).await;
    for _ in 0..3 {
        ok(&b);
    }
    assert_eq!(b.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn open_duration_grows_on_repeated_trips_up_to_its_cap() {
    let config = count(2, 2, 50.0)
        .open_duration(SEC)
        .open_backoff(2.0, 5 * SEC)
        .permitted_calls_in_half_open(1);
    let b = tripped(config);
    let mut waits = Vec::new();
    for _ in 0..4 {
        let wait = b.try_acquire().unwrap_err().retry_after();
        waits.push(wait.as_secs());
        advance(wait).await;
        fail(&b); // the probe fails: open again, for longer
    }
    assert_eq!(waits, [1, 2, 4, 5]);
    assert_eq!(b.snapshot().consecutive_trips, 5);
    advance(5 * SEC).await;
    ok(&b);
    assert_eq!(b.state(), CircuitState::Closed);
    fail(&b);
    fail(&b);
    assert_eq!(
        b.try_acquire().unwrap_err().retry_after(),
        SEC,
        "back to the start after closing"
    );
}

#[tokio::test(start_paused = true)]
async fn forced_open_rejects_with_zero_retry_after_until_reset() {
    let b = breaker(count(10, 10, 50.0));
    b.force_open();
    assert_eq!(b.state(), CircuitState::ForcedOpen);
    advance(3600 * SEC).await;
    let err = b.try_acquire().unwrap_err();
    assert_eq!(err.retry_after(), Duration::ZERO);
    assert_eq!(
        b.state(),
        CircuitState::ForcedOpen,
        "no timer ends a forced open"
    );
    b.reset();
    assert_eq!(b.state(), CircuitState::Closed);
    ok(&b);
}

#[tokio::test(start_paused = true)]
async fn disabled_never_rejects_and_records_nothing() {
    let b = breaker(count(2, 2, 50.0));
    b.disable();
    for _ in 0..100 {
        fail(&b);
    }
    let s = b.snapshot();
    assert_eq!((s.state, s.calls), (CircuitState::Disabled, 0));
    b.reset();
    assert_eq!(b.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn reset_closes_an_open_breaker_and_forgets_its_trips() {
    let b = tripped(count(2, 2, 50.0).open_backoff(2.0, 100 * SEC));
    b.reset();
    let s = b.snapshot();
    assert_eq!(
        (s.state, s.calls, s.consecutive_trips),
        (CircuitState::Closed, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_frees_its_slot_and_counts_as_nothing() {
    let b = tripped(count(2, 2, 50.0).permitted_calls_in_half_open(1));
    advance(10 * SEC).await;
    let probe = b.try_acquire().expect("probe");
    assert!(b.try_acquire().is_err(), "only one probe");
    drop(probe);
    assert_eq!(b.snapshot().probes_in_flight, 0);
    let probe = b.try_acquire().expect("the slot was freed");
    assert_eq!(b.snapshot().calls, 0, "the dropped probe was not recorded");
    probe.record(Outcome::success());
    assert_eq!(b.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn outcomes_of_calls_admitted_before_a_transition_are_ignored() {
    let b = breaker(count(2, 2, 50.0).permitted_calls_in_half_open(1));
    let late = b.try_acquire().unwrap();
    fail(&b);
    fail(&b);
    assert_eq!(b.state(), CircuitState::Open);
    advance(10 * SEC).await;
    let probe = b.try_acquire().unwrap();
    // A call from before the trip fails now: it must not decide the probe.
    late.record(Outcome::failure());
    assert_eq!(b.state(), CircuitState::HalfOpen);
    probe.record(Outcome::success());
    assert_eq!(b.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn events_report_transitions_rejections_and_failures_but_not_successes() {
    let b = breaker(count(2, 2, 50.0).permitted_calls_in_half_open(1));
    let mut events = b.subscribe();
    ok(&b);
    assert_eq!(events.try_recv().unwrap_err(), TryRecvError::Empty);
    fail(&b);
    assert_eq!(
        events.try_recv().unwrap(),
        BreakerEvent::Failure {
            duration: None,
            slow: false
        }
    );
    assert_eq!(
        events.try_recv().unwrap(),
        BreakerEvent::StateChanged {
            from: CircuitState::Closed,
            to: CircuitState::Open
        }
    );
    let _ = b.try_acquire();
    assert_eq!(
        events.try_recv().unwrap(),
        BreakerEvent::Rejected {
            state: CircuitState::Open,
            retry_after: 10 * SEC
        }
    );
    advance(10 * SEC).await;
    ok(&b);
    assert_eq!(
        events.try_recv().unwrap(),
        BreakerEvent::StateChanged {
            from: CircuitState::Open,
            to: CircuitState::HalfOpen
        }
    );
    assert_eq!(
        events.try_recv().unwrap(),
        BreakerEvent::StateChanged {
            from: CircuitState::HalfOpen,
            to: CircuitState::Closed
        }
    );
    b.force_open();
    let _ = b.try_acquire();
    assert_eq!(
        events.try_recv().unwrap(),
        BreakerEvent::StateChanged {
            from: CircuitState::Closed,
            to: CircuitState::ForcedOpen
        }
    );
    assert_eq!(
        events.try_recv().unwrap(),
        BreakerEvent::Rejected {
            state: CircuitState::ForcedOpen,
            retry_after: Duration::ZERO
        }
    );
}

#[tokio::test(start_paused = true)]
async fn call_runs_plain_futures_and_fails_fast_when_open() {
    let b = breaker(count(2, 2, 50.0));
    let got = b
        .call(&ErrorsFail, async { Ok::<_, std::io::Error>(7) })
        .await;
    assert_eq!(got.unwrap(), 7);
    let got = b
        .call(&ErrorsFail, async {
            Err::<u8, _>(std::io::Error::other("down"))
        })
        .await;
    assert_eq!(got.unwrap_err().into_inner().unwrap().to_string(), "down");
    assert_eq!(b.state(), CircuitState::Open);
    let mut ran = false;
    let got = b
        .call(&ErrorsFail, async {
            ran = true;
            Ok::<_, std::io::Error>(1)
        })
        .await;
    let err = got.unwrap_err();
    assert!(err.is_open());
    assert!(!ran, "a rejected call is never started");
    let boxed: BoxError = Box::new(err);
    assert_eq!(
        Rejection::of(&boxed),
        Some(Rejection::BreakerOpen {
            retry_after: 10 * SEC
        })
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_releases_its_probe() {
    let b = tripped(count(2, 2, 50.0).permitted_calls_in_half_open(1));
    advance(10 * SEC).await;
    let hung = b.call(&ErrorsFail, std::future::pending::<Result<(), ()>>());
    let timed_out = tokio::time::timeout(SEC, hung).await;
    assert!(timed_out.is_err());
    let got = b.call(&ErrorsFail, async { Ok::<_, ()>(()) }).await;
    assert!(
        matches!(got, Ok(())),
        "the cancelled probe's slot was given back"
    );
    assert_eq!(b.state(), CircuitState::Closed);
}

#[test]
fn bad_config_is_a_typed_error() {
    let err = CircuitBreaker::new(CircuitBreakerConfig::default().failure_rate_threshold(150.0))
        .unwrap_err();
    assert_eq!(err, InvalidConfig::FailureRateThreshold(150.0));
    assert!(err.to_string().contains("failure_rate_threshold"));
    let err = CircuitBreaker::new(
        CircuitBreakerConfig::default().sliding_window(SlidingWindow::Count(0)),
    )
    .unwrap_err();
    assert_eq!(err, InvalidConfig::EmptyWindow);
}

#[tokio::test(start_paused = true)]
async fn half_open_gives_up_on_probes_that_take_longer_than_the_max_wait() {
    let config = count(4, 2, 50.0)
        .permitted_calls_in_half_open(1)
        .max_wait_in_half_open(5 * SEC);
    let b = tripped(config);
    tokio::time::advance(10 * SEC).await;
    // The one probe is admitted and hangs.
    let probe = b.try_acquire().expect("probe admitted");
    assert_eq!(b.state(), CircuitState::HalfOpen);
    tokio::time::advance(4 * SEC).await;
    assert!(b.try_acquire().is_err());
    assert_eq!(b.state(), CircuitState::HalfOpen, "still within the wait");
    tokio::time::advance(SEC).await;
    let refused = b.try_acquire().expect_err("re-opened");
    assert_eq!(b.state(), CircuitState::Open);
    assert_eq!(refused.retry_after(), 10 * SEC);
    // The probe's late success belongs to the old half-open and changes nothing.
    probe.record(Outcome::success());
    assert_eq!(b.state(), CircuitState::Open);
    tokio::time::advance(10 * SEC).await;
    assert!(b.try_acquire().is_ok());
    assert_eq!(b.state(), CircuitState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn without_a_max_wait_half_open_waits_for_its_probes() {
    let b = tripped(count(4, 2, 50.0).permitted_calls_in_half_open(1));
    tokio::time::advance(10 * SEC).await;
    let probe = b.try_acquire().expect("probe admitted");
    tokio::time::advance(3600 * SEC).await;
    assert!(b.try_acquire().is_err());
    assert_eq!(b.state(), CircuitState::HalfOpen);
    probe.record(Outcome::success());
    assert_eq!(b.state(), CircuitState::Closed);
}
