//! Clocks for the in-process stores.
//!
//! Reading the clock is the largest single cost of a local decision, so
//! the clock is a choice:
//! - [`TokioClock`] (the default) reads `tokio::time::Instant`, so a paused
//!   tokio clock (`start_paused`, `time::advance`) drives the limiter —
//!   what tests of a service need;
//! - [`FastClock`] reads the CPU's timestamp counter through `quanta`
//!   (the clock `governor` uses), several times cheaper than the OS clock
//!   on the hot path, but blind to a paused tokio clock.

/// A monotonic clock, in nanoseconds since an origin of its own.
pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds since the clock was made; never goes backwards.
    fn now_ns(&self) -> u64;
}

/// Tokio's clock, which a paused test runtime controls.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        TokioClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    #[inline]
    fn now_ns(&self) -> u64 {
        // 584 years of headroom before saturating.
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The CPU timestamp counter (via `quanta`), falling back to the OS clock
/// where the counter is not reliable.
#[derive(Debug, Clone)]
pub struct FastClock {
    clock: quanta::Clock,
    origin: u64,
}

impl FastClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        FastClock { clock, origin }
    }
}

impl Default for FastClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for FastClock {
    // Inline across crates: the call would cost as much as the read.
    #[inline]
    fn now_ns(&self) -> u64 {
        self.clock.delta_as_nanos(self.origin, self.clock.raw())
    }
}
