//! Timeout: typed `Elapsed`, deadlines inherited and handed down.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use std::time::Duration;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceBuilder, ServiceExt};
use trellis_resilience::timeout::{Deadline, Elapsed, Timeout, TimeoutEvent, TimeoutLayer};
use trellis_resilience::{BoxError, Rejection};

const MS: Duration = Duration::from_millis(1);

fn slow(delay: Duration) -> impl tower::Service<u32, Response = u32, Error = BoxError> + Clone {
    service_fn(move |x: u32| async move {
        tokio::time::sleep(delay).await;
        Ok::<_, BoxError>(x)
    })
}

#[tokio::test(start_paused = true)]
async fn a_call_within_the_timeout_passes_untouched_and_silently() {
    let layer = TimeoutLayer::new(100 * MS);
    let mut events = layer.events().subscribe();
    let svc = layer.layer(slow(99 * MS));
    assert_eq!(svc.oneshot(4).await.unwrap(), 4);
    assert_eq!(events.try_recv(), Err(TryRecvError::Empty));
}

#[tokio::test(start_paused = true)]
async fn a_slow_call_fails_with_elapsed_at_the_deadline() {
    let layer = TimeoutLayer::new(100 * MS);
    let mut events = layer.events().subscribe();
    let svc = layer.layer(slow(Duration::from_secs(60)));
    let start = Instant::now();
    let err = svc.oneshot(4).await.unwrap_err();
    assert_eq!(start.elapsed(), 100 * MS);
    assert_eq!(err.downcast_ref::<Elapsed>(), Some(&Elapsed));
    assert_eq!(Rejection::of(&err), Some(Rejection::Timeout));
    assert_eq!(
        events.try_recv().unwrap(),
        TimeoutEvent::Elapsed {
            timeout: 100 * MS,
            inherited: false
        }
    );
}

#[tokio::test(start_paused = true)]
async fn the_inner_error_passes_through() {
    #[derive(Debug, thiserror::Error)]
    #[error("refused")]
    struct Refused;
    let failing = service_fn(|_: u32| async { Err::<u32, _>(Refused) });
    let err = Timeout::new(failing, MS).oneshot(0).await.unwrap_err();
    assert!(err.is::<Refused>());
    assert_eq!(Rejection::of(&err), None);
}

fn echo_deadline() -> impl tower::Service<
    Request<Empty<Bytes>>,
    Response = Response<Option<Deadline>>,
    Error = BoxError,
> + Clone {
    service_fn(|request: Request<Empty<Bytes>>| async move {
        let deadline = Deadline::of(&request);
        if request.headers().contains_key("x-hang") {
            std::future::pending::<()>().await;
        }
        Ok::<_, BoxError>(Response::new(deadline))
    })
}

#[tokio::test(start_paused = true)]
async fn an_http_timeout_hands_its_deadline_down() {
    let start = Instant::now();
    let svc = TimeoutLayer::http(Duration::from_secs(3)).layer(echo_deadline());
    let response = svc.oneshot(Request::new(Empty::new())).await.unwrap();
    let deadline = response.into_body().unwrap();
    assert_eq!(deadline.instant() - start, Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn an_inner_timeout_never_outlives_an_outer_one() {
    let outer = TimeoutLayer::http(Duration::from_secs(2));
    let inner = TimeoutLayer::http(Duration::from_secs(10));
    let mut inner_events = inner.events().subscribe();
    let svc = ServiceBuilder::new()
        .layer(outer)
        .layer(inner)
        .service(echo_deadline());
    let start = Instant::now();
    let response = svc
        .clone()
        .oneshot(Request::new(Empty::new()))
        .await
        .unwrap();
    assert_eq!(
        response.into_body().unwrap().instant() - start,
        Duration::from_secs(2),
        "the inner layer sees the outer, earlier deadline"
    );

    let hanging = Request::builder()
        .header("x-hang", "1")
        .body(Empty::new())
        .unwrap();
    let err = svc.oneshot(hanging).await.unwrap_err();
    assert!(err.is::<Elapsed>());
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(
        inner_events.try_recv().unwrap(),
        TimeoutEvent::Elapsed {
            timeout: Duration::from_secs(10),
            inherited: true
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_set_by_the_caller_is_honoured() {
    let svc = TimeoutLayer::http(Duration::from_secs(30)).layer(echo_deadline());
    let mut request = Request::builder()
        .header("x-hang", "1")
        .body(Empty::new())
        .unwrap();
    request.extensions_mut().insert(Deadline::after(250 * MS));
    let start = Instant::now();
    assert!(svc.oneshot(request).await.unwrap_err().is::<Elapsed>());
    assert_eq!(start.elapsed(), 250 * MS);
}

#[tokio::test(start_paused = true)]
async fn deadline_arithmetic() {
    let d = Deadline::after(Duration::from_secs(1));
    assert_eq!(d.remaining(), Duration::from_secs(1));
    assert!(!d.is_expired());
    let earlier = Deadline::after(MS);
    assert_eq!(d.min_with(Some(earlier)), earlier);
    assert_eq!(earlier.min_with(Some(d)), earlier);
    assert_eq!(d.min_with(None), d);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(d.is_expired());
    assert_eq!(d.remaining(), Duration::ZERO);
}
