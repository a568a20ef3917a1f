//! Retrying HTTP requests: idempotency, body replay, `Retry-After`, deadlines.

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};
use trellis_resilience::retry::http::{HttpRetryLayer, Idempotency, ReplayBody};
use trellis_resilience::retry::{Backoff, GiveUpReason, RetryConfig, RetryEvent};
use trellis_resilience::timeout::{Deadline, Elapsed, TimeoutLayer};
use trellis_resilience::BoxError;

const MS: Duration = Duration::from_millis(1);

#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    body: Bytes,
    deadline: Option<Deadline>,
}

/// An upstream answering the n-th request with `statuses[n]` (the last one
/// repeated), each with an optional `Retry-After`, recording what it got.
#[derive(Clone, Default)]
struct Upstream {
    seen: Arc<Mutex<Vec<Seen>>>,
}

type Answer = (u16, Option<&'static str>);

impl Upstream {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn service<B>(
        &self,
        answers: &[Answer],
    ) -> impl Service<
        Request<ReplayBody<B>>,
        Response = Response<()>,
        Error = BoxError,
        Future = impl Send,
    > + Clone
           + Send
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let seen = Arc::clone(&self.seen);
        let answers = answers.to_vec();
        service_fn(move |request: Request<ReplayBody<B>>| {
            let seen = Arc::clone(&seen);
            let answers = answers.clone();
            async move {
                let at = Instant::now();
                let deadline = Deadline::of(&request);
                let body = request.into_body().collect().await?.to_bytes();
                let n = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(Seen { at, body, deadline });
                    seen.len() - 1
                };
                let (status, retry_after) = answers[n.min(answers.len() - 1)];
                let mut response = Response::builder().status(status);
                if let Some(after) = retry_after {
                    response = response.header(http::header::RETRY_AFTER, after);
                }
                Ok::<_, BoxError>(response.body(())?)
            }
        })
    }
}

fn config(max_attempts: u32) -> RetryConfig {
    RetryConfig {
        max_attempts,
        backoff: Backoff::Constant(10 * MS),
        ..RetryConfig::default()
    }
}

