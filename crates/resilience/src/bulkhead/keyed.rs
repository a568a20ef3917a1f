//! One bulkhead per key (tenant, route, upstream), with bounded memory.
//!
//! Keys live in shards of mutex-guarded maps, at most `max_keys` in all
//! (split evenly over up to 16 shards of at least 64 keys each). A
//! key's bulkhead is *idle* when no call holds or waits for one of its
//! permits; forgetting an idle bulkhead loses nothing, since a new one for
//! the same key starts in the same state. When a shard is full, a new key
//! first sweeps the shard's idle keys away; if every remembered key is busy
//! the new key is **refused** ([`BulkheadFull`], event
//! [`BulkheadEvent::KeysExhausted`]) rather than evicting a busy one, which
//! would let that key's calls exceed their bound.
//!
//! Permits are taken and queue slots reserved under the shard lock, so a
//! sweep can never forget a bulkhead a caller is about to use.

use super::{Bulkhead, BulkheadConfig, BulkheadConfigError, BulkheadEvent, BulkheadFull};
use super::{BulkheadPermit, BulkheadSnapshot, QueueSlot, Reserved};
use crate::observe::EventStream;
use crate::BoxError;
use parking_lot::Mutex;
use pin_project_lite::pin_project;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash, RandomState};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tower::{Layer, Service};

const SHARDS: usize = 16;

/// How big each key's bulkhead is, and how many keys are remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyedBulkheadConfig {
    /// The bulkhead every key gets.
    pub per_key: BulkheadConfig,
    /// Keys remembered at once (at least 1); see the module docs for what
    /// happens to a new key beyond it.
    pub max_keys: usize,
}

/// A key's rejection, as published by a [`KeyedBulkhead`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedBulkheadEvent<K> {
    /// Whose bulkhead refused the call.
    pub key: K,
    /// What happened.
    pub event: BulkheadEvent,
}

/// A keyed bulkhead's state now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyedBulkheadSnapshot {
    /// Keys remembered (busy or idle-but-not-yet-swept).
    pub keys: usize,
    /// The bound on `keys`.
    pub max_keys: usize,
    /// Permits held over all keys.
    pub in_use: usize,
    /// Calls waiting over all keys.
    pub queued: usize,
    /// New keys refused because every remembered key was busy.
    pub keys_exhausted: u64,
}

/// Per-key bulkheads, shared by every clone.
pub struct KeyedBulkhead<K> {
    shared: Arc<KeyedShared<K>>,
}

struct KeyedShared<K> {
    shards: Box<[Mutex<HashMap<K, Bulkhead>>]>,
    hasher: RandomState,
    per_shard: usize,
    config: KeyedBulkheadConfig,
    keys_exhausted: AtomicU64,
    events: EventStream<KeyedBulkheadEvent<K>>,
}

impl<K> Clone for KeyedBulkhead<K> {
    fn clone(&self) -> Self {
        KeyedBulkhead {
            shared: self.shared.clone(),
        }
    }
}

impl<K> fmt::Debug for KeyedBulkhead<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBulkhead")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// How a call starts: with a permit, in the queue, or refused.
pub(crate) enum Admission {
    Permit(BulkheadPermit),
    Queued(QueueSlot),
    Refused(BulkheadEvent),
}

