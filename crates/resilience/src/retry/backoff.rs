//! Backoff: how long to wait before each retry.
//!
//! Exponential backoff alone spreads retries out in time but keeps clients
//! that failed together retrying together; jitter breaks them apart. The
//! three jitter kinds are those of the AWS "Exponential Backoff and Jitter"
//! analysis: *full* (uniform in `[0, d]`), *equal* (`d/2` plus uniform in
//! `[0, d/2]`) and *decorrelated* (uniform in `[base, 3 × previous]`), each
//! capped. A [`Backoff`] is a plain value; [`Backoff::delays`] yields the
//! delays of one call's retries and is usable on its own.

use std::time::Duration;

/// How a delay is randomised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// The delay itself: `min(cap, base × 2ⁿ)`. Clients that failed together
    /// retry together.
    None,
    /// Uniform in `[0, min(cap, base × 2ⁿ)]`: fewest calls under contention.
    #[default]
    Full,
    /// Half the delay plus uniform in the other half: never retries at once.
    Equal,
    /// Uniform in `[base, 3 × previous delay]`, capped.
    Decorrelated,
}

/// A backoff strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// Retry at once.
    None,
    /// The same delay before every retry.
    Constant(Duration),
    /// Delays growing from `base`, doubling per retry, never above `cap`.
    Exponential {
        base: Duration,
        cap: Duration,
        jitter: Jitter,
    },
}

impl Default for Backoff {
    /// Exponential from 25 ms to 10 s with full jitter (Envoy's base, the
    /// jitter AWS found cheapest).
    fn default() -> Self {
        Backoff::exponential(Duration::from_millis(25), Duration::from_secs(10))
    }
}

impl Backoff {
    /// Exponential backoff from `base` up to `cap`, with full jitter.
    pub const fn exponential(base: Duration, cap: Duration) -> Self {
        Backoff::Exponential {
            base,
            cap,
            jitter: Jitter::Full,
        }
    }

    /// The same strategy with `jitter` (no effect on `None` and `Constant`).
    pub const fn with_jitter(self, jitter: Jitter) -> Self {
        match self {
            Backoff::Exponential { base, cap, .. } => Backoff::Exponential { base, cap, jitter },
            other => other,
        }
    }

    /// The delays before each retry of one call, seeded from the thread's
    /// random generator.
    pub fn delays(&self) -> Delays {
        self.delays_with(fastrand::Rng::new())
    }

    /// The delays before each retry of one call, drawn from `rng` (seed it
    /// for reproducible tests and simulations).
    pub fn delays_with(&self, rng: fastrand::Rng) -> Delays {
        Delays {
            backoff: *self,
            retry: 0,
            previous: Duration::ZERO,
            rng,
        }
    }

    /// The delay before retry number `retry` (0 for the first retry), given
    /// the `previous` delay (used by decorrelated jitter; zero at first).
    pub fn delay(&self, retry: u32, previous: Duration, rng: &mut fastrand::Rng) -> Duration {
        match *self {
            Backoff::None => Duration::ZERO,
            Backoff::Constant(delay) => delay,
            Backoff::Exponential { base, cap, jitter } => {
                let base_ns = nanos(base);
                let cap_ns = nanos(cap);
                let ceiling = exponential(base_ns, retry).min(cap_ns);
                let ns = match jitter {
                    Jitter::None => ceiling,
                    Jitter::Full => rng.u64(0..=ceiling),
                    Jitter::Equal => ceiling / 2 + rng.u64(0..=ceiling - ceiling / 2),
                    Jitter::Decorrelated => {
                        let previous = nanos(previous).max(base_ns);
                        let high = previous.saturating_mul(3).max(base_ns);
                        rng.u64(base_ns..=high).min(cap_ns)
                    }
                };
                Duration::from_nanos(ns)
            }
        }
    }
}

