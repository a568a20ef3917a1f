//! What a breaker tells the outside: its state, a snapshot of its window,
//! and the events it publishes as it works.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls pass; their outcomes fill the sliding window.
    Closed,
    /// Calls are rejected until the open duration has passed.
    Open,
    /// A bounded number of probe calls pass; their outcomes decide.
    HalfOpen,
    /// An operator opened the breaker: every call is rejected until it is
    /// closed again with [`reset`](super::CircuitBreaker::reset).
    ForcedOpen,
    /// An operator switched the breaker off: every call passes, nothing is
    /// recorded.
    Disabled,
}

impl CircuitState {
    pub(crate) const fn tag(self) -> u64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
            CircuitState::ForcedOpen => 3,
            CircuitState::Disabled => 4,
        }
    }

    pub(crate) const fn from_tag(tag: u64) -> Self {
        match tag {
            0 => CircuitState::Closed,
            1 => CircuitState::Open,
            2 => CircuitState::HalfOpen,
            3 => CircuitState::ForcedOpen,
            _ => CircuitState::Disabled,
        }
    }

    /// The lower-case name used in metrics and the control API.
    pub const fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
            CircuitState::ForcedOpen => "forced_open",
            CircuitState::Disabled => "disabled",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something a breaker did. An ordinary successful call publishes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerEvent {
    /// The breaker moved from one state to another.
    StateChanged {
        /// The state it left.
        from: CircuitState,
        /// The state it entered.
        to: CircuitState,
    },
    /// A call was refused.
    Rejected {
        /// The state that refused it (open, half-open with every probe
        /// taken, or forced open).
        state: CircuitState,
        /// What the caller was told to wait.
        retry_after: Duration,
    },
    /// A call failed and was recorded.
    Failure {
        /// How long it took, when known.
        duration: Option<Duration>,
        /// It was also slower than the slow-call threshold.
        slow: bool,
    },
    /// A call succeeded, but slower than the slow-call threshold.
    SlowSuccess {
        /// How long it took.
        duration: Duration,
    },
}

/// A breaker's state and window at one moment, for metrics and the control API.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitSnapshot {
    /// The configured name.
    pub name: Arc<str>,
    /// The state a call arriving now would meet.
    pub state: CircuitState,
    /// Calls counted: the sliding window when closed, the probes recorded
    /// so far when half-open, zero otherwise.
    pub calls: u32,
    /// How many of those failed.
    pub failed_calls: u32,
    /// How many of those were slow.
    pub slow_calls: u32,
    /// Percentage of `calls` that failed; `None` until the window holds the
    /// minimum number of calls (or, half-open, until a probe is recorded).
    pub failure_rate: Option<f32>,
    /// Percentage of `calls` that were slow; `None` as for `failure_rate`.
    pub slow_call_rate: Option<f32>,
    /// Probe calls admitted and still running (half-open only).
    pub probes_in_flight: u32,
    /// When open: how long until the breaker admits probes.
    pub half_open_in: Option<Duration>,
    /// Trips since the breaker last closed after a successful probe
    /// (drives the growing open duration).
    pub consecutive_trips: u32,
}
