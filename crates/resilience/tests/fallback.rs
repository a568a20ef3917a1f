//! Fallback: rejections and failures turned into responses.

use std::time::Duration;
use tokio::sync::broadcast::error::TryRecvError;
use tower::{service_fn, Layer, ServiceBuilder, ServiceExt};
use trellis_resilience::breaker::BreakerOpen;
use trellis_resilience::bulkhead::BulkheadFull;
use trellis_resilience::fallback::{on_rejection, FallbackEvent, FallbackLayer};
use trellis_resilience::ratelimit::RateLimited;
use trellis_resilience::retry::{Backoff, RetryConfig, RetryLayer};
use trellis_resilience::timeout::TimeoutLayer;
use trellis_resilience::{BoxError, Rejection};

#[derive(Debug, thiserror::Error)]
#[error("database is down")]
struct DatabaseDown;

/// An upstream that fails every call with `error()`.
fn refusing<E>(
    error: impl Fn() -> E + Clone + Send + 'static,
) -> impl tower::Service<&'static str, Response = String, Error = BoxError> + Clone
where
    E: Into<BoxError>,
{
    service_fn(move |_: &'static str| {
        let error = error.clone();
        async move { Err::<String, BoxError>(error().into()) }
    })
}

/// Answers rejections with a status-like string, like a gateway would.
fn degraded(rejection: Rejection) -> Option<String> {
    Some(match rejection {
        Rejection::BreakerOpen { retry_after } => {
            format!("503 retry in {}s", retry_after.as_secs())
        }
        Rejection::BulkheadFull => "503 busy".to_owned(),
        Rejection::RateLimited { .. } => "429".to_owned(),
        Rejection::Timeout => "504".to_owned(),
    })
}

#[tokio::test]
async fn breaker_bulkhead_and_rate_limit_rejections_become_responses() {
    let layer = on_rejection(degraded);
    let mut events = layer.events().subscribe();

    let svc = layer.layer(refusing(|| BreakerOpen::new(Duration::from_secs(5))));
    assert_eq!(svc.oneshot("GET /").await.unwrap(), "503 retry in 5s");
    assert_eq!(
        events.try_recv().unwrap(),
        FallbackEvent::Used {
            rejection: Some(Rejection::BreakerOpen {
                retry_after: Duration::from_secs(5)
            })
        }
    );

    let svc = layer.layer(refusing(|| BulkheadFull));
    assert_eq!(svc.oneshot("GET /").await.unwrap(), "503 busy");
    let svc = layer.layer(refusing(|| RateLimited::new(Duration::from_secs(1))));
    assert_eq!(svc.oneshot("GET /").await.unwrap(), "429");
}

#[tokio::test(start_paused = true)]
async fn a_timeout_becomes_a_response() {
    let hanging = service_fn(|_: &'static str| std::future::pending::<Result<String, BoxError>>());
    let svc = ServiceBuilder::new()
        .layer(on_rejection(degraded))
        .layer(TimeoutLayer::new(Duration::from_millis(50)))
        .service(hanging);
    assert_eq!(svc.oneshot("GET /").await.unwrap(), "504");
}

#[tokio::test]
async fn a_failure_that_is_no_rejection_passes_through_on_rejection() {
    let svc = on_rejection(degraded).layer(refusing(|| DatabaseDown));
    let err = svc.oneshot("GET /").await.unwrap_err();
    assert!(err.is::<DatabaseDown>());
}

#[tokio::test]
async fn a_general_fallback_answers_failures_and_may_decline() {
    let layer = FallbackLayer::new(|error: &BoxError| {
        error.is::<DatabaseDown>().then(|| "cached".to_owned())
    });
    let mut events = layer.events().subscribe();
    let svc = layer.layer(refusing(|| DatabaseDown));
    assert_eq!(svc.oneshot("GET /").await.unwrap(), "cached");
    assert_eq!(
        events.try_recv().unwrap(),
        FallbackEvent::Used { rejection: None }
    );

    let svc = layer.layer(refusing(|| BulkheadFull));
    let err = svc.oneshot("GET /").await.unwrap_err();
    assert_eq!(Rejection::of(&err), Some(Rejection::BulkheadFull));
    assert_eq!(events.try_recv(), Err(TryRecvError::Empty));
}

#[tokio::test]
async fn success_is_not_touched() {
    let layer = on_rejection(degraded);
    let mut events = layer.events().subscribe();
    let ok = service_fn(|x: &'static str| async move { Ok::<_, BoxError>(x.to_owned()) });
    assert_eq!(layer.layer(ok).oneshot("fine").await.unwrap(), "fine");
    assert_eq!(events.try_recv(), Err(TryRecvError::Empty));
}

#[tokio::test(start_paused = true)]
async fn fallback_after_retries_with_per_try_timeouts_are_spent() {
    let hanging = service_fn(|_: &'static str| std::future::pending::<Result<String, BoxError>>());
    let retry = RetryLayer::new(RetryConfig {
        max_attempts: 3,
        backoff: Backoff::Constant(Duration::from_millis(10)),
        per_try_timeout: Some(Duration::from_millis(100)),
        ..RetryConfig::default()
    });
    let svc = ServiceBuilder::new()
        .layer(on_rejection(degraded))
        .layer(retry.clone())
        .service(hanging);
    let start = tokio::time::Instant::now();
    assert_eq!(svc.oneshot("GET /").await.unwrap(), "504");
    assert_eq!(start.elapsed(), Duration::from_millis(320));
    assert_eq!(retry.snapshot().retries, 2);
}
