//! Permits: a breaker's leave for one call, redeemed with its outcome.
//!
//! A permit dropped without an outcome (the caller's future was cancelled)
//! counts as nothing; if it was a half-open probe, its slot goes to the
//! next caller, so cancellations can never wedge a breaker half-open.

use super::core::{Shared, Ticket};
use super::event::CircuitState;
use super::CircuitBreaker;
use crate::classify::Outcome;
use std::fmt;
use std::time::Duration;

/// Leave for one call through a [`CircuitBreaker`], borrowed from it.
#[must_use = "a permit records nothing unless given the call's outcome"]
pub struct Permit<'a> {
    shared: &'a Shared,
    ticket: Ticket,
}

impl<'a> Permit<'a> {
    pub(crate) fn new(shared: &'a Shared, ticket: Ticket) -> Self {
        Permit { shared, ticket }
    }

    /// Records the call's outcome; its duration is measured from admission
    /// when slow calls are detected.
    #[inline]
    pub fn record(self, outcome: Outcome) {
        self.shared.complete(self.ticket, outcome.failure, None);
        std::mem::forget(self);
    }

    /// Records the call's outcome with a duration the caller measured.
    pub fn record_with_duration(self, outcome: Outcome, duration: Duration) {
        self.shared
            .complete(self.ticket, outcome.failure, Some(duration));
        std::mem::forget(self);
    }

    /// The state the call was admitted in (`HalfOpen` for a probe).
    pub fn state(&self) -> CircuitState {
        self.ticket.state()
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.shared.release(self.ticket);
    }
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", self.shared.name())
            .field("state", &self.state())
            .finish()
    }
}

/// Leave for one call that owns a handle on its breaker, for calls that
/// outlive the borrow (spawned tasks, tower response futures).
#[must_use = "a permit records nothing unless given the call's outcome"]
pub struct OwnedPermit {
    breaker: CircuitBreaker,
    /// Taken when the outcome is recorded, so the drop that follows is a no-op.
    ticket: Option<Ticket>,
    state: CircuitState,
}

impl OwnedPermit {
    pub(crate) fn new(breaker: CircuitBreaker, ticket: Ticket) -> Self {
        OwnedPermit {
            breaker,
            state: ticket.state(),
            ticket: Some(ticket),
        }
    }

    /// Records the call's outcome; see [`Permit::record`].
    pub fn record(self, outcome: Outcome) {
        self.finish(outcome, None);
    }

    /// Records the call's outcome with a measured duration.
    pub fn record_with_duration(self, outcome: Outcome, duration: Duration) {
        self.finish(outcome, Some(duration));
    }

    fn finish(mut self, outcome: Outcome, duration: Option<Duration>) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker
                .shared
                .complete(ticket, outcome.failure, duration);
        }
    }

    /// The state the call was admitted in (`HalfOpen` for a probe).
    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// The breaker this permit belongs to.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.shared.release(ticket);
        }
    }
}

impl fmt::Debug for OwnedPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedPermit")
            .field("breaker", self.breaker.shared.name())
            .field("state", &self.state())
            .finish()
    }
}