fn request(method: Method, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri("http://upstream/orders")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// A body in chunks with no declared length, like a chunked upload.
fn chunked(
    parts: &[&'static str],
) -> StreamBody<impl futures::Stream<Item = Result<Frame<Bytes>, BoxError>>> {
    let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
        .iter()
        .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
        .collect();
    StreamBody::new(futures::stream::iter(frames))
}

#[tokio::test(start_paused = true)]
async fn an_idempotent_request_is_retried_on_a_503() {
    let upstream = Upstream::default();
    let svc = HttpRetryLayer::new(config(3)).layer(upstream.service(&[(503, None), (200, None)]));
    let response = svc.oneshot(request(Method::GET, "")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.seen().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_client_error_is_not_retried() {
    let upstream = Upstream::default();
    let svc = HttpRetryLayer::new(config(3)).layer(upstream.service(&[(404, None)]));
    let response = svc.oneshot(request(Method::GET, "")).await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_post_is_sent_once_unless_it_has_an_idempotency_key_or_is_allowed() {
    let answers = [(503, None), (201, None)];

    let upstream = Upstream::default();
    let layer = HttpRetryLayer::new(config(3));
    let mut events = layer.events().subscribe();
    let svc = layer.layer(upstream.service(&answers));
    let response = svc.oneshot(request(Method::POST, "order")).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(upstream.seen().len(), 1);
    assert_eq!(upstream.seen()[0].body, "order");
    assert_eq!(
        events.try_recv().unwrap(),
        RetryEvent::GaveUp {
            attempts: 1,
            reason: GiveUpReason::NotReplayable
        }
    );

    let upstream = Upstream::default();
    let svc = HttpRetryLayer::new(config(3)).layer(upstream.service(&answers));
    let mut keyed = request(Method::POST, "order");
    keyed
        .headers_mut()
        .insert("idempotency-key", "8e03978e".parse().unwrap());
    assert_eq!(svc.oneshot(keyed).await.unwrap().status(), 201);
    assert_eq!(upstream.seen().len(), 2);

    let upstream = Upstream::default();
    let svc = HttpRetryLayer::new(config(3))
        .idempotency(Idempotency {
            any_method: true,
            key_header: None,
        })
        .layer(upstream.service(&answers));
    assert_eq!(
        svc.oneshot(request(Method::POST, "order"))
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(upstream.seen().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_body_is_replayed_byte_for_byte() {
    let upstream = Upstream::default();
    let svc = HttpRetryLayer::new(config(3))
        .body_limit(32)
        .layer(upstream.service(&[(502, None), (503, None), (200, None)]));
    let request = Request::put("http://upstream/doc/1")
        .body(chunked(&["{\"name\":", "\"ünïcødé\"", ",\"n\":1}"]))
        .unwrap();
    assert_eq!(svc.oneshot(request).await.unwrap().status(), 200);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 3);
    for attempt in &seen {
        assert_eq!(attempt.body, "{\"name\":\"ünïcødé\",\"n\":1}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_bound_is_sent_once_whole() {
    let upstream = Upstream::default();
    let layer = HttpRetryLayer::new(config(3)).body_limit(8);
    let mut events = layer.events().subscribe();
    let svc = layer.layer(upstream.service(&[(503, None), (200, None)]));
    let request = Request::put("http://upstream/doc/1")
        .body(chunked(&["0123", "4567", "89ab", "cdef"]))
        .unwrap();
    assert_eq!(svc.oneshot(request).await.unwrap().status(), 503);
    let seen = upstream.seen();
    assert_eq!(
        seen.len(),
        1,
        "a body too large to replay must not be retried"
    );
    assert_eq!(
        seen[0].body, "0123456789abcdef",
        "and must not be truncated"
    );
    assert!(matches!(
        events.try_recv().unwrap(),
        RetryEvent::GaveUp {
            reason: GiveUpReason::NotReplayable,
            ..
        }
    ));

    // A declared Content-Length over the bound is not even read ahead.
    let upstream = Upstream::default();
    let svc = HttpRetryLayer::new(config(3))
        .body_limit(4)
        .layer(upstream.service(&[(503, None), (200, None)]));
    let response = svc.oneshot(request_put("0123456789")).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(upstream.seen()[0].body, "0123456789");
}

fn request_put(body: &'static str) -> Request<Full<Bytes>> {
    request(Method::PUT, body)
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let upstream = Upstream::default();
    let svc = HttpRetryLayer::new(config(3)).layer(upstream.service(&[
        (503, Some("3")),
        (429, Some("1")),
        (200, None),
    ]));
    assert_eq!(
        svc.oneshot(request(Method::GET, ""))
            .await
            .unwrap()
            .status(),
        200
    );
    let seen = upstream.seen();
    assert_eq!(seen[1].at - seen[0].at, Duration::from_secs(3));
    assert_eq!(seen[2].at - seen[1].at, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn retry_after_past_the_deadline_returns_the_response_at_once() {
    let upstream = Upstream::default();
    let svc = HttpRetryLayer::new(RetryConfig {
        deadline: Some(Duration::from_secs(2)),
        ..config(3)
    })
    .layer(upstream.service(&[(503, Some("30")), (200, None)]));
    let start = Instant::now();
    let response = svc.oneshot(request(Method::GET, "")).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()[http::header::RETRY_AFTER], "30");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn each_attempt_carries_a_deadline_within_the_outer_one() {
    let upstream = Upstream::default();
    let start = Instant::now();
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::http(Duration::from_secs(1)))
        .layer(HttpRetryLayer::new(RetryConfig {
            per_try_timeout: Some(995 * MS),
            ..config(3)
        }))
        .service(upstream.service(&[(503, None), (503, None), (200, None)]));
    assert_eq!(
        svc.oneshot(request(Method::GET, ""))
            .await
            .unwrap()
            .status(),
        200
    );
    let deadlines: Vec<_> = upstream
        .seen()
        .iter()
        .map(|s| s.deadline.unwrap().instant() - start)
        .collect();
    // First attempt: its own 995 ms. Later ones (starting 10 and 20 ms in)
    // would end past the outer 1 s, so they are capped by it.
    assert_eq!(deadlines[0], 995 * MS);
    assert_eq!(deadlines[1], Duration::from_secs(1));
    assert_eq!(deadlines[2], Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn an_outer_deadline_stops_retries() {
    let slow = service_fn(|_: Request<ReplayBody<Full<Bytes>>>| async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        Ok::<_, BoxError>(Response::builder().status(503).body(()).unwrap())
    });
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::http(Duration::from_secs(1)))
        .layer(HttpRetryLayer::new(config(10)))
        .service(slow);
    let start = Instant::now();
    let err = svc.oneshot(request(Method::GET, "")).await.unwrap_err();
    assert!(err.is::<Elapsed>(), "{err}");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}
