//! How a breaker is tuned, and the checks that turn a user's numbers into
//! settings the hot path can use without further validation.

use std::time::Duration;

/// The window of recent calls a closed breaker judges the upstream by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingWindow {
    /// The last `n` calls, however old.
    Count(u32),
    /// The calls of the last `size`, kept in `buckets` equal slices: a call
    /// leaves the window between `size - size/buckets` and `size` after it
    /// was recorded, as a whole bucket ages out at once.
    Time {
        /// How far back the window reaches.
        size: Duration,
        /// How many slices the window is kept in (more is finer, costs memory).
        buckets: u32,
    },
}

impl SlidingWindow {
    /// A time window of `size` in ten buckets.
    pub fn time(size: Duration) -> Self {
        SlidingWindow::Time { size, buckets: 10 }
    }
}

/// Open duration growing on repeated trips: the `n`-th consecutive trip
/// (without a successful close in between) stays open for
/// `open_duration * multiplier^(n-1)`, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenBackoff {
    /// Growth per consecutive trip; at least 1.
    pub multiplier: f64,
    /// The longest the breaker stays open.
    pub max: Duration,
}

/// A circuit breaker's configuration; `Default` follows resilience4j's
/// defaults (count window of 100, 50 % failure rate, 100 minimum calls,
/// 60 s open, 10 half-open probes), without slow-call detection.
///
/// ```
/// use std::time::Duration;
/// use trellis_resilience::breaker::{CircuitBreakerConfig, SlidingWindow};
///
/// let config = CircuitBreakerConfig::default()
///     .name("payments")
///     .sliding_window(SlidingWindow::time(Duration::from_secs(30)))
///     .failure_rate_threshold(25.0)
///     .minimum_calls(20)
///     .slow_calls(Duration::from_millis(500), 80.0)
///     .open_duration(Duration::from_secs(5))
///     .open_backoff(2.0, Duration::from_secs(120))
///     .permitted_calls_in_half_open(3);
/// assert!(trellis_resilience::breaker::CircuitBreaker::new(config).is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitBreakerConfig {
    /// Shown in snapshots and log lines (an upstream's name, say).
    pub name: String,
    /// Which recent calls the failure and slow-call rates are computed over.
    pub sliding_window: SlidingWindow,
    /// Percentage of failed calls in the window, in `(0, 100]`, at or above
    /// which the breaker opens.
    pub failure_rate_threshold: f32,
    /// A call taking longer than this is slow; `None` disables slow-call
    /// detection (and with it the clock reads it costs).
    pub slow_call_duration: Option<Duration>,
    /// Percentage of slow calls, in `(0, 100]`, at or above which the breaker
    /// opens.
    pub slow_call_rate_threshold: f32,
    /// Calls the window must hold before the breaker may open (capped at a
    /// count window's size).
    pub minimum_calls: u32,
    /// How long the breaker stays open before admitting probes.
    pub open_duration: Duration,
    /// Growth of the open duration on repeated trips; `None` keeps it fixed.
    pub open_backoff: Option<OpenBackoff>,
    /// How many probe calls half-open admits; their outcomes decide whether
    /// the breaker closes or opens again.
    pub permitted_calls_in_half_open: u32,
    /// The longest half-open may wait for its probes' verdict: past it, a
    /// call finding no probe slot free re-opens the breaker (resilience4j's
    /// `maxWaitDurationInHalfOpenState`), so probes that hang cannot keep
    /// the breaker half-open for ever. `None` (the default) waits for them.
    pub max_wait_in_half_open: Option<Duration>,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            name: "default".to_owned(),
            sliding_window: SlidingWindow::Count(100),
            failure_rate_threshold: 50.0,
            slow_call_duration: None,
            slow_call_rate_threshold: 100.0,
            minimum_calls: 100,
            open_duration: Duration::from_secs(60),
            open_backoff: None,
            permitted_calls_in_half_open: 10,
            max_wait_in_half_open: None,
        }
    }
}

impl CircuitBreakerConfig {
    /// Sets [`name`](Self::name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets [`sliding_window`](Self::sliding_window).
    pub fn sliding_window(mut self, window: SlidingWindow) -> Self {
        self.sliding_window = window;
        self
    }

    /// Sets [`failure_rate_threshold`](Self::failure_rate_threshold), a percentage.
    pub fn failure_rate_threshold(mut self, percent: f32) -> Self {
        self.failure_rate_threshold = percent;
        self
    }

    /// Counts calls slower than `duration` as slow, and opens when `percent`
    /// of the window is slow.
    pub fn slow_calls(mut self, duration: Duration, percent: f32) -> Self {
        self.slow_call_duration = Some(duration);
        self.slow_call_rate_threshold = percent;
        self
    }

