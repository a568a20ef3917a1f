//! Timeout (being written).

/// A call that did not complete before its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, thiserror::Error)]
#[error("deadline elapsed")]
pub struct Elapsed;
