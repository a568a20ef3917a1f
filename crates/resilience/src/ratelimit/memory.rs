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
//! Time is `tokio::time::Instant`, so a paused test clock drives it.

use super::quota::gcra;
use super::{Decision, Quota, RateLimitStore, StoreError};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::{ready, Ready};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// How a [`MemoryStore`] is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStoreConfig {
    /// Keys held at most (at least 1), split evenly over the shards.
    pub max_keys: usize,
    /// Independent maps; more shards, less contention between threads.
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
    tats: HashMap<K, u64>,
    next_sweep: u64,
}

/// Rate-limit state for many keys in this process; see the module docs.
pub struct MemoryStore<K> {
    shards: Box<[Padded<Mutex<Shard<K>>>]>,
    hasher: RandomState,
    per_shard: usize,
    sweep_ns: u64,
    origin: Instant,
    evicted_busy: AtomicU64,
}

impl<K> std::fmt::Debug for MemoryStore<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.shards.len())
            .field("per_shard", &self.per_shard)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> MemoryStore<K> {
    /// A store laid out as configured.
    pub fn new(config: MemoryStoreConfig) -> Result<Self, MemoryStoreError> {
        if config.max_keys == 0 {
            return Err(MemoryStoreError::ZeroKeys);
        }
        if config.shards == 0 {
            return Err(MemoryStoreError::ZeroShards);
        }
        // Never more shards than keys, so the per-shard bound is at least 1
        // and the total never exceeds `max_keys`.
        let shards = config.shards.min(config.max_keys);
        let sweep_ns = u64::try_from(config.sweep_interval.as_nanos()).unwrap_or(u64::MAX);
        Ok(MemoryStore {
            shards: (0..shards)
                .map(|_| {
                    Padded(Mutex::new(Shard {
                        tats: HashMap::new(),
                        next_sweep: sweep_ns,
                    }))
                })
                .collect(),
            hasher: RandomState::new(),
            per_shard: config.max_keys / shards,
            sweep_ns,
            origin: Instant::now(),
            evicted_busy: AtomicU64::new(0),
        })
    }

    /// The default layout with room for `max_keys` keys.
    pub fn with_max_keys(max_keys: usize) -> Result<Self, MemoryStoreError> {
        Self::new(MemoryStoreConfig {
            max_keys,
            ..MemoryStoreConfig::default()
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
        let now = self.now();
        for shard in self.shards.iter() {
            shard.0.lock().tats.retain(|_, tat| *tat > now);
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().tats.len()).sum()
    }

    fn now(&self) -> u64 {
        // Nanoseconds since the store was made: 584 years of headroom.
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// One decision, synchronously.
    pub fn decide_now(&self, key: &K, quota: &Quota) -> Decision {
        let now = self.now();
        let index = (self.hasher.hash_one(key) >> 7) as usize % self.shards.len();
        let mut shard = self.shards[index].0.lock();
        if let Some(tat) = shard.tats.get_mut(key) {
            let (decision, next) = gcra(Some(*tat), now, quota);
            if let Some(next) = next {
                *tat = next;
            }
            return decision;
        }
        let (decision, next) = gcra(None, now, quota);
        if let Some(next) = next {
            self.make_room(&mut shard, now);
            shard.tats.insert(key.clone(), next);
        }
        decision
    }

    fn make_room(&self, shard: &mut Shard<K>, now: u64) {
        if now >= shard.next_sweep || shard.tats.len() >= self.per_shard {
            shard.tats.retain(|_, tat| *tat > now);
            shard.next_sweep = now.saturating_add(self.sweep_ns);
        }
        if shard.tats.len() < self.per_shard {
            return;
        }
        let closest_to_idle = shard
            .tats
            .iter()
            .min_by_key(|(_, tat)| **tat)
            .map(|(key, _)| key.clone());
        if let Some(key) = closest_to_idle {
            shard.tats.remove(&key);
            self.evicted_busy.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<K> RateLimitStore<K> for MemoryStore<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Decide = Ready<Result<Decision, StoreError>>;

    fn decide(&self, key: &K, quota: &Quota) -> Self::Decide {
        ready(Ok(self.decide_now(key, quota)))
    }

    fn keys_tracked(&self) -> Option<usize> {
        Some(self.len())
    }
}

/// One limit for every call (no keys): a single TAT updated lock-free.
#[derive(Debug)]
pub struct DirectStore {
    tat: AtomicU64,
    origin: Instant,
}

impl DirectStore {
    /// A fresh limit, its whole burst available.
    pub fn new() -> Self {
        DirectStore {
            tat: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    /// One decision, synchronously.
    pub fn decide_now(&self, quota: &Quota) -> Decision {
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let (decision, next) = gcra(Some(tat), now, quota);
            let Some(next) = next else {
                return decision;
            };
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return decision,
                Err(current) => tat = current,
            }
        }
    }
}

impl Default for DirectStore {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimitStore<()> for DirectStore {
    type Decide = Ready<Result<Decision, StoreError>>;

    fn decide(&self, _key: &(), quota: &Quota) -> Self::Decide {
        ready(Ok(self.decide_now(quota)))
    }

    fn keys_tracked(&self) -> Option<usize> {
        Some(1)
    }
}