    /// Sets [`minimum_calls`](Self::minimum_calls).
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.minimum_calls = calls;
        self
    }

    /// Sets [`open_duration`](Self::open_duration).
    pub fn open_duration(mut self, duration: Duration) -> Self {
        self.open_duration = duration;
        self
    }

    /// Multiplies the open duration by `multiplier` on each consecutive
    /// trip, up to `max`.
    pub fn open_backoff(mut self, multiplier: f64, max: Duration) -> Self {
        self.open_backoff = Some(OpenBackoff { multiplier, max });
        self
    }

    /// Sets [`permitted_calls_in_half_open`](Self::permitted_calls_in_half_open).
    pub fn permitted_calls_in_half_open(mut self, calls: u32) -> Self {
        self.permitted_calls_in_half_open = calls;
        self
    }

    /// Sets [`max_wait_in_half_open`](Self::max_wait_in_half_open).
    pub fn max_wait_in_half_open(mut self, wait: Duration) -> Self {
        self.max_wait_in_half_open = Some(wait);
        self
    }

    pub(crate) fn validate(&self) -> Result<Settings, InvalidConfig> {
        let window = match self.sliding_window {
            SlidingWindow::Count(0) => return Err(InvalidConfig::EmptyWindow),
            SlidingWindow::Count(n) => WindowSettings::Count(n),
            SlidingWindow::Time { buckets: 0, .. } => return Err(InvalidConfig::NoBuckets),
            SlidingWindow::Time { size, buckets } => {
                let width = size.as_nanos() / u128::from(buckets);
                if width == 0 {
                    return Err(InvalidConfig::EmptyWindow);
                }
                WindowSettings::Time {
                    bucket_nanos: u64::try_from(width).map_err(|_| InvalidConfig::WindowTooLong)?,
                    buckets,
                }
            }
        };
        let failure_bp = basis_points(self.failure_rate_threshold).ok_or(
            InvalidConfig::FailureRateThreshold(self.failure_rate_threshold),
        )?;
        let slow = match self.slow_call_duration {
            None => None,
            Some(duration) => {
                let bp = basis_points(self.slow_call_rate_threshold).ok_or(
                    InvalidConfig::SlowCallRateThreshold(self.slow_call_rate_threshold),
                )?;
                Some((duration, bp))
            }
        };
        if self.permitted_calls_in_half_open == 0 {
            return Err(InvalidConfig::NoHalfOpenCalls);
        }
        if let Some(b) = self.open_backoff {
            if !b.multiplier.is_finite() || b.multiplier < 1.0 {
                return Err(InvalidConfig::BackoffMultiplier(b.multiplier));
            }
            if b.max < self.open_duration {
                return Err(InvalidConfig::BackoffMax {
                    max: b.max,
                    open_duration: self.open_duration,
                });
            }
        }
        let minimum_calls = match window {
            WindowSettings::Count(n) => self.minimum_calls.min(n),
            WindowSettings::Time { .. } => self.minimum_calls,
        }
        // A rate over zero calls means nothing; one call is the least.
        .max(1);
        Ok(Settings {
            window,
            minimum_calls,
            failure_bp,
            slow,
            open_duration: self.open_duration,
            backoff: self.open_backoff,
            half_open_calls: self.permitted_calls_in_half_open,
            half_open_max_wait: self
                .max_wait_in_half_open
                .map(|wait| u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX)),
        })
    }
}

/// Thresholds in hundredths of a percent, so the hot path compares integers.
fn basis_points(percent: f32) -> Option<u64> {
    if percent.is_finite() && percent > 0.0 && percent <= 100.0 {
        Some(((f64::from(percent) * 100.0).round() as u64).max(1))
    } else {
        None
    }
}

