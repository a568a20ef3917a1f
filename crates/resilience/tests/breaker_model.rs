//! The breaker's state machine checked against a reference model.
//!
//! The model is written for clarity, not speed: it keeps every recorded
//! call and filters the window from the full list on each look, computes
//! the open duration by repeated multiplication, and decides half-open by
//! asking what the verdict would be if every outstanding probe succeeded,
//! or failed. Random configurations meet random sequences of admissions,
//! outcomes with durations, cancellations, clock advances and operator
//! actions; after every step the breaker's snapshot must match the model.

use proptest::prelude::*;
use std::time::Duration;
use trellis_resilience::breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitState, OwnedPermit, SlidingWindow,
};
use trellis_resilience::classify::Outcome;

#[derive(Debug, Clone)]
enum WindowKind {
    Count(u32),
    Time { width_ms: u64, buckets: u32 },
}

#[derive(Debug, Clone)]
struct Params {
    window: WindowKind,
    minimum_calls: u32,
    failure_pct: u32,
    slow: Option<(u64, u32)>,
    open_ms: u64,
    backoff: Option<(u32, u64)>,
    probes: u32,
}

impl Params {
    fn config(&self) -> CircuitBreakerConfig {
        let window = match self.window {
            WindowKind::Count(n) => SlidingWindow::Count(n),
            WindowKind::Time { width_ms, buckets } => SlidingWindow::Time {
                size: Duration::from_millis(width_ms * u64::from(buckets)),
                buckets,
            },
        };
        let mut config = CircuitBreakerConfig::default()
            .sliding_window(window)
            .minimum_calls(self.minimum_calls)
            .failure_rate_threshold(self.failure_pct as f32)
            .open_duration(Duration::from_millis(self.open_ms))
            .permitted_calls_in_half_open(self.probes);
        if let Some((ms, pct)) = self.slow {
            config = config.slow_calls(Duration::from_millis(ms), pct as f32);
        }
        if let Some((multiplier, max_ms)) = self.backoff {
            config = config.open_backoff(f64::from(multiplier), Duration::from_millis(max_ms));
        }
        config
    }
}

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    Finish {
        which: usize,
        failure: bool,
        duration_ms: u64,
    },
    Cancel {
        which: usize,
    },
    Advance {
        ms: u64,
    },
    ForceOpen,
    Disable,
    Reset,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum MState {
    Closed,
    Open { until: u64 },
    HalfOpen,
    ForcedOpen,
    Disabled,
}

#[derive(Debug, Clone, Copy)]
struct MTicket {
    generation: u64,
    state: MState,
}

struct Model {
    p: Params,
    now: u64,
    state: MState,
    generation: u64,
    /// Every call recorded since the breaker last closed: (time, failed, slow).
    calls: Vec<(u64, bool, bool)>,
    probes_in_flight: u32,
    probes: Vec<(bool, bool)>,
    trips: u32,
}

impl Model {
    fn new(p: Params) -> Self {
        Model {
            p,
            now: 0,
            state: MState::Closed,
            generation: 0,
            calls: Vec::new(),
            probes_in_flight: 0,
            probes: Vec::new(),
            trips: 0,
        }
    }

    fn window(&self) -> Vec<(u64, bool, bool)> {
        match self.p.window {
            WindowKind::Count(n) => {
                let skip = self.calls.len().saturating_sub(n as usize);
                self.calls[skip..].to_vec()
            }
            WindowKind::Time { width_ms, buckets } => {
                let newest = self.now / width_ms;
                self.calls
                    .iter()
                    .copied()
                    .filter(|(t, _, _)| newest - t / width_ms < u64::from(buckets))
                    .collect()
            }
        }
    }

    fn minimum(&self) -> u32 {
        let m = match self.p.window {
            WindowKind::Count(n) => self.p.minimum_calls.min(n),
            WindowKind::Time { .. } => self.p.minimum_calls,
        };
        m.max(1)
    }

    fn over(&self, failed: u32, slow: u32, calls: u32) -> bool {
        failed * 100 >= self.p.failure_pct * calls
            || self
                .p
                .slow
                .is_some_and(|(_, pct)| slow * 100 >= pct * calls)
    }

