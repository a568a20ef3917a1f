//! Rate-limit state in this process: [`MemoryStore`] for many keys and
//! [`DirectStore`] for one limit shared by every call.
//!
//! `MemoryStore` spreads keys over shards, each a mutex-guarded map from key
//! to TAT, so threads deciding for different keys rarely meet. It holds at
//! most `max_keys` keys. Idle keys (TAT in the past) carry no information,
//! so each shard sweeps them away every `sweep_interval` and whenever it is
//! full. If a full shard has no idle key, the key closest to idle (earliest
//! TAT) is forgotten — that key gets a fresh burst if it comes back early,
//! which is counted in [`MemoryStoreSnapshot::evicted_busy`] — rather than
//! refusing newcomers, so a flood of keys can degrade limiting but never
//! lock legitimate clients out or grow memory.
//!
//! A key is hashed once (SipHash with a random key, so clients cannot
//! aim their keys at one bucket); the hash picks the shard and the slot.
//!
//! Time comes from a [`Clock`]: tokio's by default, so a paused test clock
//! drives it, or [`FastClock`](super::FastClock) for the hot path.

use super::quota::{decide, gcra, gcra_step, Rate};
use super::{Clock, Decision, LocalStore, Quota, RateLimitStore, StoreError, TokioClock};
use hashbrown::HashTable;
use parking_lot::Mutex;
use std::future::{ready, Ready};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How a [`MemoryStore`] is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStoreConfig {
    /// Keys held at most (at least 1), split evenly over the shards.
    pub max_keys: usize,
    /// Independent maps; more shards, less contention between threads.
    /// An upper bound: a small store uses fewer, each with room for at
    /// least 64 keys.
    pub shards: usize,
    /// How often each shard forgets its idle keys.
    pub sweep_interval: Duration,
}

impl Default for MemoryStoreConfig {
    fn default() -> Self {
        MemoryStoreConfig {
            max_keys: 100_000,
            shards: 64,
            sweep_interval: Duration::from_secs(60),
        }
    }
}

/// A memory store configuration that cannot work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MemoryStoreError {
    /// `max_keys` was zero.
    #[error("rate-limit memory store max_keys must be at least 1")]
    ZeroKeys,
    /// `shards` was zero.
    #[error("rate-limit memory store shards must be at least 1")]
    ZeroShards,
}

/// A memory store's state now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryStoreSnapshot {
    /// Keys held.
    pub keys: usize,
    /// The bound on `keys`.
    pub max_keys: usize,
    /// Keys forgotten while not idle because their shard was full.
    pub evicted_busy: u64,
}

/// Aligned so two shards' locks never share a cache line.
#[repr(align(128))]
struct Padded<T>(T);

struct Shard<K> {
    /// Each key with its TAT (nanoseconds on the store's clock).
    tats: HashTable<(K, u64)>,
    next_sweep: u64,
}

/// Rate-limit state for many keys in this process; see the module docs.
pub struct MemoryStore<K, C = TokioClock> {
    shards: Box<[Padded<Mutex<Shard<K>>>]>,
    hasher: RandomState,
    per_shard: usize,
    sweep_ns: u64,
    clock: C,
    evicted_busy: AtomicU64,
}

impl<K, C> std::fmt::Debug for MemoryStore<K, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.shards.len())
            .field("per_shard", &self.per_shard)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> MemoryStore<K> {
    /// A store laid out as configured, on tokio's clock.
    pub fn new(config: MemoryStoreConfig) -> Result<Self, MemoryStoreError> {
        Self::with_clock(config, TokioClock::new())
    }

    /// The default layout with room for `max_keys` keys, on tokio's clock.
    pub fn with_max_keys(max_keys: usize) -> Result<Self, MemoryStoreError> {
        Self::new(MemoryStoreConfig {
            max_keys,
            ..MemoryStoreConfig::default()
        })
    }
}

impl<K: Hash + Eq + Clone, C: Clock> MemoryStore<K, C> {
    /// A store laid out as configured, reading `clock`.
    pub fn with_clock(config: MemoryStoreConfig, clock: C) -> Result<Self, MemoryStoreError> {
        if config.max_keys == 0 {
            return Err(MemoryStoreError::ZeroKeys);
        }
        if config.shards == 0 {
            return Err(MemoryStoreError::ZeroShards);
        }
        // At least 64 keys a shard (unless `max_keys` is smaller), so a small
        // bound is not split into shards so small that hash skew fills one
        // early. The total never exceeds `max_keys`.
        let shards = config.shards.min(config.max_keys / 64).max(1);
        let sweep_ns = u64::try_from(config.sweep_interval.as_nanos()).unwrap_or(u64::MAX);
        Ok(MemoryStore {
            shards: (0..shards)
                .map(|_| {
                    Padded(Mutex::new(Shard {
                        tats: HashTable::new(),
                        next_sweep: sweep_ns,
                    }))
                })
                .collect(),
            hasher: RandomState::new(),
            per_shard: config.max_keys / shards,
            sweep_ns,
            clock,
            evicted_busy: AtomicU64::new(0),
        })
    }

