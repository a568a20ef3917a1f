//! Rate limiting with the in-process stores: GCRA admits exactly the quota,
//! decisions carry the right numbers, memory stays bounded, and the layer
//! refuses with a typed error.

use std::future::{ready, Ready};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use trellis_resilience::ratelimit::{
    Decision, DirectStore, FailurePolicy, FastClock, MemoryStore, MemoryStoreConfig, Quota,
    RateLimitEvent, RateLimitLayer, RateLimitStore, RateLimited, RateLimiter, StoreError,
};
use trellis_resilience::{BoxError, Rejection};

fn memory(max_keys: usize) -> MemoryStore<String> {
    MemoryStore::with_max_keys(max_keys).unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn admits_exactly_the_burst_then_the_rate() {
    // 10 per second in bursts of 5: one call every 100 ms after the burst.
    let quota = Quota::per_second(10).unwrap().with_burst(5).unwrap();
    let limiter = RateLimiter::new(quota, memory(1000));
    let key = "client".to_owned();
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let d = limiter.check(&key).await;
        assert!(d.allowed);
        remaining.push(d.remaining);
    }
    assert_eq!(remaining, [4, 3, 2, 1, 0]);
    let refused = limiter.check(&key).await;
    assert!(!refused.allowed);
    assert_eq!(refused.retry_after, ms(100));
    assert_eq!(refused.reset_after, ms(500));
    assert_eq!((refused.limit, refused.remaining), (5, 0));

    // Over the next ten seconds, polled every 10 ms, exactly 100 more get in.
    let mut admitted = 0;
    for _ in 0..1000 {
        tokio::time::advance(ms(10)).await;
        if limiter.check(&key).await.allowed {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 100);
    let snap = limiter.snapshot();
    assert_eq!(snap.rejected, 1 + 900);
    assert_eq!(snap.keys_tracked, Some(1));
}

#[tokio::test(start_paused = true)]
async fn decisions_report_remaining_reset_and_retry_after() {
    let quota = Quota::per_minute(60).unwrap().with_burst(3).unwrap();
    let limiter = RateLimiter::new(quota, memory(10));
    let key = "k".to_owned();
    let first = limiter.check(&key).await;
    assert_eq!(
        first,
        Decision {
            allowed: true,
            limit: 3,
            remaining: 2,
            reset_after: Duration::from_secs(1),
            retry_after: Duration::ZERO,
            window: Duration::from_secs(3),
        }
    );
    limiter.check(&key).await;
    limiter.check(&key).await;
    tokio::time::advance(ms(400)).await;
    let refused = limiter.check(&key).await;
    assert!(!refused.allowed);
    assert_eq!(refused.retry_after, ms(600));
    assert_eq!(refused.reset_after, ms(2600));
    // Retrying exactly when told succeeds; a moment earlier does not.
    tokio::time::advance(ms(599)).await;
    assert!(!limiter.check(&key).await.allowed);
    tokio::time::advance(ms(1)).await;
    let admitted = limiter.check(&key).await;
    assert!(admitted.allowed);
    assert_eq!(admitted.remaining, 0);
}

#[tokio::test(start_paused = true)]
async fn keys_are_independent() {
    let quota = Quota::per_hour(2).unwrap();
    let limiter = RateLimiter::new(quota, memory(100));
    let (a, b) = ("a".to_owned(), "b".to_owned());
    assert!(limiter.check(&a).await.allowed);
    assert!(limiter.check(&a).await.allowed);
    assert!(!limiter.check(&a).await.allowed);
    assert!(limiter.check(&b).await.allowed);
    assert_eq!(limiter.check(&b).await.remaining, 0);
}

#[tokio::test(start_paused = true)]
async fn memory_store_stays_bounded_and_forgets_idle_keys() {
    let store = MemoryStore::new(MemoryStoreConfig {
        max_keys: 64,
        shards: 4,
        sweep_interval: Duration::from_secs(10),
    })
    .unwrap();
    let quota = Quota::per_second(1).unwrap();
    let limiter = RateLimiter::new(quota, store);
    for i in 0..10_000 {
        assert!(limiter.check(&format!("ip-{i}")).await.allowed);
        assert!(limiter.store().snapshot().keys <= 64);
    }
    // Every key was busy when pushed out, and each such eviction is counted.
    assert!(limiter.store().snapshot().evicted_busy >= 10_000 - 64);

    // Once the window passes every key is idle: forgetting them loses nothing.
    tokio::time::advance(Duration::from_secs(1)).await;
    limiter.store().evict_idle();
    assert_eq!(limiter.snapshot().keys_tracked, Some(0));

    // The periodic sweep does the same without being asked.
    let store = limiter.store();
    for i in 0..8 {
        limiter.check(&format!("old-{i}")).await;
    }
    assert_eq!(store.snapshot().keys, 8);
    tokio::time::advance(Duration::from_secs(11)).await;
    for i in 0..4 {
        // A new key in each shard triggers that shard's sweep.
        limiter.check(&format!("new-{i}")).await;
    }
    let keys = store.snapshot().keys;
    assert!(keys < 12, "idle keys were swept: {keys}");
}

#[tokio::test(start_paused = true)]
async fn an_idle_key_forgotten_under_pressure_loses_nothing() {
    let store = MemoryStore::new(MemoryStoreConfig {
        max_keys: 1,
        shards: 1,
        sweep_interval: Duration::from_secs(3600),
    })
    .unwrap();
    let limiter = RateLimiter::new(Quota::per_second(1).unwrap(), store);
    let (a, b) = ("a".to_owned(), "b".to_owned());
    assert!(limiter.check(&a).await.allowed);
    tokio::time::advance(Duration::from_secs(1)).await;
    // `a` is idle, so `b` takes its place without counting a busy eviction.
    assert!(limiter.check(&b).await.allowed);
    assert_eq!(limiter.store().snapshot().evicted_busy, 0);
    assert!(!limiter.check(&b).await.allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_at_once_admit_exactly_the_quota() {
    // A long period, so the test's real clock cannot refill anything.
    let quota = Quota::per_hour(1).unwrap().with_burst(250).unwrap();
    let limiter = RateLimiter::new(quota, memory(1000));
    // The fast clock, as a gateway would configure it; a store's clock
    // does not change what it admits.
    let direct = RateLimiter::new(quota, DirectStore::with_clock(FastClock::new()));
    let admitted = Arc::new(AtomicUsize::new(0));
    let admitted_direct = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let (limiter, direct) = (limiter.clone(), direct.clone());
            let (admitted, admitted_direct) = (admitted.clone(), admitted_direct.clone());
            tokio::spawn(async move {
                for i in 0..200 {
                    // Two keys shared by all tasks.
                    let key = if (t + i) % 2 == 0 { "even" } else { "odd" }.to_owned();
                    if limiter.check(&key).await.allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    if direct.check(&()).await.allowed {
                        admitted_direct.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 500);
    assert_eq!(admitted_direct.load(Ordering::Relaxed), 250);
    let snap = limiter.snapshot();
    assert_eq!(snap.rejected, 16 * 200 - 500);
}

#[tokio::test(start_paused = true)]
async fn direct_limiter_admits_the_burst_then_the_rate() {
    let limiter = RateLimiter::direct(Quota::per_second(4).unwrap().with_burst(2).unwrap());
    assert!(limiter.check(&()).await.allowed);
    assert!(limiter.check(&()).await.allowed);
    let refused = limiter.check(&()).await;
    assert!(!refused.allowed);
    assert_eq!(refused.retry_after, ms(250));
    tokio::time::advance(ms(250)).await;
    assert!(limiter.check(&()).await.allowed);
    assert!(!limiter.check(&()).await.allowed);
}

#[tokio::test(start_paused = true)]
async fn layer_refuses_with_retry_after_and_never_calls_the_inner_service() {
    let quota = Quota::per_second(1).unwrap().with_burst(2).unwrap();
    let limiter = RateLimiter::new(quota, memory(100));
    let mut events = limiter.events().subscribe();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(RateLimitLayer::new(limiter.clone(), |req: &(&str, u32)| {
            (!req.0.is_empty()).then(|| req.0.to_owned())
        }))
        .service(service_fn(move |req: (&str, u32)| {
            c.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, BoxError>(req.1) }
        }));
    assert_eq!(svc.clone().oneshot(("alice", 1)).await.unwrap(), 1);
    assert_eq!(svc.clone().oneshot(("alice", 2)).await.unwrap(), 2);
    // Admitted calls publish nothing.
    assert!(events.try_recv().is_err());
    let err = svc.clone().oneshot(("alice", 3)).await.unwrap_err();
    assert_eq!(
        Rejection::of(&err),
        Some(Rejection::RateLimited {
            retry_after: ms(1000)
        })
    );
    assert_eq!(
        err.downcast_ref::<RateLimited>().unwrap().retry_after(),
        ms(1000)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    match events.try_recv().unwrap() {
        RateLimitEvent::Rejected { key, retry_after } => {
            assert_eq!((key.as_str(), retry_after), ("alice", ms(1000)));
        }
        other => panic!("unexpected event {other:?}"),
    }
    // Another key, and requests without a key, are unaffected.
    assert_eq!(svc.clone().oneshot(("bob", 4)).await.unwrap(), 4);
    for i in 0..10 {
        assert_eq!(svc.clone().oneshot(("", i)).await.unwrap(), i);
    }
}

/// A store that is always down.
struct BrokenStore;

impl RateLimitStore<String> for BrokenStore {
    type Decide = Ready<Result<Decision, StoreError>>;

    fn decide(&self, _key: &String, _quota: &Quota) -> Self::Decide {
        ready(Err(StoreError::Unavailable("connection refused".into())))
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_is_decided_by_the_failure_policy() {
    let quota = Quota::per_second(10).unwrap();
    let key = "k".to_owned();
    for (policy, allowed) in [(FailurePolicy::Open, true), (FailurePolicy::Closed, false)] {
        let limiter = RateLimiter::with_policy(quota, BrokenStore, policy);
        let mut events = limiter.events().subscribe();
        let d = limiter.check(&key).await;
        assert_eq!(d.allowed, allowed, "{policy:?}");
        if !allowed {
            assert_eq!(d.retry_after, quota.interval());
        }
        assert_eq!(limiter.snapshot().store_failures, 1);
        match events.try_recv().unwrap() {
            RateLimitEvent::StoreFailed {
                policy: p, error, ..
            } => {
                assert_eq!(p, policy);
                assert!(error.to_string().contains("connection refused"));
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
}
