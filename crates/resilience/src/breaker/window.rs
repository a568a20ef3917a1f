//! The sliding windows a closed breaker keeps its recent calls in.
//!
//! Both windows keep running totals, so judging the window after a call is
//! a few integer comparisons, never a walk over its contents.

use super::config::WindowSettings;

/// Counts of calls in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub calls: u32,
    pub failures: u32,
    pub slow: u32,
}

impl Totals {
    fn add(&mut self, failure: bool, slow: bool) {
        self.calls += 1;
        self.failures += u32::from(failure);
        self.slow += u32::from(slow);
    }

    fn remove(&mut self, other: Totals) {
        self.calls -= other.calls;
        self.failures -= other.failures;
        self.slow -= other.slow;
    }
}

const PRESENT: u8 = 1;
const FAILED: u8 = 2;
const SLOW: u8 = 4;

#[derive(Debug)]
pub(crate) enum Window {
    /// The last `ring.len()` calls, one byte each.
    Count {
        ring: Box<[u8]>,
        next: usize,
        totals: Totals,
    },
    /// Buckets of `bucket_nanos`; `newest` is the index (time since the
    /// breaker's epoch divided by the width) of the bucket now filling, and
    /// bucket `i` lives in slot `i % buckets.len()`.
    Time {
        buckets: Box<[Totals]>,
        bucket_nanos: u64,
        newest: u64,
        totals: Totals,
    },
}

impl Window {
    pub fn new(settings: WindowSettings) -> Self {
        match settings {
            WindowSettings::Count(n) => Window::Count {
                ring: vec![0; n as usize].into_boxed_slice(),
                next: 0,
                totals: Totals::default(),
            },
            WindowSettings::Time {
                bucket_nanos,
                buckets,
            } => Window::Time {
                buckets: vec![Totals::default(); buckets as usize].into_boxed_slice(),
                bucket_nanos,
                newest: 0,
                totals: Totals::default(),
            },
        }
    }

    /// Adds one call; `now_nanos` is the time since the breaker's epoch and
    /// only matters to a time window.
    #[inline]
    pub fn record(&mut self, now_nanos: u64, failure: bool, slow: bool) {
        match self {
            Window::Count { ring, next, totals } => {
                let old = ring[*next];
                if old & PRESENT != 0 {
                    totals.remove(Totals {
                        calls: 1,
                        failures: u32::from(old & FAILED != 0),
                        slow: u32::from(old & SLOW != 0),
                    });
                }
                ring[*next] =
                    PRESENT | if failure { FAILED } else { 0 } | if slow { SLOW } else { 0 };
                *next = if *next + 1 == ring.len() {
                    0
                } else {
                    *next + 1
                };
                totals.add(failure, slow);
            }
            Window::Time { .. } => {
                self.advance(now_nanos);
                if let Window::Time {
                    buckets,
                    newest,
                    totals,
                    ..
                } = self
                {
                    let slot = (*newest % buckets.len() as u64) as usize;
                    buckets[slot].add(failure, slow);
                    totals.add(failure, slow);
                }
            }
        }
    }

    /// Ages out the buckets that have left a time window by `now_nanos`.
    pub fn advance(&mut self, now_nanos: u64) {
        if let Window::Time {
            buckets,
            bucket_nanos,
            newest,
            totals,
        } = self
        {
            let index = now_nanos / *bucket_nanos;
            if index <= *newest {
                return;
            }
            let len = buckets.len() as u64;
            // Past a full turn every bucket is stale; clear each once.
            let steps = (index - *newest).min(len);
            for step in 1..=steps {
                let slot = ((*newest + step) % len) as usize;
                totals.remove(buckets[slot]);
                buckets[slot] = Totals::default();
            }
            *newest = index;
        }
    }

    pub fn totals(&self) -> Totals {
        match self {
            Window::Count { totals, .. } | Window::Time { totals, .. } => *totals,
        }
    }

    /// Forgets every call, as a breaker does on each transition.
    pub fn clear(&mut self) {
        match self {
            Window::Count { ring, next, totals } => {
                ring.fill(0);
                *next = 0;
                *totals = Totals::default();
            }
            Window::Time {
                buckets, totals, ..
            } => {
                buckets.fill(Totals::default());
                *totals = Totals::default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_keeps_the_last_n_calls() {
        let mut w = Window::new(WindowSettings::Count(3));
        w.record(0, true, false);
        w.record(0, true, true);
        assert_eq!(
            w.totals(),
            Totals {
                calls: 2,
                failures: 2,
                slow: 1
            }
        );
        w.record(0, false, false);
        w.record(0, false, false);
        // The first failure has been pushed out.
        assert_eq!(
            w.totals(),
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        w.record(0, false, false);
        assert_eq!(
            w.totals(),
            Totals {
                calls: 3,
                failures: 0,
                slow: 0
            }
        );
        w.clear();
        assert_eq!(w.totals(), Totals::default());
    }

    #[test]
    fn time_window_ages_out_whole_buckets() {
        // 4 buckets of 10 ns: a 40 ns window.
        let mut w = Window::new(WindowSettings::Time {
            bucket_nanos: 10,
            buckets: 4,
        });
        w.record(5, true, false); // bucket 0
        w.record(15, false, true); // bucket 1
        w.record(39, false, false); // bucket 3
        assert_eq!(
            w.totals(),
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        w.advance(40); // bucket 4 replaces bucket 0
        assert_eq!(
            w.totals(),
            Totals {
                calls: 2,
                failures: 0,
                slow: 1
            }
        );
        w.record(55, true, false); // bucket 5 replaces bucket 1
        assert_eq!(
            w.totals(),
            Totals {
                calls: 2,
                failures: 1,
                slow: 0
            }
        );
        // A long silence empties the window however many turns it spans.
        w.advance(10_000);
        assert_eq!(w.totals(), Totals::default());
        w.record(10_001, true, true);
        assert_eq!(
            w.totals(),
            Totals {
                calls: 1,
                failures: 1,
                slow: 1
            }
        );
    }

    #[test]
    fn time_window_ignores_a_clock_that_appears_to_go_back() {
        let mut w = Window::new(WindowSettings::Time {
            bucket_nanos: 10,
            buckets: 2,
        });
        w.record(25, false, false);
        w.record(3, true, false); // counted in the newest bucket
        assert_eq!(
            w.totals(),
            Totals {
                calls: 2,
                failures: 1,
                slow: 0
            }
        );
    }
}
