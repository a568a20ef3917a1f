//! Bulkhead behaviour a caller relies on: bounds hold, refusals are prompt
//! and typed, and cancellation never leaks a permit or a queue slot.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use trellis_resilience::bulkhead::{
    Bulkhead, BulkheadConfig, BulkheadEvent, BulkheadFull, BulkheadLayer, BulkheadSnapshot,
    KeyedBulkhead, KeyedBulkheadConfig, KeyedBulkheadLayer,
};
use trellis_resilience::{BoxError, Rejection};

fn bulkhead(max_concurrent: usize, max_queue: usize, max_wait_ms: u64) -> Bulkhead {
    let config = BulkheadConfig::new(max_concurrent)
        .with_queue(max_queue, Duration::from_millis(max_wait_ms));
    Bulkhead::new(config).unwrap()
}

fn idle(snapshot: BulkheadSnapshot) -> bool {
    snapshot.in_use == 0 && snapshot.queued == 0
}

/// Tracks how many calls run at once and the most ever seen.
#[derive(Clone, Default)]
struct Gauge {
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
}

impl Gauge {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
        self.done.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn two_hundred_tasks_over_eight_permits_never_exceed_eight() {
    let bulkhead = bulkhead(8, 200, 60_000);
    let gauge = Gauge::default();
    let g = gauge.clone();
    let svc = ServiceBuilder::new()
        .layer(BulkheadLayer::new(bulkhead.clone()))
        .service(service_fn(move |ms: u64| {
            let g = g.clone();
            async move {
                g.enter();
                tokio::time::sleep(Duration::from_millis(ms)).await;
                g.leave();
                Ok::<_, BoxError>(ms)
            }
        }));
    let tasks: Vec<_> = (0..200u64)
        .map(|i| tokio::spawn(svc.clone().oneshot(10 + i % 7)))
        .collect();
    // Every task has started long before the first call (10 ms) ends.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let snap = bulkhead.snapshot();
    assert_eq!((snap.in_use, snap.queued, snap.capacity), (8, 192, 8));
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(gauge.peak.load(Ordering::SeqCst), 8);
    assert_eq!(gauge.done.load(Ordering::SeqCst), 200);
    assert!(idle(bulkhead.snapshot()), "{:?}", bulkhead.snapshot());
    assert_eq!(bulkhead.snapshot().rejected, 0);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_at_once_with_an_event() {
    let bulkhead = bulkhead(2, 3, 1_000);
    let mut events = bulkhead.events().unwrap().subscribe();
    let held = [
        bulkhead.acquire().await.unwrap(),
        bulkhead.acquire().await.unwrap(),
    ];
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let b = bulkhead.clone();
            tokio::spawn(async move { b.acquire().await.map(drop) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(bulkhead.snapshot().queued, 3);
    // No event was published for the admitted or queued calls.
    assert!(events.try_recv().is_err());

    let start = Instant::now();
    assert_eq!(bulkhead.acquire().await.err(), Some(BulkheadFull));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(events.try_recv().unwrap(), BulkheadEvent::QueueFull);
    assert_eq!(bulkhead.snapshot().rejected, 1);

    drop(held);
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap(), Ok(()));
    }
    assert!(idle(bulkhead.snapshot()));
}

#[tokio::test(start_paused = true)]
async fn a_queued_call_is_refused_after_exactly_max_wait() {
    let bulkhead = bulkhead(1, 1, 250);
    let mut events = bulkhead.events().unwrap().subscribe();
    let _held = bulkhead.acquire().await.unwrap();
    let start = Instant::now();
    assert_eq!(bulkhead.acquire().await.err(), Some(BulkheadFull));
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert_eq!(
        events.try_recv().unwrap(),
        BulkheadEvent::QueueTimeout {
            waited: Duration::from_millis(250)
        }
    );
    let snap = bulkhead.snapshot();
    assert_eq!((snap.in_use, snap.queued, snap.timed_out), (1, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn a_permit_freed_within_max_wait_admits_the_waiter() {
    let bulkhead = bulkhead(1, 1, 250);
    let held = bulkhead.acquire().await.unwrap();
    let b = bulkhead.clone();
    let waiter = tokio::spawn(async move {
        let start = Instant::now();
        b.acquire().await.map(|_| start.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(249)).await;
    drop(held);
    assert_eq!(waiter.await.unwrap(), Ok(Duration::from_millis(249)));
}

#[tokio::test(start_paused = true)]
async fn cancelled_queued_and_running_calls_leak_nothing() {
    let bulkhead = bulkhead(2, 10, 60_000);
    let svc = ServiceBuilder::new()
        .layer(BulkheadLayer::new(bulkhead.clone()))
        .service(service_fn(|()| async {
            // Runs until cancelled.
            std::future::pending::<()>().await;
            Ok::<_, BoxError>(())
        }));
    let tasks: Vec<_> = (0..7)
        .map(|_| tokio::spawn(svc.clone().oneshot(())))
        .collect();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let snap = bulkhead.snapshot();
    assert_eq!((snap.in_use, snap.queued), (2, 5));
    // Cancel one running and two queued calls first, then the rest.
    for i in [0, 3, 5] {
        tasks[i].abort();
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    let snap = bulkhead.snapshot();
    assert_eq!(
        (snap.in_use, snap.queued),
        (2, 2),
        "a queued call took the freed permit"
    );
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        assert!(task.await.unwrap_err().is_cancelled());
    }
    assert!(idle(bulkhead.snapshot()), "{:?}", bulkhead.snapshot());
}

#[tokio::test(start_paused = true)]
async fn a_service_dropped_between_ready_and_call_frees_its_permit() {
    let bulkhead = bulkhead(1, 0, 0);
    let mut svc = ServiceBuilder::new()
        .layer(BulkheadLayer::new(bulkhead.clone()))
        .service(service_fn(|()| async { Ok::<_, BoxError>(()) }));
    svc.ready().await.unwrap();
    assert_eq!(bulkhead.snapshot().in_use, 1);
    // A clone never inherits the held permit.
    let mut clone = svc.clone();
    let refused = clone.ready().await.unwrap().call(()).await.unwrap_err();
    assert_eq!(Rejection::of(&refused), Some(Rejection::BulkheadFull));
    drop(svc);
    assert!(idle(bulkhead.snapshot()));
    // The clone recovers once there is room: a refusal does not kill it.
    clone.ready().await.unwrap().call(()).await.unwrap();
    assert!(idle(bulkhead.snapshot()));
}

#[tokio::test(start_paused = true)]
async fn refusals_reach_the_caller_as_typed_errors_and_inner_errors_pass_through() {
    let bulkhead = bulkhead(1, 0, 0);
    let svc = ServiceBuilder::new()
        .layer(BulkheadLayer::new(bulkhead.clone()))
        .service(service_fn(|fail: bool| async move {
            if fail {
                Err::<(), BoxError>("upstream broke".into())
            } else {
                Ok(())
            }
        }));
    let err = svc.clone().oneshot(true).await.unwrap_err();
    assert_eq!(err.to_string(), "upstream broke");
    assert_eq!(Rejection::of(&err), None);
    let _held = bulkhead.acquire().await.unwrap();
    let err = svc.oneshot(false).await.unwrap_err();
    assert!(err.downcast_ref::<BulkheadFull>().is_some());
}

fn keyed(max_concurrent: usize, max_keys: usize) -> KeyedBulkhead<String> {
    KeyedBulkhead::new(KeyedBulkheadConfig {
        per_key: BulkheadConfig::new(max_concurrent).with_queue(1, Duration::from_millis(100)),
        max_keys,
    })
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn keyed_bulkheads_isolate_tenants() {
    let keyed = keyed(2, 100);
    let a = "tenant-a".to_owned();
    let b = "tenant-b".to_owned();
    let _a1 = keyed.acquire(&a).await.unwrap();
    let _a2 = keyed.acquire(&a).await.unwrap();
    // Tenant A is saturated and its one queued call times out...
    let mut events = keyed.events().subscribe();
    assert_eq!(keyed.acquire(&a).await.err(), Some(BulkheadFull));
    let event = events.try_recv().unwrap();
    assert_eq!(event.key, a);
    assert!(matches!(event.event, BulkheadEvent::QueueTimeout { .. }));
    // ...while tenant B still gets both of its permits at once.
    let start = Instant::now();
    let _b1 = keyed.acquire(&b).await.unwrap();
    let _b2 = keyed.acquire(&b).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(keyed.snapshot_of(&a).unwrap().in_use, 2);
    assert_eq!(keyed.snapshot_of(&b).unwrap().in_use, 2);
    assert_eq!(keyed.snapshot().in_use, 4);
}

#[tokio::test(start_paused = true)]
async fn keyed_bulkheads_stay_bounded_and_refuse_new_keys_only_when_all_are_busy() {
    let keyed = keyed(1, 4);
    for i in 0..1000 {
        // Idle keys are swept to make room: memory stays bounded.
        drop(keyed.acquire(&format!("k{i}")).await.unwrap());
        assert!(keyed.snapshot().keys <= 4);
    }
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(keyed.acquire(&format!("busy{i}")).await.unwrap());
    }
    let mut events = keyed.events().subscribe();
    assert_eq!(
        keyed.acquire(&"newcomer".to_owned()).await.err(),
        Some(BulkheadFull)
    );
    let event = events.try_recv().unwrap();
    assert_eq!(event.event, BulkheadEvent::KeysExhausted);
    assert_eq!(keyed.snapshot().keys_exhausted, 1);
    drop(held);
    drop(keyed.acquire(&"newcomer".to_owned()).await.unwrap());
    let snap = keyed.snapshot();
    assert!(snap.keys <= 4 && snap.in_use == 0, "{snap:?}");
    keyed.evict_idle();
    assert_eq!(keyed.snapshot().keys, 0);
}

#[tokio::test(start_paused = true)]
async fn keyed_layer_queues_per_key_and_passes_unkeyed_requests() {
    let keyed = keyed(1, 16);
    let gauge = Gauge::default();
    let g = gauge.clone();
    let svc = ServiceBuilder::new()
        .layer(KeyedBulkheadLayer::new(
            keyed.clone(),
            |req: &(Option<&'static str>, u64)| req.0.map(str::to_owned),
        ))
        .service(service_fn(move |(_, ms): (Option<&'static str>, u64)| {
            let g = g.clone();
            async move {
                g.enter();
                tokio::time::sleep(Duration::from_millis(ms)).await;
                g.leave();
                Ok::<_, BoxError>(())
            }
        }));
    let start = Instant::now();
    let first = tokio::spawn(svc.clone().oneshot((Some("t"), 40)));
    let queued = tokio::spawn(svc.clone().oneshot((Some("t"), 40)));
    let refused = tokio::spawn(svc.clone().oneshot((Some("t"), 40)));
    let unkeyed = tokio::spawn(svc.clone().oneshot((None, 40)));
    let err = refused.await.unwrap().unwrap_err();
    assert_eq!(Rejection::of(&err), Some(Rejection::BulkheadFull));
    first.await.unwrap().unwrap();
    unkeyed.await.unwrap().unwrap();
    // The queued call ran after the first, well within its 100 ms wait.
    queued.await.unwrap().unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(80));
    assert_eq!(
        gauge.peak.load(Ordering::SeqCst),
        2,
        "one keyed and one unkeyed"
    );
    assert_eq!(keyed.snapshot().in_use, 0);
    assert_eq!(keyed.snapshot().queued, 0);
}

#[test]
fn services_can_be_shared_across_threads() {
    fn shareable<T: Clone + Send + Sync + 'static>(_: &T) {}
    let bulkhead = bulkhead(1, 1, 1);
    let svc = ServiceBuilder::new()
        .layer(BulkheadLayer::new(bulkhead))
        .service(service_fn(|()| async { Ok::<_, BoxError>(()) }));
    shareable(&svc);
    let keyed = keyed(1, 1);
    shareable(&keyed);
    let svc = ServiceBuilder::new()
        .layer(KeyedBulkheadLayer::new(keyed, |_: &()| {
            Some("k".to_owned())
        }))
        .service(service_fn(|()| async { Ok::<_, BoxError>(()) }));
    shareable(&svc);
}
