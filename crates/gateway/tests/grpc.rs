//! A real tonic gRPC service behind the gateway over h2c, called by a real
//! tonic client: unary, server-streaming, client-streaming and
//! bidirectional calls all work through it; trailers (grpc-status,
//! grpc-message and custom trailing metadata) arrive intact, a server error
//! status passes through, and the gateway's own errors reach the client as
//! gRPC statuses (no healthy endpoint and an open breaker: UNAVAILABLE; a
//! route timeout: DEADLINE_EXCEEDED; no route: UNIMPLEMENTED).
//!
//! The service is written by hand against tonic's server traits, as
//! tonic-build would generate it, with prost-derived messages, so the test
//! needs no `protoc`.
mod common;

use common::*;
use futures::{Stream, StreamExt};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint32, tag = "2")]
    n: u32,
}

fn msg(text: &str, n: u32) -> Msg {
    Msg {
        text: text.to_owned(),
        n,
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send>>;
type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

struct Unary;
impl tonic::server::UnaryService<Msg> for Unary {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>>;
    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let m = req.into_inner();
            match m.text.as_str() {
                "fail" => {
                    let mut md = tonic::metadata::MetadataMap::new();
                    md.insert(
                        "x-failure-id",
                        "42".parse().unwrap_or_else(|_| unreachable!()),
                    );
                    Err(Status::with_metadata(
                        Code::InvalidArgument,
                        "bad input: ünïcode & spaces",
                        md,
                    ))
                }
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    Ok(Response::new(m))
                }
                _ => Ok(Response::new(msg(&format!("echo {}", m.text), m.n + 1))),
            }
        })
    }
}

/// Sends `n` messages, then ends with ABORTED and trailing metadata when
/// asked to (`text == "abort"`), so the status travels in real trailers
/// after data frames.
struct ServerStream;
impl tonic::server::ServerStreamingService<Msg> for ServerStream {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFuture<Response<MsgStream>>;
    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let m = req.into_inner();
            let abort = m.text == "abort";
            let items = (0..m.n).map(|i| Ok(msg("item", i)));
            let tail = abort.then(|| {
                let mut md = tonic::metadata::MetadataMap::new();
                md.insert(
                    "x-custom-trailer",
                    "kept".parse().unwrap_or_else(|_| unreachable!()),
                );
                Err(Status::with_metadata(Code::Aborted, "stopped here", md))
            });
            let stream: MsgStream = Box::pin(futures::stream::iter(items.chain(tail)));
            Ok(Response::new(stream))
        })
    }
}

struct ClientStream;
impl tonic::server::ClientStreamingService<Msg> for ClientStream {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>>;
    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let mut stream = req.into_inner();
            let (mut count, mut sum) = (0u32, 0u32);
            while let Some(m) = stream.next().await {
                let m = m?;
                count += 1;
                sum += m.n;
            }
            Ok(Response::new(msg(&format!("got {count}"), sum)))
        })
    }
}

struct Bidi;
impl tonic::server::StreamingService<Msg> for Bidi {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFuture<Response<MsgStream>>;
    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let stream = req.into_inner();
            let out: MsgStream =
                Box::pin(stream.map(|m| m.map(|m| msg(&m.text.to_uppercase(), m.n * 2))));
            Ok(Response::new(out))
        })
    }
}

/// The `test.Echo` service, routed by path as generated code does.
#[derive(Clone)]
struct EchoServer;

impl tonic::server::NamedService for EchoServer {
    const NAME: &'static str = "test.Echo";
}

impl tower::Service<http::Request<tonic::body::Body>> for EchoServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let path = req.uri().path().to_owned();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
            Ok(match path.as_str() {
                "/test.Echo/Unary" => grpc.unary(Unary, req).await,
                "/test.Echo/ServerStream" => grpc.server_streaming(ServerStream, req).await,
                "/test.Echo/ClientStream" => grpc.client_streaming(ClientStream, req).await,
                "/test.Echo/Bidi" => grpc.streaming(Bidi, req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

async fn grpc_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer)
            .serve_with_incoming(incoming),
    );
    addr
}

fn config(upstream: std::net::SocketAddr) -> String {
    format!(
        r#"{LISTENER}
[[routes]]
name = "slow"
upstream = "grpc"
match = {{ path_prefix = "/test.Echo", headers = [{{ name = "x-route", value = "slow" }}] }}
timeout = "200ms"

[[routes]]
name = "echo"
upstream = "grpc"
match = {{ path_prefix = "/test.Echo" }}

[[routes]]
name = "empty"
upstream = "empty"
match = {{ path_prefix = "/test.Empty" }}

[[routes]]
name = "broken"
upstream = "dead"
match = {{ path_prefix = "/test.Broken" }}
breaker = {{ minimum_calls = 2, failure_rate_percent = 50, open_for = "1m" }}

[[upstreams]]
name = "grpc"
protocol = "http2"
endpoints = ["{upstream}"]

[[upstreams]]
name = "empty"
protocol = "http2"

[[upstreams]]
name = "dead"
protocol = "http2"
endpoints = ["127.0.0.1:1"]
"#
    )
}