    fn open_ms(&self) -> u64 {
        let mut ms = self.p.open_ms;
        if let Some((multiplier, max)) = self.p.backoff {
            for _ in 1..self.trips {
                ms = (ms * u64::from(multiplier)).min(max);
            }
        }
        ms
    }

    fn enter(&mut self, to: MState) {
        self.generation += 1;
        self.calls.clear();
        self.probes.clear();
        self.probes_in_flight = 0;
        self.state = match to {
            MState::Open { .. } => {
                self.trips += 1;
                MState::Open {
                    until: self.now + self.open_ms(),
                }
            }
            MState::Closed => {
                self.trips = 0;
                MState::Closed
            }
            other => other,
        };
    }

    fn look(&mut self) {
        if let MState::Open { until } = self.state {
            if self.now >= until {
                self.enter(MState::HalfOpen);
            }
        }
    }

    fn acquire(&mut self) -> Result<MTicket, Duration> {
        self.look();
        let ticket = MTicket {
            generation: self.generation,
            state: self.state,
        };
        match self.state {
            MState::Closed | MState::Disabled => Ok(ticket),
            MState::Open { until } => Err(Duration::from_millis(until - self.now)),
            MState::ForcedOpen => Err(Duration::ZERO),
            MState::HalfOpen => {
                if self.probes_in_flight + (self.probes.len() as u32) < self.p.probes {
                    self.probes_in_flight += 1;
                    Ok(ticket)
                } else {
                    Err(Duration::ZERO)
                }
            }
        }
    }

    fn finish(&mut self, ticket: MTicket, failure: bool, duration_ms: u64) {
        if ticket.generation != self.generation {
            return;
        }
        let slow = self.p.slow.is_some_and(|(ms, _)| duration_ms > ms);
        match ticket.state {
            MState::Closed => {
                self.calls.push((self.now, failure, slow));
                let w = self.window();
                let n = w.len() as u32;
                let failed = w.iter().filter(|c| c.1).count() as u32;
                let slowed = w.iter().filter(|c| c.2).count() as u32;
                if n >= self.minimum() && self.over(failed, slowed, n) {
                    self.enter(MState::Open { until: 0 });
                }
            }
            MState::HalfOpen => {
                self.probes_in_flight -= 1;
                self.probes.push((failure, slow));
                let failed = self.probes.iter().filter(|c| c.0).count() as u32;
                let slowed = self.probes.iter().filter(|c| c.1).count() as u32;
                let outstanding = self.p.probes - self.probes.len() as u32;
                let all = self.p.probes;
                if self.over(failed, slowed, all) {
                    // Opens even if every outstanding probe succeeds.
                    self.enter(MState::Open { until: 0 });
                } else if !self.over(failed + outstanding, slowed + outstanding, all) {
                    // Closes even if every outstanding probe fails.
                    self.enter(MState::Closed);
                }
            }
            _ => {}
        }
    }

    fn cancel(&mut self, ticket: MTicket) {
        if ticket.generation == self.generation && ticket.state == MState::HalfOpen {
            self.probes_in_flight -= 1;
        }
    }

    fn public_state(&self) -> CircuitState {
        public(self.state)
    }
}

fn public(state: MState) -> CircuitState {
    match state {
        MState::Closed => CircuitState::Closed,
        MState::Open { .. } => CircuitState::Open,
        MState::HalfOpen => CircuitState::HalfOpen,
        MState::ForcedOpen => CircuitState::ForcedOpen,
        MState::Disabled => CircuitState::Disabled,
    }
}

fn params() -> impl Strategy<Value = Params> {
    let window = prop_oneof![
        (1u32..=8).prop_map(WindowKind::Count),
        (1u64..=500, 1u32..=4)
            .prop_map(|(width_ms, buckets)| WindowKind::Time { width_ms, buckets }),
    ];
    (
        window,
        0u32..=10,
        prop_oneof![Just(50u32), Just(100), 1u32..=100],
        proptest::option::of((1u64..=100, 1u32..=100)),
        1u64..=1000,
        proptest::option::of((1u32..=3, 1u64..=10)),
        1u32..=4,
    )
        .prop_map(
            |(window, minimum_calls, failure_pct, slow, open_ms, backoff, probes)| Params {
                window,
                minimum_calls,
                failure_pct,
                slow,
                open_ms,
                backoff: backoff.map(|(m, cap)| (m, open_ms * cap)),
                probes,
            },
        )
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        6 => Just(Op::Acquire),
        6 => (any::<usize>(), any::<bool>(), 0u64..=200)
            .prop_map(|(which, failure, duration_ms)| Op::Finish { which, failure, duration_ms }),
        1 => any::<usize>().prop_map(|which| Op::Cancel { which }),
        3 => prop_oneof![0u64..=50, 0u64..=1500].prop_map(|ms| Op::Advance { ms }),
        1 => prop_oneof![Just(Op::ForceOpen), Just(Op::Disable), Just(Op::Reset)],
    ];
    proptest::collection::vec(op, 1..200)
}