impl<K> KeyedBulkhead<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// Per-key bulkheads as configured.
    pub fn new(config: KeyedBulkheadConfig) -> Result<Self, BulkheadConfigError> {
        config.per_key.validate()?;
        if config.max_keys == 0 {
            return Err(BulkheadConfigError::ZeroKeys);
        }
        // At least 64 keys a shard, so a small bound is not split into
        // shards so small that hash skew fills one early.
        let shards = (config.max_keys / 64).clamp(1, SHARDS);
        let per_shard = config.max_keys / shards;
        Ok(KeyedBulkhead {
            shared: Arc::new(KeyedShared {
                shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
                hasher: RandomState::new(),
                per_shard,
                config,
                keys_exhausted: AtomicU64::new(0),
                events: EventStream::default(),
            }),
        })
    }

    /// Takes a permit from `key`'s bulkhead, waiting in its queue if
    /// needed; see [`Bulkhead::acquire`].
    pub async fn acquire(&self, key: &K) -> Result<BulkheadPermit, BulkheadFull> {
        match self.admit(key) {
            Admission::Permit(permit) => Ok(permit),
            Admission::Queued(slot) => self.wait(key, slot).await,
            Admission::Refused(event) => Err(self.report(key, event)),
        }
    }

    /// Rejections per key, as they happen.
    pub fn events(&self) -> &EventStream<KeyedBulkheadEvent<K>> {
        &self.shared.events
    }

    /// The state of one key's bulkhead, if it is remembered.
    pub fn snapshot_of(&self, key: &K) -> Option<BulkheadSnapshot> {
        self.shard(key).lock().get(key).map(Bulkhead::snapshot)
    }

    /// Totals over every remembered key.
    pub fn snapshot(&self) -> KeyedBulkheadSnapshot {
        let mut snap = KeyedBulkheadSnapshot {
            max_keys: self.shared.config.max_keys,
            keys_exhausted: self.shared.keys_exhausted.load(Ordering::Relaxed),
            ..Default::default()
        };
        for shard in self.shared.shards.iter() {
            let map = shard.lock();
            snap.keys += map.len();
            for bulkhead in map.values() {
                let s = bulkhead.snapshot();
                snap.in_use += s.in_use;
                snap.queued += s.queued;
            }
        }
        snap
    }

    /// Forgets every idle key now (new keys also do this when a shard is full).
    pub fn evict_idle(&self) {
        for shard in self.shared.shards.iter() {
            shard.lock().retain(|_, bulkhead| !bulkhead.is_idle());
        }
    }

    fn shard(&self, key: &K) -> &Mutex<HashMap<K, Bulkhead>> {
        let shards = &self.shared.shards;
        let hash = self.shared.hasher.hash_one(key);
        // High bits: the map inside uses the low ones of its own hash.
        &shards[((hash >> 32) as usize) % shards.len()]
    }

    pub(crate) fn admit(&self, key: &K) -> Admission {
        let mut map = self.shard(key).lock();
        let bulkhead = match map.get(key) {
            Some(bulkhead) => bulkhead,
            None => {
                if map.len() >= self.shared.per_shard {
                    map.retain(|_, bulkhead| !bulkhead.is_idle());
                }
                if map.len() >= self.shared.per_shard {
                    self.shared.keys_exhausted.fetch_add(1, Ordering::Relaxed);
                    return Admission::Refused(BulkheadEvent::KeysExhausted);
                }
                // The config was validated in `new`, so this cannot fail;
                // refusing is the safe answer if it ever did.
                let Ok(bulkhead) = Bulkhead::unobserved(self.shared.config.per_key) else {
                    return Admission::Refused(BulkheadEvent::QueueFull);
                };
                map.entry(key.clone()).or_insert(bulkhead)
            }
        };
        if let Some(permit) = bulkhead.try_permit() {
            return Admission::Permit(permit);
        }
        match bulkhead.reserve() {
            Ok(Reserved::Permit(permit)) => Admission::Permit(permit),
            Ok(Reserved::Queued(slot)) => Admission::Queued(slot),
            Err(refusal) => Admission::Refused(refusal.event()),
        }
    }

    pub(crate) async fn wait(
        &self,
        key: &K,
        slot: QueueSlot,
    ) -> Result<BulkheadPermit, BulkheadFull> {
        slot.wait()
            .await
            .map_err(|refusal| self.report(key, refusal.event()))
    }

    pub(crate) fn report(&self, key: &K, event: BulkheadEvent) -> BulkheadFull {
        self.shared.events.emit(KeyedBulkheadEvent {
            key: key.clone(),
            event,
        });
        BulkheadFull
    }
}

/// Applies a [`KeyedBulkhead`] to a service, the key taken from each request.
pub struct KeyedBulkheadLayer<K, F> {
    bulkhead: KeyedBulkhead<K>,
    key_fn: Arc<F>,
}

