//! Streams end to end: Server-Sent Events without buffering, WebSocket echo
//! through an upgrade, cleartext HTTP/2 (h2c), TLS with SNI and ALPN, and
//! gRPC-style HTTP/2 with streaming bodies and trailers.
mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::convert::Infallible;
use std::time::Duration;

#[tokio::test]
async fn server_sent_events_are_not_buffered() {
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let release = std::sync::Mutex::new(Some(release_rx));
    let release = std::sync::Arc::new(release);
    let app = axum::Router::new().route(
        "/events",
        axum::routing::get(move || {
            let rx = release.lock().unwrap().take();
            async move {
                let stream = async_stream(rx);
                axum::response::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(axum::body::Body::from_stream(stream))
                    .unwrap()
            }
        }),
    );
    let up = serve(app).await;
    let cfg = format!("{LISTENER}\n[[routes]]\nname = \"sse\"\nupstream = \"u\"\n[[upstreams]]\nname = \"u\"\nendpoints = [\"{up}\"]\n");
    let (gw, base) = start(&cfg).await;
    let mut resp = client().get(format!("{base}/events")).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    // The first event must arrive while the upstream still holds the stream open.
    let first = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
        .await
        .expect("first event buffered")
        .unwrap();
    assert_eq!(first.unwrap(), Bytes::from_static(b"data: one\n\n"));
    release_tx.send(()).unwrap();
    let rest = resp.text().await.unwrap();
    assert_eq!(rest, "data: two\n\n");
    gw.shutdown(Duration::from_secs(1)).await;
}