type Client = tonic::client::Grpc<tonic::transport::Channel>;

async fn connect(base: &str) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(base.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

async fn unary(client: &mut Client, path: &'static str, req: Request<Msg>) -> Result<Msg, Status> {
    client
        .ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    client
        .unary(
            req,
            http::uri::PathAndQuery::from_static(path),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .map(Response::into_inner)
}

#[tokio::test]
async fn all_four_call_kinds_work_through_the_gateway() {
    let up = grpc_upstream().await;
    let (gw, base) = start(&config(up)).await;
    let mut client = connect(&base).await;

    let reply = unary(&mut client, "/test.Echo/Unary", Request::new(msg("hi", 1)))
        .await
        .unwrap();
    assert_eq!(reply, msg("echo hi", 2));

    client.ready().await.unwrap();
    let mut stream = client
        .server_streaming(
            Request::new(msg("", 5)),
            http::uri::PathAndQuery::from_static("/test.Echo/ServerStream"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        got.push(m.n);
    }
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
    // grpc-status 0 arrived as a trailer, or message() would have failed.
    assert!(stream.trailers().await.unwrap().is_some());

    client.ready().await.unwrap();
    let outbound = futures::stream::iter((1..=10).map(|i| msg("part", i)));
    let reply = client
        .client_streaming(
            Request::new(outbound),
            http::uri::PathAndQuery::from_static("/test.Echo/ClientStream"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply, msg("got 10", 55));

    // Bidi, interleaved: each reply is read before the next message is
    // sent, so nothing in the path may buffer a whole stream.
    client.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
    let mut replies = client
        .streaming(
            Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            http::uri::PathAndQuery::from_static("/test.Echo/Bidi"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    for (i, word) in ["alpha", "beta", "gamma"].iter().enumerate() {
        tx.send(msg(word, i as u32)).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .expect("a bidi reply must come before the stream ends")
            .unwrap()
            .unwrap();
        assert_eq!(reply, msg(&word.to_uppercase(), i as u32 * 2));
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn server_statuses_and_trailing_metadata_pass_through_intact() {
    let up = grpc_upstream().await;
    let (gw, base) = start(&config(up)).await;
    let mut client = connect(&base).await;

    // A trailers-only error with a percent-encoded message and metadata.
    let status = unary(
        &mut client,
        "/test.Echo/Unary",
        Request::new(msg("fail", 0)),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "bad input: ünïcode & spaces");
    assert_eq!(status.metadata().get("x-failure-id").unwrap(), "42");

    // An error after data frames travels in real trailers.
    client.ready().await.unwrap();
    let mut stream = client
        .server_streaming(
            Request::new(msg("abort", 2)),
            http::uri::PathAndQuery::from_static("/test.Echo/ServerStream"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().n, 0);
    assert_eq!(stream.message().await.unwrap().unwrap().n, 1);
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(status.message(), "stopped here");
    assert_eq!(status.metadata().get("x-custom-trailer").unwrap(), "kept");

    // The service's own UNIMPLEMENTED for an unknown method on a routed path.
    let status = unary(&mut client, "/test.Echo/Nope", Request::new(msg("", 0)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(status.message(), "no such method");
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_gateways_own_errors_are_grpc_statuses() {
    let up = grpc_upstream().await;
    let (gw, base) = start(&config(up)).await;
    let mut client = connect(&base).await;

    // A route timeout: DEADLINE_EXCEEDED, long before the service answers.
    let mut req = Request::new(msg("slow", 0));
    req.metadata_mut()
        .insert("x-route", "slow".parse().unwrap());
    let started = std::time::Instant::now();
    let status = unary(&mut client, "/test.Echo/Unary", req)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // No endpoint to send to: UNAVAILABLE.
    let status = unary(&mut client, "/test.Empty/Call", Request::new(msg("", 0)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // Connection refused, then the breaker opens: UNAVAILABLE both ways,
    // the second saying calls are paused.
    let mut messages = Vec::new();
    for _ in 0..4 {
        let status = unary(&mut client, "/test.Broken/Call", Request::new(msg("", 0)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        messages.push(status.message().to_owned());
    }
    assert!(
        messages.last().unwrap().contains("paused"),
        "breaker never opened: {messages:?}"
    );

    // No route: UNIMPLEMENTED, as gRPC maps HTTP 404 and as a server
    // answers an unknown method.
    let status = unary(&mut client, "/other.Service/Call", Request::new(msg("", 0)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");

    // The connection survived every error: a normal call still works.
    let reply = unary(&mut client, "/test.Echo/Unary", Request::new(msg("ok", 0)))
        .await
        .unwrap();
    assert_eq!(reply.text, "echo ok");
    gw.shutdown(Duration::from_secs(1)).await;
}