/// A configuration a breaker cannot run with.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidConfig {
    /// A sliding window that can hold no calls.
    #[error("circuit breaker sliding window must hold at least one call (size is zero)")]
    EmptyWindow,
    /// A time window split into zero buckets.
    #[error("circuit breaker time window needs at least one bucket")]
    NoBuckets,
    /// A time window longer than the breaker can count (~584 years).
    #[error("circuit breaker time window is too long")]
    WindowTooLong,
    /// A failure-rate threshold outside `(0, 100]`.
    #[error("circuit breaker failure_rate_threshold must be in (0, 100], got {0}")]
    FailureRateThreshold(f32),
    /// A slow-call-rate threshold outside `(0, 100]`.
    #[error("circuit breaker slow_call_rate_threshold must be in (0, 100], got {0}")]
    SlowCallRateThreshold(f32),
    /// Half-open that admits no probe could never close.
    #[error("circuit breaker permitted_calls_in_half_open must be at least 1")]
    NoHalfOpenCalls,
    /// A backoff multiplier below 1 or not a number.
    #[error("circuit breaker open_backoff multiplier must be a finite number >= 1, got {0}")]
    BackoffMultiplier(f64),
    /// A backoff cap below the first open duration.
    #[error(
        "circuit breaker open_backoff max ({max:?}) is below open_duration ({open_duration:?})"
    )]
    BackoffMax {
        /// The configured cap.
        max: Duration,
        /// The configured first open duration.
        open_duration: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WindowSettings {
    Count(u32),
    Time { bucket_nanos: u64, buckets: u32 },
}

/// A validated configuration, in the units the state machine uses.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub window: WindowSettings,
    pub minimum_calls: u32,
    pub failure_bp: u64,
    pub slow: Option<(Duration, u64)>,
    pub open_duration: Duration,
    pub backoff: Option<OpenBackoff>,
    pub half_open_calls: u32,
    /// `max_wait_in_half_open` in nanoseconds.
    pub half_open_max_wait: Option<u64>,
}

impl Settings {
    /// How long the `trips`-th consecutive trip stays open.
    pub fn open_duration(&self, trips: u32) -> Duration {
        let Some(backoff) = self.backoff else {
            return self.open_duration;
        };
        let exponent = i32::try_from(trips.saturating_sub(1)).unwrap_or(i32::MAX);
        // In nanoseconds, so whole multiples of whole durations stay exact.
        let nanos = self.open_duration.as_nanos() as f64 * backoff.multiplier.powi(exponent);
        if nanos.is_finite() && nanos < backoff.max.as_nanos() as f64 {
            Duration::from_nanos(nanos.round() as u64)
        } else {
            backoff.max
        }
    }

    /// Whether `bad` of `calls` reaches a threshold given in basis points.
    pub fn reaches(bad: u32, calls: u32, bp: u64) -> bool {
        u64::from(bad) * 10_000 >= u64::from(calls) * bp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_nonsense_with_a_named_error() {
        let base = CircuitBreakerConfig::default();
        let cases = [
            (
                base.clone().sliding_window(SlidingWindow::Count(0)),
                InvalidConfig::EmptyWindow,
            ),
            (
                base.clone().sliding_window(SlidingWindow::Time {
                    size: Duration::from_secs(1),
                    buckets: 0,
                }),
                InvalidConfig::NoBuckets,
            ),
            (
                base.clone().failure_rate_threshold(0.0),
                InvalidConfig::FailureRateThreshold(0.0),
            ),
            (
                base.clone().failure_rate_threshold(101.0),
                InvalidConfig::FailureRateThreshold(101.0),
            ),
            (
                base.clone().slow_calls(Duration::from_secs(1), f32::NAN),
                InvalidConfig::SlowCallRateThreshold(f32::NAN),
            ),
            (
                base.clone().permitted_calls_in_half_open(0),
                InvalidConfig::NoHalfOpenCalls,
            ),
            (
                base.clone().open_backoff(0.5, Duration::from_secs(600)),
                InvalidConfig::BackoffMultiplier(0.5),
            ),
            (
                base.clone().open_backoff(2.0, Duration::from_secs(1)),
                InvalidConfig::BackoffMax {
                    max: Duration::from_secs(1),
                    open_duration: Duration::from_secs(60),
                },
            ),
        ];
        for (config, expected) in cases {
            let err = config.validate().expect_err("invalid config accepted");
            // NaN != NaN, so compare the message, which names the key.
            assert_eq!(err.to_string(), expected.to_string());
        }
    }

    #[test]
    fn minimum_calls_is_capped_by_a_count_window() {
        let s = CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::Count(10))
            .minimum_calls(50)
            .validate()
            .unwrap();
        assert_eq!(s.minimum_calls, 10);
        let s = CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::time(Duration::from_secs(10)))
            .minimum_calls(50)
            .validate()
            .unwrap();
        assert_eq!(s.minimum_calls, 50);
    }

    #[test]
    fn open_duration_grows_to_its_cap() {
        let s = CircuitBreakerConfig::default()
            .open_duration(Duration::from_secs(1))
            .open_backoff(2.0, Duration::from_secs(10))
            .validate()
            .unwrap();
        let got: Vec<u64> = (1..=6).map(|n| s.open_duration(n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 10, 10]);
        assert_eq!(s.open_duration(u32::MAX), Duration::from_secs(10));
    }
}
