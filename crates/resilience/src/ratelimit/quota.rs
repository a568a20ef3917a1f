//! Quotas, decisions, and the GCRA arithmetic every store shares.
//!
//! The Generic Cell Rate Algorithm keeps one number per key, the
//! *theoretical arrival time* (TAT): when the key's bucket would be empty
//! again if no more calls came. A quota of `n` per `period` with burst `b`
//! has an emission interval `T = period / n`; a call at `now` is admitted
//! when `max(TAT, now) + T - now <= b·T`, and then moves the TAT on by `T`.
//! So a fresh key admits `b` calls at once and then one every `T`. A key
//! whose TAT is in the past is indistinguishable from a key never seen,
//! which is what lets a store forget idle keys without losing anything.

use std::time::Duration;

/// How much a key may do: `count` calls per `period`, with bursts of up to
/// `burst` calls at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    interval_ns: u64,
    burst: u32,
    /// `u64::MAX / interval_ns`, for [`Rate`]: worked out here once rather
    /// than on every decision.
    interval_recip: u64,
}

/// A quota that cannot work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// The count of calls per period was zero.
    #[error("rate-limit quota count must be at least 1")]
    ZeroCount,
    /// The period was zero.
    #[error("rate-limit quota period must be longer than zero")]
    ZeroPeriod,
    /// The burst was zero, which would refuse every call.
    #[error("rate-limit quota burst must be at least 1")]
    ZeroBurst,
    /// More than one call per nanosecond.
    #[error("rate-limit quota of {count} per {period:?} is faster than one call per nanosecond")]
    TooFast {
        /// The configured count.
        count: u32,
        /// The configured period.
        period: Duration,
    },
    /// The burst takes longer to refill than this crate can count.
    #[error("rate-limit quota window (interval x burst) overflows")]
    TooLong,
}

impl Quota {
    /// `count` calls per `period`, in bursts of up to `count`.
    pub fn new(count: u32, period: Duration) -> Result<Quota, QuotaError> {
        if count == 0 {
            return Err(QuotaError::ZeroCount);
        }
        if period.is_zero() {
            return Err(QuotaError::ZeroPeriod);
        }
        let period_ns = u64::try_from(period.as_nanos()).map_err(|_| QuotaError::TooLong)?;
        let interval_ns = period_ns / u64::from(count);
        if interval_ns == 0 {
            return Err(QuotaError::TooFast { count, period });
        }
        Quota {
            interval_ns,
            burst: count,
            interval_recip: u64::MAX / interval_ns,
        }
        .checked()
    }

    /// `count` calls per second.
    pub fn per_second(count: u32) -> Result<Quota, QuotaError> {
        Self::new(count, Duration::from_secs(1))
    }

    /// `count` calls per minute.
    pub fn per_minute(count: u32) -> Result<Quota, QuotaError> {
        Self::new(count, Duration::from_secs(60))
    }

    /// `count` calls per hour.
    pub fn per_hour(count: u32) -> Result<Quota, QuotaError> {
        Self::new(count, Duration::from_secs(3600))
    }

    /// The same rate with bursts of up to `burst` calls.
    pub fn with_burst(self, burst: u32) -> Result<Quota, QuotaError> {
        if burst == 0 {
            return Err(QuotaError::ZeroBurst);
        }
        Quota { burst, ..self }.checked()
    }

    fn checked(self) -> Result<Quota, QuotaError> {
        self.interval_ns
            .checked_mul(u64::from(self.burst))
            .ok_or(QuotaError::TooLong)?;
        Ok(self)
    }