    /// The state now.
    pub fn snapshot(&self) -> MemoryStoreSnapshot {
        MemoryStoreSnapshot {
            keys: self.len(),
            max_keys: self.per_shard * self.shards.len(),
            evicted_busy: self.evicted_busy.load(Ordering::Relaxed),
        }
    }

    /// Forgets every idle key now.
    pub fn evict_idle(&self) {
        let now = self.clock.now_ns();
        for shard in self.shards.iter() {
            shard.0.lock().tats.retain(|(_, tat)| *tat > now);
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().tats.len()).sum()
    }

    /// One decision, synchronously.
    pub fn decide_now(&self, key: &K, quota: &Quota) -> Decision {
        let hash = self.hasher.hash_one(key);
        // High bits pick the shard; the table inside uses the low ones.
        let index = (hash >> 40) as usize % self.shards.len();
        let now = self.clock.now_ns();
        let mut shard = self.shards[index].0.lock();
        if let Some((_, tat)) = shard.tats.find_mut(hash, |(k, _)| k == key) {
            let (decision, next) = gcra(Some(*tat), now, quota);
            if let Some(next) = next {
                *tat = next;
            }
            return decision;
        }
        let (decision, next) = gcra(None, now, quota);
        if let Some(next) = next {
            self.make_room(&mut shard, now);
            let hasher = &self.hasher;
            shard
                .tats
                .insert_unique(hash, (key.clone(), next), |(k, _)| hasher.hash_one(k));
        }
        decision
    }

