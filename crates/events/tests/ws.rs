//! WebSocket subscriptions over a real socket: catch-up then live with no gap
//! or duplicate, resume, type filters, client close, and 400s before the upgrade.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::ev;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};
use trellis_events::{EventStore, ExpectedVersion};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn serve(es: &EventStore) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = trellis_events::http::router(es.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn connect(addr: SocketAddr, path: &str) -> Client {
    let (ws, resp) = connect_async(format!("ws://{addr}{path}")).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

/// The next event frame, parsed; pings are answered by the client library.
async fn next_event(ws: &mut Client) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no event within 10 s")
            .expect("socket ended")
            .unwrap();
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn append(es: &EventStore, stream: &str, ty: &str, n: u64) {
    es.append(stream, ExpectedVersion::Any, vec![ev(ty, n)])
        .await
        .unwrap();
}

async fn catch_up_then_live_without_gap_or_duplicate(es: &EventStore) {
    for n in 0..30 {
        append(es, "order-1", "Placed", n).await;
    }
    let addr = serve(es).await;
    let mut ws = connect(addr, "/streams/order-1/ws").await;
    // Appends race the catch-up, so the switch to live happens somewhere in them.
    let writer = {
        let es = es.clone();
        tokio::spawn(async move {
            for n in 30..60 {
                append(&es, "order-1", "Placed", n).await;
                // Events on another stream must not leak into this subscription.
                append(&es, "other-1", "Placed", n).await;
            }
        })
    };
    let mut last_position = 0;
    for version in 0..60u64 {
        let e = next_event(&mut ws).await;
        assert_eq!(e["stream"], "order-1");
        assert_eq!(e["version"], version, "gap or duplicate at {e}");
        assert_eq!(e["data"]["n"], version);
        let position = e["position"].as_u64().unwrap();
        assert!(position > last_position, "positions must increase: {e}");
        last_position = position;
    }
    writer.await.unwrap();
    // Nothing more than what was appended to this stream.
    let extra = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    assert!(extra.is_err(), "unexpected frame {extra:?}");
}

async fn resume_after_a_position_and_from_inclusive(es: &EventStore) {
    for n in 0..5 {
        append(es, "acct-1", "Deposited", n).await;
    }
    let addr = serve(es).await;
    let mut ws = connect(addr, "/streams/$all/ws").await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next_event(&mut ws).await["position"].as_u64().unwrap());
    }
    ws.close(None).await.unwrap();
    // Reconnect with the last position received: the rest, once each, then live.
    let mut ws = connect(addr, &format!("/streams/$all/ws?after={}", seen[2])).await;
    let e = next_event(&mut ws).await;
    assert_eq!(e["position"], seen[2] + 1);
    assert_eq!(e["data"]["n"], 3);
    assert_eq!(next_event(&mut ws).await["data"]["n"], 4);
    append(es, "acct-1", "Deposited", 5).await;
    assert_eq!(next_event(&mut ws).await["data"]["n"], 5);
    // `from` is inclusive, as for reads and SSE.
    let mut ws = connect(addr, &format!("/streams/$all/ws?from={}", seen[1])).await;
    assert_eq!(next_event(&mut ws).await["position"], seen[1]);
    // `from=end`: only what is appended afterwards.
    let mut ws = connect(addr, "/categories/acct/ws?from=end").await;
    append(es, "acct-2", "Opened", 6).await;
    let e = next_event(&mut ws).await;
    assert_eq!(
        (e["stream"].as_str(), e["data"]["n"].as_u64()),
        (Some("acct-2"), Some(6))
    );
}

async fn type_filter_keeps_only_named_types(es: &EventStore) {
    for n in 0..12 {
        let ty = ["Placed", "Paid", "Shipped"][n as usize % 3];
        append(es, &format!("order-{}", n % 2), ty, n).await;
    }
    let addr = serve(es).await;
    let mut ws = connect(addr, "/categories/order/ws?type=Paid&type=Shipped").await;
    let mut got = Vec::new();
    for _ in 0..8 {
        let e = next_event(&mut ws).await;
        assert_ne!(e["eventType"], "Placed", "{e}");
        got.push(e["data"]["n"].as_u64().unwrap());
    }
    assert_eq!(got, vec![1, 2, 4, 5, 7, 8, 10, 11]);
    append(es, "order-9", "Placed", 12).await;
    append(es, "order-9", "Paid", 13).await;
    assert_eq!(next_event(&mut ws).await["data"]["n"], 13);
}

both_backends!(
    catch_up_then_live_without_gap_or_duplicate,
    resume_after_a_position_and_from_inclusive,
    type_filter_keeps_only_named_types,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_ends_the_subscription_with_a_close_handshake() {
    let f = common::sqlite().await;
    append(&f.events, "feed-1", "Posted", 0).await;
    let addr = serve(&f.events).await;
    let mut ws = connect(addr, "/streams/feed-1/ws").await;
    assert_eq!(next_event(&mut ws).await["data"]["n"], 0);
    ws.send(Message::Close(None)).await.unwrap();
    // The server answers the close and ends the connection: no further events.
    append(&f.events, "feed-1", "Posted", 1).await;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("server did not finish the close handshake")
        {
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(Message::Text(t))) => panic!("event after close: {t}"),
            Some(Ok(_)) => continue,
            Some(Err(tungstenite::Error::ConnectionClosed)) => break,
            Some(Err(e)) => panic!("{e}"),
        }
    }
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_refused_with_400_before_the_upgrade() {
    let f = common::sqlite().await;
    let addr = serve(&f.events).await;
    for (path, needle) in [
        ("/streams/s-1/ws?from=yesterday", "from=yesterday"),
        ("/streams/s-1/ws?after=-3", "after=-3"),
        ("/streams/s-1/ws?after=3&from=2", "either `from` or `after`"),
        ("/streams/s-1/ws?direction=backward", "direction"),
        ("/streams/s-1/ws?bogus=1", "bogus"),
        ("/categories/a%00b/ws", ""),
    ] {
        match connect_async(format!("ws://{addr}{path}")).await {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 400, "{path}");
                let body: Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
                assert!(
                    body["detail"].as_str().unwrap().contains(needle),
                    "{path}: {body}"
                );
            }
            other => panic!("{path}: expected a 400, got {:?}", other.map(|(_, r)| r)),
        }
    }
    // A plain GET (no upgrade headers) is told what is wrong, not left hanging.
    let resp = reqwest_like_get(addr, "/streams/s-1/ws").await;
    assert!(resp.starts_with("HTTP/1.1 4"), "{resp}");
    assert!(resp.contains("not_a_websocket"), "{resp}");
    f.cleanup().await;
}

/// A bare HTTP/1.1 GET over TCP, returning the response head and body as text.
async fn reqwest_like_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