    /// Calls admitted at once from a fresh key.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Time between calls at the sustained rate (`period / count`).
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns)
    }

    /// Time for an exhausted key to get its whole burst back.
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.window_ns())
    }

    #[cfg(feature = "redis")]
    pub(crate) fn interval_ns(&self) -> u64 {
        self.interval_ns
    }

    /// No quota at all: its interval of zero matches no real quota, so a
    /// store can hold it where it has not been told one yet.
    pub(crate) const UNSET: Quota = Quota {
        interval_ns: 0,
        burst: 0,
        interval_recip: 0,
    };

    /// The same quota as `other`, comparing only what the reciprocal is
    /// derived from.
    #[inline]
    pub(crate) fn same_as(&self, other: &Quota) -> bool {
        self.interval_ns == other.interval_ns && self.burst == other.burst
    }

    /// The quota as GCRA arithmetic in nanoseconds.
    #[inline]
    pub(crate) fn rate(&self) -> Rate {
        Rate {
            interval: self.interval_ns,
            window: self.window_ns(),
            recip: self.interval_recip,
        }
    }

    /// The quota as GCRA arithmetic in a clock's ticks, `ticks_from_ns`
    /// converting. The burst stays exact (the window is a whole number of
    /// intervals); the interval is as close as a whole number of ticks
    /// gets. A window of more than 2^62 ticks (decades) is cut to that,
    /// so that adding it to a clock reading can never overflow.
    pub(crate) fn rate_in(&self, ticks_from_ns: impl Fn(u64) -> u64) -> Rate {
        let burst = u64::from(self.burst);
        let interval = ticks_from_ns(self.interval_ns).clamp(1, (1 << 62) / burst);
        Rate {
            interval,
            window: interval * burst,
            recip: u64::MAX / interval,
        }
    }

    pub(crate) fn window_ns(&self) -> u64 {
        // Checked in the constructors.
        self.interval_ns * u64::from(self.burst)
    }

    /// The decision for a refused call when the store could not be asked.
    pub(crate) fn refused_blind(&self) -> Decision {
        Decision {
            allowed: false,
            limit: u64::from(self.burst),
            remaining: 0,
            reset_after: self.interval(),
            retry_after: self.interval(),
            window: self.window(),
        }
    }

    /// The decision for an admitted call when the store could not be asked.
    pub(crate) fn allowed_blind(&self) -> Decision {
        Decision {
            allowed: true,
            limit: u64::from(self.burst),
            remaining: u64::from(self.burst),
            reset_after: Duration::ZERO,
            retry_after: Duration::ZERO,
            window: self.window(),
        }
    }
}

/// A quota as the GCRA arithmetic uses it, in nanoseconds or in a clock's
/// ticks (see [`Quota::rate_in`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    /// The emission interval.
    interval: u64,
    /// `interval * burst`: how far ahead of now the TAT may run.
    window: u64,
    /// `u64::MAX / interval`, so that the admitted path divides by the
    /// interval with a multiplication: a 64-bit `div` costs more than the
    /// rest of a decision.
    recip: u64,
}

impl Rate {
    /// A placeholder beside [`Quota::UNSET`], never used for arithmetic.
    pub(crate) const UNSET: Rate = Rate {
        interval: 1,
        window: 1,
        recip: u64::MAX,
    };

    /// `t / interval`, exactly, without a division instruction.
    #[inline]
    pub(crate) fn intervals_in(&self, t: u64) -> u64 {
        let d = self.interval;
        // With the reciprocal rounded down the estimate falls short of the
        // quotient by at most two, so `q * d <= t` and the remainder
        // corrects it in a step or two.
        let mut q = ((u128::from(t) * u128::from(self.recip)) >> 64) as u64;
        let mut rest = t - q * d;
        while rest >= d {
            q += 1;
            rest -= d;
        }
        q
    }
}

/// The answer for one call: whether it may go ahead, and what to tell the
/// caller (the `RateLimit-*` and `Retry-After` headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The call may go ahead.
    pub allowed: bool,
    /// Calls a fresh key may make at once (the quota's burst).
    pub limit: u64,
    /// Calls the key may still make right now.
    pub remaining: u64,
    /// Time until the key is back to `limit` remaining.
    pub reset_after: Duration,
    /// For a refused call, time until a call would be admitted; zero when allowed.
    pub retry_after: Duration,
    /// Time in which `limit` calls are restored (the quota's window).
    pub window: Duration,
}

/// One GCRA step at `now` for a key whose stored TAT is `tat` (`None` if the
/// key is unknown or forgotten). Returns the decision and the TAT to store
/// if the call was admitted. All times are nanoseconds on the store's clock.
#[inline]
pub(crate) fn gcra(tat: Option<u64>, now: u64, quota: &Quota) -> (Decision, Option<u64>) {
    let rate = quota.rate();
    let step = gcra_step(tat.unwrap_or(now), now, &rate);
    (decide(step, now, &rate, quota, |ns| ns), step.ok())
}

