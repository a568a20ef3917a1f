//! The Redis store against the real server at 127.0.0.1:6379: several
//! limiters on separate connections share one limit, idle keys expire, and
//! an unreachable Redis is decided by the failure policy, promptly.
//!
//! Skipped (with a message) when Redis is down, unless
//! `TRELLIS_REQUIRE_BACKENDS=1`. Each test uses its own key prefix and
//! deletes its keys.
#![cfg(feature = "redis")]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tower::{service_fn, ServiceBuilder, ServiceExt};
use trellis_resilience::ratelimit::{
    FailurePolicy, Quota, RateLimitEvent, RateLimitLayer, RateLimiter, RedisStore, RedisStoreConfig,
};
use trellis_resilience::{BoxError, Rejection};

const URL: &str = "redis://127.0.0.1:6379/";

/// A connection for setup and cleanup, or `None` (after saying why) when
/// the test should be skipped.
async fn redis_or_skip(test: &str) -> Option<redis::aio::MultiplexedConnection> {
    let attempt = async {
        let client = redis::Client::open(URL)?;
        client.get_multiplexed_async_connection().await
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Ok(conn)) => Some(conn),
        outcome => {
            let why = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => "connection timed out".to_owned(),
            };
            if std::env::var("TRELLIS_REQUIRE_BACKENDS").as_deref() == Ok("1") {
                panic!("{test}: Redis at {URL} is required but unreachable: {why}");
            }
            println!("skipped: {test}: Redis at {URL} unreachable: {why}");
            None
        }
    }
}

/// A prefix no other run of any test shares.
fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("trellis-test:{test}:{}:{nanos}:", std::process::id())
}

fn store(prefix: &str) -> RedisStore {
    RedisStore::new(RedisStoreConfig {
        prefix: prefix.to_owned(),
        // Generous: the machine running the tests is shared and busy.
        timeout: Duration::from_secs(2),
        ..RedisStoreConfig::new(URL)
    })
    .unwrap()
}

async fn cleanup(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(conn).await.unwrap();
    }
}

#[tokio::test]
async fn two_limiters_on_separate_connections_share_one_limit() {
    let Some(mut conn) = redis_or_skip("two_limiters_share_one_limit").await else {
        return;
    };
    let prefix = unique_prefix("shared");
    let quota = Quota::per_hour(5).unwrap();
    let gateway_a = RateLimiter::with_policy(quota, store(&prefix), FailurePolicy::Closed);
    let gateway_b = RateLimiter::with_policy(quota, store(&prefix), FailurePolicy::Closed);
    let key = "tenant-1".to_owned();
    let mut admitted = Vec::new();
    for i in 0..12 {
        let gateway = if i % 2 == 0 { &gateway_a } else { &gateway_b };
        let d = gateway.check(&key).await;
        if d.allowed {
            admitted.push(d.remaining);
        } else {
            assert_eq!(d.remaining, 0);
            // Next unit of quota comes back in 12 minutes (to the microsecond).
            let twelve_min = Duration::from_secs(720);
            assert!(d.retry_after <= twelve_min, "{:?}", d.retry_after);
            assert!(d.retry_after > twelve_min - Duration::from_secs(5), "{d:?}");
        }
    }
    assert_eq!(admitted, [4, 3, 2, 1, 0]);
    let (a, b) = (gateway_a.snapshot(), gateway_b.snapshot());
    assert_eq!(a.rejected + b.rejected, 7);
    assert_eq!(a.store_failures + b.store_failures, 0);

    // Another key has its own quota.
    assert!(gateway_b.check(&"tenant-2".to_owned()).await.allowed);

    // The key expires when its bucket would be full again: idle keys cost nothing.
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}tenant-1"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl_ms > 3_500_000 && ttl_ms <= 3_600_000, "ttl {ttl_ms}");
    cleanup(&mut conn, &prefix).await;
}

#[tokio::test]
async fn concurrent_gateways_admit_exactly_the_burst() {
    let Some(mut conn) = redis_or_skip("concurrent_gateways_admit_exactly_the_burst").await else {
        return;
    };
    let prefix = unique_prefix("concurrent");
    let quota = Quota::per_hour(1).unwrap().with_burst(40).unwrap();
    let gateways: Vec<_> = (0..4)
        .map(|_| RateLimiter::with_policy(quota, store(&prefix), FailurePolicy::Closed))
        .collect();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let gateway = gateways[i % gateways.len()].clone();
            tokio::spawn(async move { gateway.check(&"hot".to_owned()).await.allowed })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += usize::from(task.await.unwrap());
    }
    assert_eq!(admitted, 40);
    let failures: u64 = gateways.iter().map(|g| g.snapshot().store_failures).sum();
    assert_eq!(failures, 0);
    cleanup(&mut conn, &prefix).await;
}

#[tokio::test]
async fn layer_over_redis_refuses_with_retry_after() {
    let Some(mut conn) = redis_or_skip("layer_over_redis_refuses_with_retry_after").await else {
        return;
    };
    let prefix = unique_prefix("layer");
    let limiter = RateLimiter::new(Quota::per_minute(2).unwrap(), store(&prefix));
    let svc = ServiceBuilder::new()
        .layer(RateLimitLayer::new(limiter, |req: &&'static str| {
            Some((*req).to_owned())
        }))
        .service(service_fn(|req: &'static str| async move {
            Ok::<_, BoxError>(req.len())
        }));
    assert_eq!(svc.clone().oneshot("abc").await.unwrap(), 3);
    assert_eq!(svc.clone().oneshot("abc").await.unwrap(), 3);
    let err = svc.clone().oneshot("abc").await.unwrap_err();
    match Rejection::of(&err) {
        Some(Rejection::RateLimited { retry_after }) => {
            assert!(
                retry_after > Duration::from_secs(25) && retry_after <= Duration::from_secs(30)
            );
        }
        other => panic!("expected a rate-limit rejection, got {other:?} ({err})"),
    }
    cleanup(&mut conn, &prefix).await;
}

fn unreachable_store() -> RedisStore {
    // Port 1 on loopback: nothing listens, so connecting is refused.
    RedisStore::new(RedisStoreConfig {
        timeout: Duration::from_millis(200),
        ..RedisStoreConfig::new("redis://127.0.0.1:1/")
    })
    .unwrap()
}

#[tokio::test]
async fn unreachable_redis_fails_open_or_closed_promptly() {
    let quota = Quota::per_second(10).unwrap();
    let key = "k".to_owned();
    for (policy, allowed) in [(FailurePolicy::Open, true), (FailurePolicy::Closed, false)] {
        let limiter = RateLimiter::with_policy(quota, unreachable_store(), policy);
        let mut events = limiter.events().subscribe();
        for _ in 0..3 {
            let start = Instant::now();
            let d = limiter.check(&key).await;
            assert_eq!(d.allowed, allowed, "{policy:?}");
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "{:?}",
                start.elapsed()
            );
        }
        assert_eq!(limiter.snapshot().store_failures, 3);
        match events.try_recv().unwrap() {
            RateLimitEvent::StoreFailed {
                policy: p, key: k, ..
            } => {
                assert_eq!((p, k.as_str()), (policy, "k"));
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_bad_url_is_a_typed_error() {
    let err = RedisStore::new(RedisStoreConfig::new("not a url")).unwrap_err();
    assert!(err.to_string().contains("not a url"), "{err}");
}