impl<K, F> KeyedBulkheadLayer<K, F> {
    /// `key_fn` names the request's key; `None` runs it outside any bulkhead.
    pub fn new(bulkhead: KeyedBulkhead<K>, key_fn: F) -> Self {
        KeyedBulkheadLayer {
            bulkhead,
            key_fn: Arc::new(key_fn),
        }
    }
}

impl<K, F> Clone for KeyedBulkheadLayer<K, F> {
    fn clone(&self) -> Self {
        KeyedBulkheadLayer {
            bulkhead: self.bulkhead.clone(),
            key_fn: self.key_fn.clone(),
        }
    }
}

impl<K, F, S> Layer<S> for KeyedBulkheadLayer<K, F> {
    type Service = KeyedBulkheadService<K, F, S>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedBulkheadService {
            inner,
            bulkhead: self.bulkhead.clone(),
            key_fn: self.key_fn.clone(),
        }
    }
}

/// A service whose calls run under their key's bulkhead.
///
/// The key is only known once the request arrives, so the permit is taken
/// in `call`. A call that must queue takes the ready inner service with it
/// (leaving a fresh clone behind) and calls it once it has a permit.
pub struct KeyedBulkheadService<K, F, S> {
    inner: S,
    bulkhead: KeyedBulkhead<K>,
    key_fn: Arc<F>,
}

impl<K, F, S: Clone> Clone for KeyedBulkheadService<K, F, S> {
    fn clone(&self) -> Self {
        KeyedBulkheadService {
            inner: self.inner.clone(),
            bulkhead: self.bulkhead.clone(),
            key_fn: self.key_fn.clone(),
        }
    }
}

impl<K, F, S: fmt::Debug> fmt::Debug for KeyedBulkheadService<K, F, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBulkheadService")
            .field("inner", &self.inner)
            .field("bulkhead", &self.bulkhead)
            .finish_non_exhaustive()
    }
}

type BoxResponse<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl<K, F, S, Req> Service<Req> for KeyedBulkheadService<K, F, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    F: Fn(&Req) -> Option<K>,
    S: Service<Req> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = KeyedResponseFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(key) = (self.key_fn)(&req) else {
            return KeyedResponseFuture::called(self.inner.call(req), None);
        };
        match self.bulkhead.admit(&key) {
            Admission::Permit(permit) => {
                KeyedResponseFuture::called(self.inner.call(req), Some(permit))
            }
            Admission::Refused(event) => {
                self.bulkhead.report(&key, event);
                KeyedResponseFuture {
                    kind: Kind::Refused,
                }
            }
            Admission::Queued(slot) => {
                // `self.inner` is the ready one: take it, leave a clone.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                let bulkhead = self.bulkhead.clone();
                let fut = async move {
                    let _permit = bulkhead.wait(&key, slot).await?;
                    ready.call(req).await.map_err(Into::into)
                };
                KeyedResponseFuture {
                    kind: Kind::Queued { fut: Box::pin(fut) },
                }
            }
        }
    }
}

pin_project! {
    /// The response of a [`KeyedBulkheadService`].
    pub struct KeyedResponseFuture<F, T> {
        #[pin]
        kind: Kind<F, T>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, T> {
        Called { #[pin] fut: F, permit: Option<BulkheadPermit> },
        Queued { fut: BoxResponse<T> },
        Refused,
    }
}

impl<F, T> KeyedResponseFuture<F, T> {
    fn called(fut: F, permit: Option<BulkheadPermit>) -> Self {
        KeyedResponseFuture {
            kind: Kind::Called { fut, permit },
        }
    }
}

impl<F, T, E> Future for KeyedResponseFuture<F, T>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { fut, permit } => {
                let output = ready!(fut.poll(cx));
                permit.take();
                Poll::Ready(output.map_err(Into::into))
            }
            KindProj::Queued { fut } => fut.as_mut().poll(cx),
            KindProj::Refused => Poll::Ready(Err(BulkheadFull.into())),
        }
    }
}

impl<F, T> fmt::Debug for KeyedResponseFuture<F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedResponseFuture")
            .finish_non_exhaustive()
    }
}