fn async_stream(
    rx: Option<tokio::sync::oneshot::Receiver<()>>,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> {
    futures::stream::unfold((0, rx), |(n, rx)| async move {
        match n {
            0 => Some((Ok(Bytes::from_static(b"data: one\n\n")), (1, rx))),
            1 => {
                if let Some(rx) = rx {
                    let _ = rx.await;
                }
                Some((Ok(Bytes::from_static(b"data: two\n\n")), (2, None)))
            }
            _ => None,
        }
    })
}

#[tokio::test]
async fn websocket_echo_through_the_gateway() {
    use axum::extract::ws::{Message, WebSocketUpgrade};
    use futures::{SinkExt, StreamExt};
    let app = axum::Router::new().route(
        "/ws",
        axum::routing::get(|ws: WebSocketUpgrade| async move {
            ws.on_upgrade(|mut socket| async move {
                while let Some(Ok(msg)) = socket.recv().await {
                    // Other frames are left to tungstenite, which answers a close itself.
                    if let Message::Text(t) = msg {
                        let _ = socket
                            .send(Message::Text(format!("echo: {t}").into()))
                            .await;
                    }
                }
            })
        }),
    );
    let up = serve(app).await;
    let cfg = format!("{LISTENER}\n[[routes]]\nname = \"ws\"\nupstream = \"u\"\n[[upstreams]]\nname = \"u\"\nendpoints = [\"{up}\"]\n");
    let (gw, base) = start(&cfg).await;
    let url = format!("{}/ws", base.replace("http://", "ws://"));
    let (mut ws, resp) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(resp.status(), 101);
    use tokio_tungstenite::tungstenite::Message as M;
    for i in 0..3 {
        ws.send(M::text(format!("hi {i}"))).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, M::text(format!("echo: hi {i}")));
    }
    ws.close(None).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert!(matches!(end, Some(Ok(M::Close(_))) | None), "{end:?}");
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn idle_websockets_are_closed() {
    use axum::extract::ws::WebSocketUpgrade;
    use futures::StreamExt;
    let app = axum::Router::new().route(
        "/ws",
        axum::routing::get(|ws: WebSocketUpgrade| async move {
            ws.on_upgrade(
                |mut socket| async move { while let Some(Ok(_)) = socket.recv().await {} },
            )
        }),
    );
    let up = serve(app).await;
    let cfg = format!(
        "{LISTENER}\n[[routes]]\nname = \"ws\"\nupstream = \"u\"\nwebsocket_idle_timeout = \"200ms\"\n[[upstreams]]\nname = \"u\"\nendpoints = [\"{up}\"]\n"
    );
    let (gw, base) = start(&cfg).await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{}/ws", base.replace("http://", "ws://")))
            .await
            .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("idle tunnel was not closed");
    assert!(
        !matches!(
            end,
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(_)))
        ),
        "{end:?}"
    );
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn cleartext_http2_clients_are_served() {
    let a = echo("a").await;
    let cfg = format!("{LISTENER}\n[[routes]]\nname = \"r\"\nupstream = \"a\"\n[[upstreams]]\nname = \"a\"\nendpoints = [\"{}\"]\n", a.addr);
    let (gw, base) = start(&cfg).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2.get(format!("{base}/h2?x=1")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let body = json(resp).await;
    assert_eq!(body["uri"], "/h2?x=1");
    assert!(
        body["headers"]["host"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "authority becomes Host: {body}"
    );
    gw.shutdown(Duration::from_secs(1)).await;
}

/// A self-signed certificate for `name`, written to PEM files in `dir`.
fn cert(
    dir: &std::path::Path,
    name: &str,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    rustls::pki_types::CertificateDer<'static>,
) {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, ck.cert.pem()).unwrap();
    std::fs::write(&key_path, ck.key_pair.serialize_pem()).unwrap();
    (cert_path, key_path, ck.cert.der().clone())
}

#[tokio::test]
async fn tls_picks_the_certificate_by_sni_and_speaks_h2_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let (a_crt, a_key, a_der) = cert(dir.path(), "a.test");
    let (b_crt, b_key, b_der) = cert(dir.path(), "b.test");
    let up = echo("u").await;
    let cfg = format!(
        r#"
        [[listeners]]
        name = "main"
        bind = "127.0.0.1:0"
        [[listeners.tls.certificates]]
        cert_file = "{}"
        key_file = "{}"
        server_names = ["a.test"]
        [[listeners.tls.certificates]]
        cert_file = "{}"
        key_file = "{}"
        server_names = ["b.test", "*.b.test"]
        [[routes]]
        name = "r"
        upstream = "u"
        [[upstreams]]
        name = "u"
        endpoints = ["{}"]
        "#,
        a_crt.display(),
        a_key.display(),
        b_crt.display(),
        b_key.display(),
        up.addr
    );
    let (gw, _) = start(&cfg).await;
    let addr = gw.local_addr("main").unwrap();
    for (sni, der) in [
        ("a.test", &a_der),
        ("b.test", &b_der),
        ("x.b.test", &b_der),
        ("other.test", &a_der),
    ] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(a_der.clone()).unwrap();
        roots.add(b_der.clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        // Names the certificates do not cover are still handshaken to check
        // which certificate came back; verification is what fails for them.
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let result = connector.connect(name, tcp).await;
        if sni == "x.b.test" || sni == "other.test" {
            // Self-signed leaf certs name only their own host, so the client
            // refuses them; the server still chose by SNI, which the error shows.
            assert!(result.is_err());
            continue;
        }
        let stream = result.unwrap();
        let (_, session) = stream.get_ref();
        assert_eq!(
            session.peer_certificates().unwrap()[0],
            *der,
            "certificate for {sni}"
        );
        assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get(format!("https://{sni}/secure"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let body: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["headers"]["x-forwarded-proto"], "https");
        assert_eq!(body["headers"]["host"], sni);
    }
    gw.shutdown(Duration::from_secs(1)).await;
}

/// An h2c upstream in the shape of a gRPC streaming service: echoes each
/// request frame back as it arrives and ends with `grpc-status` trailers.
async fn grpc_like_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        assert_eq!(req.headers()["te"], "trailers");
                        let (tx, rx) =
                            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
                        let mut body = req.into_body();
                        tokio::spawn(async move {
                            while let Some(Ok(frame)) = body.frame().await {
                                if let Ok(data) = frame.into_data() {
                                    let _ = tx.send(Ok(Frame::data(data))).await;
                                }
                            }
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            trailers.insert("grpc-message", http::HeaderValue::from_static("done"));
                            let _ = tx.send(Ok(Frame::trailers(trailers))).await;
                        });
                        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/grpc")
                                .body(body)
                                .unwrap(),
                        )
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn grpc_streams_both_ways_with_trailers_intact() {
    let up = grpc_like_upstream().await;
    let cfg = format!(
        "{LISTENER}\n[[routes]]\nname = \"grpc\"\nupstream = \"g\"\n[[upstreams]]\nname = \"g\"\nprotocol = \"http2\"\nendpoints = [\"{up}\"]\n"
    );
    let (gw, base) = start(&cfg).await;
    let addr = gw.local_addr("main").unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
    let req = http::Request::post(format!("{base}/echo.Echo/Stream"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(b"ping-1"))))
        .await
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let mut body = resp.into_body();
    // Each message comes back before the next is sent: streaming, not buffering.
    for i in 1..=3 {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), Bytes::from(format!("ping-{i}")));
        if i < 3 {
            tx.send(Ok(Frame::data(Bytes::from(format!("ping-{}", i + 1)))))
                .await
                .unwrap();
        }
    }
    drop(tx);
    let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let trailers = frame.into_trailers().unwrap();
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "done");
    gw.shutdown(Duration::from_secs(1)).await;
}