async fn check(p: Params, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let breaker = CircuitBreaker::new(p.config()).expect("generated configs are valid");
    let mut model = Model::new(p);
    let mut held: Vec<(OwnedPermit, MTicket)> = Vec::new();
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Acquire => {
                let expected = model.acquire();
                match (breaker.try_acquire_owned(), expected) {
                    (Ok(permit), Ok(ticket)) => {
                        prop_assert_eq!(permit.state(), public(ticket.state), "step {}", step);
                        held.push((permit, ticket));
                    }
                    (Err(open), Err(retry_after)) => {
                        prop_assert_eq!(open.retry_after(), retry_after, "step {}", step)
                    }
                    (got, want) => {
                        return Err(TestCaseError::fail(format!(
                            "step {step}: breaker admitted={} model admitted={}",
                            got.is_ok(),
                            want.is_ok()
                        )))
                    }
                }
            }
            Op::Finish {
                which,
                failure,
                duration_ms,
            } if !held.is_empty() => {
                let (permit, ticket) = held.swap_remove(which % held.len());
                let outcome = if failure {
                    Outcome::failure()
                } else {
                    Outcome::success()
                };
                permit.record_with_duration(outcome, Duration::from_millis(duration_ms));
                model.finish(ticket, failure, duration_ms);
            }
            Op::Cancel { which } if !held.is_empty() => {
                let (permit, ticket) = held.swap_remove(which % held.len());
                drop(permit);
                model.cancel(ticket);
            }
            Op::Finish { .. } | Op::Cancel { .. } => {}
            Op::Advance { ms } => {
                tokio::time::advance(Duration::from_millis(ms)).await;
                model.now += ms;
            }
            Op::ForceOpen => {
                breaker.force_open();
                model.enter(MState::ForcedOpen);
            }
            Op::Disable => {
                breaker.disable();
                model.enter(MState::Disabled);
            }
            Op::Reset => {
                breaker.reset();
                model.enter(MState::Closed);
            }
        }
        model.look();
        let s = breaker.snapshot();
        prop_assert_eq!(s.state, model.public_state(), "step {}", step);
        let (calls, failed, slow, rated) = match model.state {
            MState::Closed => {
                let w = model.window();
                let n = w.len() as u32;
                (
                    n,
                    w.iter().filter(|c| c.1).count() as u32,
                    w.iter().filter(|c| c.2).count() as u32,
                    n >= model.minimum(),
                )
            }
            MState::HalfOpen => {
                let n = model.probes.len() as u32;
                (
                    n,
                    model.probes.iter().filter(|c| c.0).count() as u32,
                    model.probes.iter().filter(|c| c.1).count() as u32,
                    n > 0,
                )
            }
            _ => (0, 0, 0, false),
        };
        prop_assert_eq!(
            (s.calls, s.failed_calls, s.slow_calls),
            (calls, failed, slow),
            "step {}",
            step
        );
        prop_assert_eq!(s.failure_rate.is_some(), rated, "step {}", step);
        prop_assert_eq!(s.probes_in_flight, model.probes_in_flight, "step {}", step);
        prop_assert_eq!(s.consecutive_trips, model.trips, "step {}", step);
        let half_open_in = match model.state {
            MState::Open { until } => Some(Duration::from_millis(until - model.now)),
            _ => None,
        };
        prop_assert_eq!(s.half_open_in, half_open_in, "step {}", step);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn breaker_matches_the_reference_model(p in params(), ops in ops()) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(check(p, ops))?;
    }
}
