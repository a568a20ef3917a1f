//! The circuit breaker as tower middleware, judging HTTP responses.

use http::{Request, Response, StatusCode};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::advance;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use trellis_resilience::breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, CircuitBreakerService, CircuitState,
    SlidingWindow,
};
use trellis_resilience::classify::HttpClassifier;
use trellis_resilience::{BoxError, Rejection};

fn breaker(half_open: u32) -> CircuitBreaker {
    CircuitBreaker::new(
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::Count(4))
            .minimum_calls(4)
            .failure_rate_threshold(50.0)
            .open_duration(Duration::from_secs(30))
            .permitted_calls_in_half_open(half_open),
    )
    .expect("valid config")
}

/// An upstream answering with the status in the request's body, counting
/// the requests that reach it.
fn upstream(
    hits: Arc<AtomicUsize>,
) -> impl Service<Request<u16>, Response = Response<()>, Error = BoxError, Future = impl Send> + Clone
{
    service_fn(move |req: Request<u16>| {
        hits.fetch_add(1, Ordering::SeqCst);
        let status = *req.body();
        async move {
            if status == 0 {
                return Err::<Response<()>, BoxError>("connection refused".into());
            }
            Ok(Response::builder()
                .status(status)
                .body(())
                .expect("valid status"))
        }
    })
}

async fn send<S>(svc: &mut S, status: u16) -> Result<Response<()>, BoxError>
where
    S: Service<Request<u16>, Response = Response<()>, Error = BoxError>,
{
    svc.ready().await?.call(Request::new(status)).await
}

#[tokio::test(start_paused = true)]
async fn five_hundreds_trip_the_breaker_and_four_hundreds_do_not() {
    let hits = Arc::new(AtomicUsize::new(0));
    let b = breaker(1);
    let mut svc = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(b.clone()).classifier(HttpClassifier::default()))
        .service(upstream(hits.clone()));
    for _ in 0..10 {
        let res = send(&mut svc, 404).await.expect("a 404 is a response");
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(
        b.state(),
        CircuitState::Closed,
        "4xx are the caller's fault"
    );
    assert_eq!(b.snapshot().failed_calls, 0);
    send(&mut svc, 503).await.unwrap();
    send(&mut svc, 200).await.unwrap();
    send(&mut svc, 429).await.unwrap();
    assert_eq!(b.state(), CircuitState::Closed);
    send(&mut svc, 500).await.unwrap();
    assert_eq!(b.state(), CircuitState::Open, "2 of the last 4 were 5xx");

    let before = hits.load(Ordering::SeqCst);
    let err = send(&mut svc, 200)
        .await
        .expect_err("open breaker let a call through");
    assert_eq!(
        Rejection::of(&err),
        Some(Rejection::BreakerOpen {
            retry_after: Duration::from_secs(30)
        })
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before,
        "a rejected call never reaches the upstream"
    );

    advance(Duration::from_secs(30)).await;
    send(&mut svc, 204).await.expect("the probe passes");
    assert_eq!(b.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn transport_errors_fail_and_pass_through_unchanged() {
    let b = breaker(1);
    let mut svc = CircuitBreakerService::new(upstream(Arc::default()), b.clone())
        .with_classifier(HttpClassifier::default());
    for _ in 0..4 {
        let err = send(&mut svc, 0).await.unwrap_err();
        assert_eq!(err.to_string(), "connection refused");
        assert_eq!(Rejection::of(&err), None);
    }
    assert_eq!(b.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn clones_of_the_service_share_one_breaker() {
    let b = breaker(1);
    let layer = CircuitBreakerLayer::new(b.clone()).classifier(HttpClassifier::default());
    let hits = Arc::new(AtomicUsize::new(0));
    let mut first = ServiceBuilder::new()
        .layer(layer.clone())
        .service(upstream(hits.clone()));
    let mut second = first.clone();
    let mut third = ServiceBuilder::new().layer(layer).service(upstream(hits));
    send(&mut first, 500).await.unwrap();
    send(&mut second, 502).await.unwrap();
    send(&mut third, 200).await.unwrap();
    send(&mut first, 200).await.unwrap();
    assert_eq!(b.state(), CircuitState::Open);
    assert!(send(&mut third, 200).await.is_err());
}

/// A service that is always ready and whose responses never arrive.
#[derive(Clone)]
struct Hang;

impl Service<Request<u16>> for Hang {
    type Response = Response<()>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<()>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<u16>) -> Self::Future {
        Box::pin(std::future::pending())
    }
}

async fn half_open(b: &CircuitBreaker) {
    let mut svc = CircuitBreakerService::new(upstream(Arc::default()), b.clone())
        .with_classifier(HttpClassifier::default());
    for _ in 0..4 {
        send(&mut svc, 503).await.unwrap();
    }
    advance(Duration::from_secs(30)).await;
    assert_eq!(b.state(), CircuitState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn poll_ready_reserves_no_probe() {
    let b = breaker(1);
    half_open(&b).await;
    // Services made ready and dropped without a call, as a balancer does.
    for _ in 0..5 {
        let mut svc = CircuitBreakerService::new(Hang, b.clone());
        std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    }
    assert_eq!(b.snapshot().probes_in_flight, 0);
    let mut svc = CircuitBreakerService::new(upstream(Arc::default()), b.clone());
    send(&mut svc, 200)
        .await
        .expect("the probe slot is still free");
    assert_eq!(b.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_response_future_frees_its_probe() {
    let b = breaker(1);
    half_open(&b).await;
    let mut hang = CircuitBreakerService::new(Hang, b.clone());
    let pending = hang.ready().await.unwrap().call(Request::new(200));
    assert_eq!(b.snapshot().probes_in_flight, 1);
    let mut svc = CircuitBreakerService::new(upstream(Arc::default()), b.clone());
    let err = send(&mut svc, 200).await.unwrap_err();
    assert_eq!(
        Rejection::of(&err),
        Some(Rejection::BreakerOpen {
            retry_after: Duration::ZERO
        })
    );
    // The caller gives up (a timeout, a client disconnect).
    assert!(tokio::time::timeout(Duration::from_secs(1), pending)
        .await
        .is_err());
    assert_eq!(b.snapshot().probes_in_flight, 0);
    send(&mut svc, 200)
        .await
        .expect("the abandoned probe's slot was given back");
    assert_eq!(b.state(), CircuitState::Closed);
}