/// Nanoseconds, saturating: a delay of centuries is as good as forever.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `base × 2^retry`, saturating.
fn exponential(base_ns: u64, retry: u32) -> u64 {
    if retry >= 64 {
        return if base_ns == 0 { 0 } else { u64::MAX };
    }
    base_ns.saturating_mul(1u64 << retry)
}

/// The delays of one call's retries, in order; endless.
#[derive(Debug, Clone)]
pub struct Delays {
    backoff: Backoff,
    retry: u32,
    previous: Duration,
    rng: fastrand::Rng,
}

impl Delays {
    /// The delay before the next retry.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.backoff.delay(self.retry, self.previous, &mut self.rng);
        self.retry = self.retry.saturating_add(1);
        self.previous = delay;
        delay
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn no_jitter_doubles_until_the_cap() {
        let b = Backoff::exponential(10 * MS, 100 * MS).with_jitter(Jitter::None);
        let got: Vec<_> = b.delays().take(6).collect();
        assert_eq!(
            got,
            [10 * MS, 20 * MS, 40 * MS, 80 * MS, 100 * MS, 100 * MS]
        );
    }

    #[test]
    fn huge_retry_counts_saturate_at_the_cap() {
        let b = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(30))
            .with_jitter(Jitter::None);
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(
            b.delay(200, Duration::ZERO, &mut rng),
            Duration::from_secs(30)
        );
        let max = Backoff::exponential(Duration::MAX, Duration::MAX).with_jitter(Jitter::Equal);
        assert!(max.delay(3, Duration::MAX, &mut rng) > Duration::ZERO);
    }

    #[test]
    fn seeded_delays_are_reproducible() {
        let b = Backoff::default().with_jitter(Jitter::Decorrelated);
        let a: Vec<_> = b.delays_with(fastrand::Rng::with_seed(7)).take(8).collect();
        let c: Vec<_> = b.delays_with(fastrand::Rng::with_seed(7)).take(8).collect();
        assert_eq!(a, c);
    }

    #[test]
    fn constant_and_none() {
        assert!(Backoff::None.delays().take(5).all(|d| d.is_zero()));
        assert!(Backoff::Constant(3 * MS)
            .delays()
            .take(5)
            .all(|d| d == 3 * MS));
    }

    proptest! {
        #[test]
        fn every_jitter_stays_within_its_bounds(
            seed in any::<u64>(), base_ms in 1u32..500, cap_ms in 1u32..20_000,
        ) {
            let (base, cap) = (base_ms * MS, cap_ms * MS);
            for jitter in [Jitter::Full, Jitter::Equal, Jitter::Decorrelated] {
                let b = Backoff::Exponential { base, cap, jitter };
                let mut previous = Duration::ZERO;
                for (n, d) in b.delays_with(fastrand::Rng::with_seed(seed)).take(20).enumerate() {
                    let ceiling = (base * 2u32.pow(n as u32)).min(cap);
                    prop_assert!(d <= cap, "{jitter:?} {d:?} over cap {cap:?}");
                    match jitter {
                        Jitter::Full => prop_assert!(d <= ceiling),
                        Jitter::Equal => prop_assert!(d >= ceiling / 2 && d <= ceiling),
                        Jitter::Decorrelated => {
                            let high = (previous.max(base) * 3).min(cap);
                            prop_assert!(d >= base.min(cap) && d <= high, "{d:?} not in [{base:?}, {high:?}]");
                        }
                        Jitter::None => unreachable!(),
                    }
                    previous = d;
                }
            }
        }
    }

    #[test]
    fn jitter_actually_spreads_delays() {
        let b = Backoff::exponential(100 * MS, Duration::from_secs(10));
        let mut rng = fastrand::Rng::with_seed(3);
        let firsts: std::collections::HashSet<_> = (0..50)
            .map(|_| b.delay(4, Duration::ZERO, &mut rng))
            .collect();
        assert!(
            firsts.len() > 40,
            "full jitter gave only {} distinct delays",
            firsts.len()
        );
    }
}
