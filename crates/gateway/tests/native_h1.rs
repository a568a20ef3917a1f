//! The native HTTP/1.1 engine over raw sockets on both sides: a client that
//! writes bytes, and an upstream that answers with exactly the bytes a test
//! scripts — pipelining, bodies in pieces, chunked and close-delimited
//! responses, interim responses, `HEAD`, pooled connections the upstream
//! closed, hostile upstream responses, and the hand-over to hyper.
mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a scripted upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    head: String,
    body: Vec<u8>,
}

/// An upstream that answers each request with the bytes `respond` returns,
/// closing the connection after it when the flag says so.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    seen: Arc<parking_lot::Mutex<Vec<Seen>>>,
}

type Respond = dyn Fn(&Seen) -> (Vec<u8>, bool) + Send + Sync;

async fn scripted(respond: impl Fn(&Seen) -> (Vec<u8>, bool) + Send + Sync + 'static) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let respond: Arc<Respond> = Arc::new(respond);
    let (c, s) = (connections.clone(), seen.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut io, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let (respond, seen) = (respond.clone(), s.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(request) = read_request(&mut io, &mut buf).await else {
                        return;
                    };
                    seen.lock().push(request.clone());
                    let (bytes, close) = respond(&request);
                    if io.write_all(&bytes).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    Scripted {
        addr,
        connections,
        seen,
    }
}

/// Reads one request (head and `Content-Length` body) from `io`.
async fn read_request(io: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                read_more(io, buf).await?;
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return Some(Seen { head, body });
        }
        read_more(io, buf).await?;
    }
}

