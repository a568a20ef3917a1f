//! Hostile requests over a raw socket: smuggling attempts, oversized heads,
//! over-long targets, oversized bodies and slowloris.
mod common;

use common::*;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn gateway(
    extra_limits: &str,
) -> (trellis_gateway::GatewayHandle, std::net::SocketAddr, Echo) {
    let a = echo("a").await;
    let cfg = format!(
        r#"
        [[listeners]]
        name = "main"
        bind = "127.0.0.1:0"
        limits = {{ max_uri_bytes = 256, max_body_bytes = 1000, max_header_bytes = 8192 {extra_limits} }}
        [[routes]]
        name = "r"
        upstream = "a"
        [[upstreams]]
        name = "a"
        endpoints = ["{}"]
        "#,
        a.addr
    );
    let (gw, _) = start(&cfg).await;
    let addr = gw.local_addr("main").unwrap();
    (gw, addr, a)
}

/// Sends raw bytes and reads until the server closes (bounded at 5 s).
async fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_line(resp: &str) -> &str {
    resp.lines().next().unwrap_or("")
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_and_smuggles_nothing() {
    let (gw, addr, a) = gateway("").await;
    for raw in [
        &b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        // Either order of the two headers.
        &b"POST /first HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        // Behind a clean request on the same connection.
        &b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\nPOST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"[..],
    ] {
        let before = a.hits.load(Ordering::SeqCst);
        let resp = exchange(addr, raw).await;
        // Bodies here end without a newline, so find status lines by their prefix.
        let statuses: Vec<&str> = resp
            .split("HTTP/1.1 ")
            .skip(1)
            .map(|rest| rest.get(..3).unwrap_or(rest))
            .collect();
        let clean_first = raw.starts_with(b"GET /ok");
        let want: &[&str] = if clean_first { &["200", "400"] } else { &["400"] };
        assert_eq!(statuses, want, "{resp}");
        assert!(resp.contains("\"code\":\"bad_request\""), "{resp}");
        assert!(!resp.contains("smuggled"), "{resp}");
        // Only the clean request reached the upstream.
        assert_eq!(a.hits.load(Ordering::SeqCst) - before, usize::from(clean_first));
    }
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_repeated_content_length_is_refused_even_when_the_values_agree() {
    let (gw, addr, a) = gateway("").await;
    let resp = exchange(
        addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert!(status_line(&resp).contains(" 400"), "{resp}");
    assert_eq!(a.hits.load(Ordering::SeqCst), 0);
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn conflicting_content_lengths_are_rejected() {
    let (gw, addr, a) = gateway("").await;
    let resp = exchange(
        addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    )
    .await;
    assert!(status_line(&resp).contains(" 400"), "{resp}");
    let resp = exchange(
        addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!",
    )
    .await;
    assert!(status_line(&resp).contains(" 400"), "{resp}");
    let resp = exchange(
        addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    )
    .await;
    assert!(
        status_line(&resp).contains(" 400"),
        "TE without chunked: {resp}"
    );
    assert_eq!(
        a.hits.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn oversized_heads_and_targets_are_refused() {
    let (gw, addr, a) = gateway("").await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let resp = exchange(addr, big.as_bytes()).await;
    assert!(
        status_line(&resp).contains(" 431"),
        "{}",
        status_line(&resp)
    );
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "u".repeat(300)
    );
    let resp = exchange(addr, long.as_bytes()).await;
    assert!(status_line(&resp).contains(" 414"), "{resp}");
    assert!(resp.contains("\"code\":\"uri_too_long\""), "{resp}");
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let resp = exchange(
        addr,
        format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(
        status_line(&resp).contains(" 431"),
        "too many headers: {}",
        status_line(&resp)
    );
    assert_eq!(a.hits.load(Ordering::SeqCst), 0);
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let (gw, addr, _a) = gateway("").await;
    let declared = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n{}",
        "b".repeat(5000)
    );
    let resp = exchange(addr, declared.as_bytes()).await;
    assert!(status_line(&resp).contains(" 413"), "{resp}");
    assert!(
        resp.contains("application/problem+json") && resp.contains("payload_too_large"),
        "{resp}"
    );

    let chunk = "c".repeat(600);
    let chunked = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let resp = exchange(addr, chunked.as_bytes()).await;
    assert!(status_line(&resp).contains(" 413"), "{resp}");

    let small = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let resp = exchange(addr, small.as_bytes()).await;
    assert!(
        status_line(&resp).contains(" 200") && resp.contains("\"body_len\":5"),
        "{resp}"
    );
    gw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let (gw, addr, a) = gateway(", header_read_timeout = \"300ms\"").await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    // A slowloris client never finishes its head; the gateway must hang up.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if s.write_all(b"X-Drip: 1\r\n").await.is_err() {
                return;
            }
            let mut buf = [0u8; 512];
            match tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "connection still open after 5 s");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(a.hits.load(Ordering::SeqCst), 0);
    gw.shutdown(Duration::from_secs(1)).await;
}
