//! Bulkhead (being written).

/// A call refused because every permit was taken and the wait queue was full,
/// or the call waited longer than the bulkhead's maximum wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bulkhead is full")]
pub struct BulkheadFull;
