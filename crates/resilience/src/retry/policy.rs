//! Which requests may be sent again, and how a deadline travels with them.
//!
//! A retry must send the same request twice, so it needs a copy made before
//! the first attempt consumes the original. Whether a copy may exist at all
//! is the policy's call: a plain `Clone` request always can; an HTTP request
//! only when its method is idempotent (or it carries an idempotency key) and
//! its body was small enough to buffer — see [`super::http`].

use crate::timeout::Deadline;

/// Decides whether a request may be attempted again and makes the copy.
pub trait RetryPolicy<Req> {
    /// A copy of `request` for another attempt, or `None` when it must not
    /// be retried.
    fn replay(&self, request: &Req) -> Option<Req>;

    /// The deadline an outer layer set on `request`, which the retry must
    /// finish within. Plain requests carry none.
    fn inherited_deadline(&self, _request: &Req) -> Option<Deadline> {
        None
    }

    /// Tells inner layers the deadline of this attempt.
    fn set_deadline(&self, _request: &mut Req, _deadline: Deadline) {}
}

/// Retries any request by cloning it.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneRequest;

impl<Req: Clone> RetryPolicy<Req> for CloneRequest {
    fn replay(&self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }
}

/// Retries what a closure `Fn(&Req) -> Option<Req>` copies.
#[derive(Debug, Clone, Copy)]
pub struct ReplayWith<F>(pub F);

impl<Req, F> RetryPolicy<Req> for ReplayWith<F>
where
    F: Fn(&Req) -> Option<Req>,
{
    fn replay(&self, request: &Req) -> Option<Req> {
        (self.0)(request)
    }
}