async fn read_more(io: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match io.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// A gateway config with listener "main", route "r" and upstream "u" at
/// `upstream`, with extra keys for the listener and the route.
fn config(upstream: SocketAddr, listener_extra: &str, route_extra: &str) -> String {
    format!(
        r#"
        [[listeners]]
        name = "main"
        bind = "127.0.0.1:0"
        {listener_extra}
        [[routes]]
        name = "r"
        upstream = "u"
        {route_extra}
        [[upstreams]]
        name = "u"
        endpoints = ["{upstream}"]
        "#
    )
}

async fn gateway_to(
    upstream: SocketAddr,
    route_extra: &str,
) -> (trellis_gateway::GatewayHandle, SocketAddr) {
    let (gw, _) = start(&config(upstream, "", route_extra)).await;
    let addr = gw.local_addr("main").unwrap();
    (gw, addr)
}

/// Writes `raw` and reads until the gateway closes the connection (5 s at most).
async fn roundtrip(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    read_all(&mut s).await
}

async fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn statuses(resp: &str) -> Vec<&str> {
    resp.match_indices("HTTP/1.1 ")
        .map(|(i, _)| &resp[i + 9..i + 12])
        .collect()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let up = scripted(|r| {
        let path = r.head.split(' ').nth(1).unwrap_or("?").to_owned();
        (ok(&path), false)
    })
    .await;
    let (gw, addr) = gateway_to(up.addr, "").await;
    let resp = roundtrip(
        addr,
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\nGET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let bodies: Vec<_> = resp
        .split("\r\n\r\n")
        .skip(1)
        .map(|b| b.get(..b.find('H').unwrap_or(b.len())).unwrap_or(b))
        .collect();
    assert_eq!(statuses(&resp), ["200", "200", "200"], "{resp}");
    assert_eq!(bodies, ["/one", "/two", "/three"], "{resp}");
    assert!(resp.contains("connection: close"), "{resp}");
    // One upstream connection carried all three.
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_body_sent_in_pieces_reaches_the_upstream_whole() {
    let up = scripted(|r| (ok(&r.body.len().to_string()), false)).await;
    let (gw, addr) = gateway_to(up.addr, "").await;
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    for piece in body.chunks(30_000) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.write_all(b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let resp = read_all(&mut s).await;
    assert_eq!(statuses(&resp), ["200", "200"], "{resp}");
    assert!(resp.contains("\r\n\r\n200000"), "{resp}");
    let seen = up.seen.lock().clone();
    assert_eq!(seen[0].body, body, "the body arrived intact");
    assert!(
        seen[0].head.contains("content-length: 200000"),
        "{}",
        seen[0].head
    );
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn chunked_responses_pass_through_and_the_upstream_connection_is_reused() {
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n".to_vec();
    let up = scripted(move |_| (chunked.clone(), false)).await;
    let (gw, addr) = gateway_to(up.addr, "").await;
    let resp = roundtrip(
        addr,
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&resp), ["200", "200"], "{resp}");
    assert_eq!(
        resp.matches("transfer-encoding: chunked\r\n").count(),
        2,
        "{resp}"
    );
    assert_eq!(
        resp.matches("5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n")
            .count(),
        2,
        "the chunks pass byte for byte: {resp}"
    );
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_response_without_length_is_relayed_until_the_upstream_closes() {
    let up = scripted(|_| {
        (
            b"HTTP/1.1 200 OK\r\n\r\nall of this, then close".to_vec(),
            true,
        )
    })
    .await;
    let (gw, addr) = gateway_to(up.addr, "").await;
    // The client's connection closes too: nothing else marks the body's end.
    let resp = roundtrip(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /never HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&resp), ["200"], "{resp}");
    assert!(resp.contains("connection: close\r\n"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nall of this, then close"), "{resp}");
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn interim_responses_are_passed_on_and_head_responses_have_no_body() {
    let up = scripted(|r| {
        if r.head.starts_with("HEAD") {
            // A length, but no body: a HEAD response never has one.
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n".to_vec(),
                false,
            )
        } else {
            let mut out =
                b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n".to_vec();
            out.extend_from_slice(&ok("done"));
            (out, false)
        }
    })
    .await;
    let (gw, addr) = gateway_to(up.addr, "").await;
    let resp = roundtrip(
        addr,
        b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&resp), ["200", "103", "200"], "{resp}");
    assert!(resp.contains("Link: </style.css>; rel=preload"), "{resp}");
    assert!(resp.ends_with("\r\n\r\ndone"), "{resp}");
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn pooled_connections_the_upstream_closed_are_replaced_without_failing_a_request() {
    // The upstream closes every connection right after its response,
    // without saying so: the pool must notice, or resend on a new one.
    let up = scripted(|_| (ok("fine"), true)).await;
    let (gw, addr) = gateway_to(up.addr, "").await;
    let client = client();
    for i in 0..30 {
        let resp = client
            .get(format!("http://{addr}/{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(resp.text().await.unwrap(), "fine");
        if i % 3 == 0 {
            // Sometimes give the FIN time to arrive before the next checkout.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(
        up.seen.lock().len(),
        30,
        "each request reached the upstream once"
    );
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn hostile_upstream_responses_are_502_and_the_client_connection_survives() {
    let bad: [&[u8]; 4] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    ];
    let n = Arc::new(AtomicUsize::new(0));
    let up = scripted(move |r| {
        if r.head.starts_with("GET /good") {
            return (ok("good"), false);
        }
        (
            bad[n.fetch_add(1, Ordering::SeqCst) % bad.len()].to_vec(),
            true,
        )
    })
    .await;
    let (gw, addr) = gateway_to(up.addr, "").await;
    for _ in 0..4 {
        let resp = roundtrip(
            addr,
            b"GET /bad HTTP/1.1\r\nHost: x\r\n\r\nGET /good HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(statuses(&resp), ["502", "200"], "{resp}");
        assert!(resp.contains("\"code\":\"upstream_error\""), "{resp}");
        assert!(
            !resp.contains("Transfer-Encoding") && !resp.contains("Upgrade"),
            "{resp}"
        );
        assert!(resp.ends_with("good"), "{resp}");
    }
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_body_cut_short_by_the_upstream_closes_the_client_connection() {
    let up = scripted(|_| {
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part".to_vec(),
            true,
        )
    })
    .await;
    let (gw, addr) = gateway_to(up.addr, "").await;
    let resp = roundtrip(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    // The head went out with the promise of 100 bytes; the client sees the
    // connection end early rather than a second response spliced in.
    assert_eq!(statuses(&resp), ["200"], "{resp}");
    assert!(resp.ends_with("only part"), "{resp}");
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn requests_the_engine_leaves_to_hyper_continue_on_the_same_connection() {
    let up = scripted(|r| (ok(&format!("{} bytes", r.body.len())), false)).await;
    let (gw, addr) = gateway_to(up.addr, "").await;
    // Native, then one with an `Upgrade` field (hyper's), then a plain one,
    // which hyper serves too: the connection is hyper's from then on.
    let resp = roundtrip(
        addr,
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nUpgrade: foo\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&resp), ["200", "200", "200"], "{resp}");
    let seen = up.seen.lock().clone();
    let paths: Vec<_> = seen
        .iter()
        .map(|s| s.head.split(' ').nth(1).unwrap_or("?"))
        .collect();
    assert_eq!(paths, ["/a", "/b", "/c"]);
    assert_eq!(seen[1].body, b"abc");
    assert!(
        !seen[1].head.to_ascii_lowercase().contains("upgrade"),
        "{}",
        seen[1].head
    );
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_body_is_not_held_against_the_endpoint() {
    let up = scripted(|r| (ok(&r.body.len().to_string()), false)).await;
    let (gw, addr) = gateway_to(up.addr, "").await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nonly a little")
        .await
        .unwrap();
    drop(s);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let resp = client()
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let upstream = gw.upstream("u").unwrap();
    let endpoint = upstream.endpoints().endpoints()[0].clone();
    assert_eq!(
        endpoint.outstanding(),
        0,
        "no attempt is left counted in flight"
    );
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_listener_with_workers_serves_on_threads_of_its_own_and_drains_them() {
    let up = scripted(|_| (ok("w"), false)).await;
    let cfg = |workers: usize| config(up.addr, &format!("workers = {workers}"), "");
    let (gw, _) = start(&cfg(2)).await;
    let addr = gw.local_addr("main").unwrap();
    assert_ne!(
        addr.port(),
        0,
        "the workers share the port the first one picked"
    );
    let calls = (0..64).map(|i| async move {
        // A connection each, so both workers' sockets take some.
        let c = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let resp = c.get(format!("http://{addr}/{i}")).send().await.unwrap();
        (resp.status(), resp.text().await.unwrap())
    });
    for (status, body) in futures::future::join_all(calls).await {
        assert_eq!((status.as_u16(), body.as_str()), (200, "w"));
    }
    // The thread count is part of how the listener is bound: not reloadable.
    let err = gw.reload(parse(&cfg(3))).await.unwrap_err();
    assert!(err.to_string().contains("workers"), "{err}");
    // Shutdown waits for the worker threads, which then stop listening.
    tokio::time::timeout(Duration::from_secs(5), gw.shutdown(Duration::from_secs(1)))
        .await
        .expect("workers drain and end");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "nothing listens after shutdown"
    );
}

#[tokio::test]
async fn a_request_on_an_idle_connection_after_a_reload_gets_the_new_config() {
    let up = scripted(|_| (ok("served"), false)).await;
    let cfg = |prefix: &str| {
        config(
            up.addr,
            "",
            &format!("match = {{ path_prefix = \"{prefix}\" }}"),
        )
    };
    let (gw, _) = start(&cfg("/x")).await;
    let addr = gw.local_addr("main").unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert!(get_x(&mut s).await.starts_with("HTTP/1.1 200"));
    // The connection idles, waiting for its next head, while the route goes.
    gw.reload(parse(&cfg("/elsewhere"))).await.unwrap();
    let resp = get_x(&mut s).await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    assert!(resp.contains("no_route"), "{resp}");
    gw.shutdown(Duration::from_secs(1)).await;
}

/// One `GET /x` on an open connection; the response as read in one go.
async fn get_x(s: &mut TcpStream) -> String {
    s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