/// The arithmetic of one GCRA step alone, for stores that retry it in a
/// compare-and-swap loop: `Ok(new_tat)` if the call is admitted, else
/// `Err(tat)` with the TAT as it stands. Times in `rate`'s units.
#[inline]
pub(crate) fn gcra_step(tat: u64, now: u64, rate: &Rate) -> Result<u64, u64> {
    let tat = tat.max(now);
    let new_tat = tat.saturating_add(rate.interval);
    if new_tat - now > rate.window {
        return Err(tat);
    }
    Ok(new_tat)
}

/// The decision, with what the headers need, for the outcome of
/// [`gcra_step`] at `now` under `rate` (`quota` in the clock's units);
/// `ns_from` turns those units into nanoseconds.
#[inline]
pub(crate) fn decide(
    step: Result<u64, u64>,
    now: u64,
    rate: &Rate,
    quota: &Quota,
    ns_from: impl Fn(u64) -> u64,
) -> Decision {
    let window = rate.window;
    let limit = u64::from(quota.burst());
    match step {
        Ok(new_tat) => {
            let used = new_tat - now;
            Decision {
                allowed: true,
                limit,
                remaining: rate.intervals_in(window - used),
                reset_after: Duration::from_nanos(ns_from(used)),
                retry_after: Duration::ZERO,
                window: quota.window(),
            }
        }
        Err(tat) => {
            let used = tat.saturating_add(rate.interval) - now;
            Decision {
                allowed: false,
                limit,
                remaining: 0,
                reset_after: Duration::from_nanos(ns_from(tat - now)),
                retry_after: Duration::from_nanos(ns_from(used - window)),
                window: quota.window(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_in_divides_exactly() {
        let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for interval in [1, 2, 3, 7, 1_000, 999_999_937, u64::MAX / 3, u64::MAX] {
            let rate = Rate {
                interval,
                window: interval,
                recip: u64::MAX / interval,
            };
            for ns in [0, 1, interval - 1, interval, u64::MAX - 1, u64::MAX] {
                assert_eq!(rate.intervals_in(ns), ns / interval, "{ns} / {interval}");
            }
            for _ in 0..10_000 {
                let ns = next() >> (next() % 64);
                assert_eq!(rate.intervals_in(ns), ns / interval, "{ns} / {interval}");
            }
        }
    }

    #[test]
    fn bad_quotas_are_named() {
        assert_eq!(Quota::per_second(0), Err(QuotaError::ZeroCount));
        assert_eq!(Quota::new(1, Duration::ZERO), Err(QuotaError::ZeroPeriod));
        assert_eq!(
            Quota::per_second(1).and_then(|q| q.with_burst(0)),
            Err(QuotaError::ZeroBurst)
        );
        assert!(matches!(
            Quota::new(10, Duration::from_nanos(1)),
            Err(QuotaError::TooFast { count: 10, .. })
        ));
        assert_eq!(
            Quota::new(1, Duration::from_secs(u64::MAX)),
            Err(QuotaError::TooLong)
        );
        assert_eq!(
            Quota::per_hour(1).and_then(|q| q.with_burst(u32::MAX)),
            Err(QuotaError::TooLong)
        );
    }

    #[test]
    fn fresh_key_gets_its_burst_then_one_per_interval() {
        let q = Quota::per_second(10).unwrap().with_burst(3).unwrap();
        let ms = 1_000_000;
        let mut tat = None;
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let (d, next) = gcra(tat, 0, &q);
            assert!(d.allowed);
            remaining.push(d.remaining);
            tat = next;
        }
        assert_eq!(remaining, [2, 1, 0]);
        let (refused, next) = gcra(tat, 0, &q);
        assert!(!refused.allowed);
        assert_eq!(next, None);
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        assert_eq!(refused.reset_after, Duration::from_millis(300));
        // One interval later exactly one more call fits.
        let (d, next) = gcra(tat, 100 * ms, &q);
        assert!(d.allowed && d.remaining == 0);
        assert_eq!(d.reset_after, Duration::from_millis(300));
        let (d, _) = gcra(next, 100 * ms, &q);
        assert!(!d.allowed);
        // After the whole window the key is as good as new.
        let (d, _) = gcra(next, 400 * ms, &q);
        assert_eq!(d.remaining, 2);
        assert_eq!(d.window, Duration::from_millis(300));
    }
}
