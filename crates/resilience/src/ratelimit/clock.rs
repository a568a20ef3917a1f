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
//!
//! A clock may also count in *ticks* of its own. [`DirectStore`] keeps its
//! state in ticks, so a decision reads the clock without scaling it to
//! nanoseconds: the scaling is a 128-bit multiply and a shift on the
//! dependency chain from the clock read to the compare-and-swap, which is
//! the whole cost of a decision. The quota is converted to ticks instead,
//! once.
//!
//! [`DirectStore`]: super::DirectStore

/// A monotonic clock, in nanoseconds since an origin of its own.
pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds since the clock was made; never goes backwards.
    fn now_ns(&self) -> u64;

    /// The time in the clock's own ticks, from an origin of its own; never
    /// goes backwards. By default a tick is a nanosecond.
    #[inline]
    fn now_ticks(&self) -> u64 {
        self.now_ns()
    }

    /// `ns` nanoseconds in ticks, rounded to the nearest tick, saturating.
    #[inline]
    fn ticks_from_ns(&self, ns: u64) -> u64 {
        ns
    }

    /// `ticks` ticks in nanoseconds, rounded up, saturating.
    #[inline]
    fn ns_from_ticks(&self, ticks: u64) -> u64 {
        ticks
    }
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
///
/// Its ticks are the counter's own, shifted left where needed so that a
/// tick is at most a nanosecond: a quota converted to ticks is then never
/// coarser than the nanoseconds it was stated in (the interval is off by
/// at most half a tick: half a nanosecond at worst, a quarter or less on a
/// counter of 2 GHz or more).
#[derive(Debug, Clone)]
pub struct FastClock {
    clock: quanta::Clock,
    origin: u64,
    /// Counter values are shifted left by this much to make ticks.
    shift: u32,
    /// Ticks in 2^32 ns.
    ticks_per_2_32_ns: u64,
    /// Nanoseconds in 2^32 ticks.
    ns_per_2_32_ticks: u64,
}

impl FastClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        // quanta does not publish its scale, so measure it through
        // `delta_as_nanos`, which applies it: the fewest counts that make
        // 2^32 ns. Counts map to nanoseconds monotonically.
        let target = 1u64 << 32;
        let ns = |counts: u64| clock.delta_as_nanos(0, counts);
        let mut high = 1u64;
        while ns(high) < target && high < 1 << 62 {
            high <<= 1;
        }
        let (mut low, mut counts) = (high / 2, high);
        while low + 1 < counts {
            let mid = low + (counts - low) / 2;
            if ns(mid) >= target {
                counts = mid;
            } else {
                low = mid;
            }
        }
        // A counter slower than 1 GHz is shifted until a tick is <= 1 ns;
        // 2^62 ticks is then still decades.
        let mut shift = 0;
        while counts << shift < target && shift < 30 {
            shift += 1;
        }
        let ticks_per_2_32_ns = counts << shift;
        FastClock {
            clock,
            origin,
            shift,
            ticks_per_2_32_ns,
            ns_per_2_32_ticks: u64::try_from((1u128 << 64) / u128::from(ticks_per_2_32_ns))
                .unwrap_or(u64::MAX),
        }
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

    // The raw counter with no origin taken off: it counts from boot, so
    // it stays far below 2^62 ticks for decades and the GCRA arithmetic
    // never nears overflow; one subtraction fewer on the hot path.
    #[inline]
    fn now_ticks(&self) -> u64 {
        self.clock.raw() << self.shift
    }

    fn ticks_from_ns(&self, ns: u64) -> u64 {
        let ticks = (u128::from(ns) * u128::from(self.ticks_per_2_32_ns) + (1 << 31)) >> 32;
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    #[inline]
    fn ns_from_ticks(&self, ticks: u64) -> u64 {
        let ns = (u128::from(ticks) * u128::from(self.ns_per_2_32_ticks) + ((1 << 32) - 1)) >> 32;
        u64::try_from(ns).unwrap_or(u64::MAX)
    }
}