    fn make_room(&self, shard: &mut Shard<K>, now: u64) {
        if now >= shard.next_sweep || shard.tats.len() >= self.per_shard {
            shard.tats.retain(|(_, tat)| *tat > now);
            shard.next_sweep = now.saturating_add(self.sweep_ns);
        }
        if shard.tats.len() < self.per_shard {
            return;
        }
        // Forget the key closest to idle: it loses the least.
        let victim = shard
            .tats
            .iter()
            .min_by_key(|(_, tat)| *tat)
            .map(|(key, tat)| (self.hasher.hash_one(key), *tat));
        if let Some((hash, earliest)) = victim {
            // Any key with this hash and this TAT is an equally good victim.
            if let Ok(entry) = shard.tats.find_entry(hash, |(_, tat)| *tat == earliest) {
                entry.remove();
                self.evicted_busy.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl<K, C> RateLimitStore<K> for MemoryStore<K, C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    C: Clock,
{
    type Decide = Ready<Result<Decision, StoreError>>;

    fn decide(&self, key: &K, quota: &Quota) -> Self::Decide {
        ready(Ok(self.decide_now(key, quota)))
    }

    fn keys_tracked(&self) -> Option<usize> {
        Some(self.len())
    }
}

impl<K, C> LocalStore<K> for MemoryStore<K, C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    C: Clock,
{
    fn decide_now(&self, key: &K, quota: &Quota) -> Decision {
        MemoryStore::decide_now(self, key, quota)
    }
}

/// One limit for every call (no keys): a single TAT updated lock-free.
///
/// The TAT is kept in the clock's ticks (see [`Clock::now_ticks`]), so a
/// decision takes the clock reading as it comes; the quota is converted to
/// ticks instead — once for the limiter's own quota, on every call for an
/// override.
#[derive(Debug)]
pub struct DirectStore<C = TokioClock> {
    tat: PaddedTat,
    clock: C,
    /// The owning limiter's quota ([`Quota::UNSET`] until it is told) and
    /// its rate in ticks.
    own: (Quota, Rate),
}

/// The TAT on a cache line of its own: every admitted call writes it, and
/// threads reading the clock and quota beside it should not lose their
/// line each time.
#[derive(Debug)]
#[repr(align(128))]
struct PaddedTat(AtomicU64);

impl DirectStore {
    /// A fresh limit, its whole burst available, on tokio's clock.
    pub fn new() -> Self {
        Self::with_clock(TokioClock::new())
    }
}

impl<C: Clock> DirectStore<C> {
    /// A fresh limit, its whole burst available, reading `clock`.
    pub fn with_clock(clock: C) -> Self {
        DirectStore {
            tat: PaddedTat(AtomicU64::new(0)),
            clock,
            own: (Quota::UNSET, Rate::UNSET),
        }
    }

    /// One decision, synchronously.
    // Always inlined: a caller that reads only `allowed` and `remaining`
    // then pays nothing for the rest of the decision, and LLVM otherwise
    // judges the whole of it too big.
    #[inline(always)]
    pub fn decide_now(&self, quota: &Quota) -> Decision {
        let now = self.clock.now_ticks();
        // Borrowed, not copied: the fast path then reads the rate straight
        // from the store rather than through a copy on the stack.
        let converted;
        let rate = if self.own.0.same_as(quota) {
            &self.own.1
        } else {
            converted = self.rate_of(quota);
            &converted
        };
        let tat = &self.tat.0;
        let mut current = tat.load(Ordering::Acquire);
        // Only the arithmetic is retried; the decision is built once.
        let step = loop {
            let step = gcra_step(current, now, rate);
            let Ok(next) = step else { break step };
            match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break step,
                Err(actual) => current = actual,
            }
        };
        decide(step, now, rate, quota, |ticks| {
            self.clock.ns_from_ticks(ticks)
        })
    }

    #[cold]
    #[inline(never)]
    fn rate_of(&self, quota: &Quota) -> Rate {
        quota.rate_in(|ns| self.clock.ticks_from_ns(ns))
    }
}

impl Default for DirectStore {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock> RateLimitStore<()> for DirectStore<C> {
    type Decide = Ready<Result<Decision, StoreError>>;

    fn prepare(&mut self, quota: &Quota) {
        self.own = (*quota, self.rate_of(quota));
    }

    fn decide(&self, _key: &(), quota: &Quota) -> Self::Decide {
        ready(Ok(self.decide_now(quota)))
    }

    fn keys_tracked(&self) -> Option<usize> {
        Some(1)
    }
}

impl<C: Clock> LocalStore<()> for DirectStore<C> {
    #[inline]
    fn decide_now(&self, _key: &(), quota: &Quota) -> Decision {
        DirectStore::decide_now(self, quota)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::{FastClock, RateLimiter};
    use std::sync::Arc;

    /// A clock driven by hand that counts 5 ticks every 2 ns, so that
    /// nothing passes for being in nanoseconds by accident.
    #[derive(Clone, Default)]
    struct HandClock(Arc<AtomicU64>);

    impl HandClock {
        fn advance(&self, by: Duration) {
            let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            self.0.fetch_add(ns, Ordering::Relaxed);
        }
    }

    impl Clock for HandClock {
        fn now_ns(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
        fn now_ticks(&self) -> u64 {
            self.now_ns() * 5 / 2
        }
        fn ticks_from_ns(&self, ns: u64) -> u64 {
            // The nearest tick, halves up.
            (ns * 5).div_ceil(2)
        }
        fn ns_from_ticks(&self, ticks: u64) -> u64 {
            (ticks * 2).div_ceil(5)
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn direct_store_in_ticks_admits_the_burst_then_the_rate() {
        let clock = HandClock::default();
        clock.advance(ms(1000));
        let quota = Quota::per_second(4).unwrap().with_burst(2).unwrap();
        let limiter = RateLimiter::new(quota, DirectStore::with_clock(clock.clone()));
        let first = limiter.check_now(&());
        assert!(first.allowed);
        assert_eq!(first.remaining, 1);
        assert_eq!(first.reset_after, ms(250));
        assert_eq!(first.window, ms(500));
        let second = limiter.check_now(&());
        assert!(second.allowed && second.remaining == 0);
        assert_eq!(second.reset_after, ms(500));
        let refused = limiter.check_now(&());
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, ms(250));
        assert_eq!(refused.reset_after, ms(500));
        clock.advance(ms(249));
        assert!(!limiter.check_now(&()).allowed);
        clock.advance(ms(1));
        assert!(limiter.check_now(&()).allowed);
        assert!(!limiter.check_now(&()).allowed);
        clock.advance(ms(500));
        assert_eq!(limiter.check_now(&()).remaining, 1);
    }

    #[test]
    fn an_override_quota_is_converted_on_the_spot() {
        let clock = HandClock::default();
        let own = Quota::per_second(4).unwrap();
        let store = DirectStore::with_clock(clock.clone());
        let limiter = RateLimiter::new(own, store);
        let other = Quota::per_second(1).unwrap().with_burst(1).unwrap();
        assert!(limiter.store().decide_now(&other).allowed);
        let refused = limiter.store().decide_now(&other);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, ms(1000));
        // Both quotas share the one TAT: the override's call took a second.
        assert!(!limiter.check_now(&()).allowed);
    }

    #[test]
    fn fast_clock_ticks_convert_both_ways() {
        let clock = FastClock::new();
        for ns in [1, 7, 1_000, 999_999_937, 3_600_000_000_000] {
            let ticks = clock.ticks_from_ns(ns);
            assert!(ticks >= 1, "{ns} ns");
            // A tick is at most a nanosecond, so rounding to ticks and
            // back moves a figure by at most one nanosecond (plus the
            // scale's own error of a few parts in a billion).
            let back = clock.ns_from_ticks(ticks);
            let slack = 1 + ns / 100_000_000;
            assert!(back.abs_diff(ns) <= slack, "{ns} ns -> {ticks} -> {back}");
        }
        // Ticks run at the rate the nanoseconds do. Each (ticks, ns) pair is
        // read again while something (a preemption) came between its reads,
        // so a busy machine skews it by at most 20 µs.
        let pair = || loop {
            let before = clock.now_ticks();
            let ns = clock.now_ns();
            if clock.ns_from_ticks(clock.now_ticks() - before) < 20_000 {
                return (before, ns);
            }
        };
        let (t0, n0) = pair();
        std::thread::sleep(Duration::from_millis(20));
        let (t1, n1) = pair();
        let by_ticks = clock.ns_from_ticks(t1 - t0);
        assert!(
            by_ticks.abs_diff(n1 - n0) < 200_000,
            "{by_ticks} vs {}",
            n1 - n0
        );
    }
}
