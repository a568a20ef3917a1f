//! WebSocket subscriptions: the same catch-up-then-live feed as the SSE
//! endpoints, for clients that want a bidirectional socket (browsers behind
//! proxies that buffer SSE, or runtimes without an EventSource).
//!
//! Each event is one text frame holding the same JSON as a read returns. The
//! query is validated before the upgrade, so a bad parameter is an ordinary
//! `400` problem rather than a socket that opens and closes. The feed is
//! pull-based: the next event is read from the subscription only once the
//! previous frame has been flushed to the socket, so a slow client holds back
//! its own subscription instead of growing a buffer on the server; a client
//! that accepts nothing for [`SEND_TIMEOUT`] is disconnected with close code
//! 1008. The server pings every [`PING_INTERVAL`] and gives up on a peer that
//! has sent nothing (not even a pong) for two intervals.

use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use tokio::time::{interval_at, timeout, Instant, MissedTickBehavior};

use super::{read_query, Problem, Result, Tenant};
use crate::{EventStore, StartFrom, SubscriptionOptions, SubscriptionTarget};

/// How often the server pings an idle client.
pub const PING_INTERVAL: Duration = Duration::from_secs(15);
/// How long one frame may wait for a client that is not reading.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

type QueryResult =
    std::result::Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

/// `GET /streams/{name}/ws` (`$all` for every stream).
pub(super) async fn ws_stream(
    Tenant(store): Tenant,
    Path(name): Path<String>,
    query: QueryResult,
    upgrade: std::result::Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response> {
    let target = if name == "$all" {
        SubscriptionTarget::All
    } else {
        crate::validate_stream_name(&name).map_err(Problem::from)?;
        SubscriptionTarget::Stream(name)
    };
    accept(store, target, query, upgrade)
}

/// `GET /categories/{category}/ws`.
pub(super) async fn ws_category(
    Tenant(store): Tenant,
    Path(category): Path<String>,
    query: QueryResult,
    upgrade: std::result::Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response> {
    crate::validate_stream_name(&category).map_err(Problem::from)?;
    accept(
        store,
        SubscriptionTarget::Category(category),
        query,
        upgrade,
    )
}

fn accept(
    store: EventStore,
    target: SubscriptionTarget,
    query: QueryResult,
    upgrade: std::result::Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response> {
    let opts = options(target, query)?;
    let upgrade = upgrade.map_err(|e| {
        Problem::new(
            e.status(),
            "not_a_websocket",
            "Not a WebSocket handshake",
            e.body_text(),
        )
    })?;
    Ok(upgrade
        .on_upgrade(move |socket| feed(socket, store, opts))
        .into_response())
}

/// The subscription a query asks for: `from` (first position, inclusive, or
/// `start`/`end`, as for SSE), `after` (resume after the last position seen,
/// like SSE's `Last-Event-ID`) and `type`.
fn options(target: SubscriptionTarget, query: QueryResult) -> Result<SubscriptionOptions> {
    let Query(pairs) = query.map_err(|e| Problem::bad_request("invalid_query", e.body_text()))?;
    let mut after = None;
    let mut rest = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        match key.as_str() {
            "after" => {
                after = Some(value.parse::<u64>().map_err(|_| {
                    Problem::bad_request(
                        "invalid_query",
                        format!(
                            "`after={}` is not a position",
                            value.chars().take(40).collect::<String>()
                        ),
                    )
                })?)
            }
            "direction" | "limit" | "mode" => {
                return Err(Problem::bad_request(
                    "invalid_query",
                    format!("`{key}` does not apply to a subscription, which is always forward"),
                ))
            }
            _ => rest.push((key, value)),
        }
    }
    let q = read_query(Ok(Query(rest)))?;
    if after.is_some() && (q.from.is_some() || q.from_end) {
        return Err(Problem::bad_request(
            "invalid_query",
            "give either `from` or `after`, not both",
        ));
    }
    let from = match (after, q.from_end, q.from) {
        (Some(p), _, _) => StartFrom::After(p),
        (None, true, _) => StartFrom::End,
        (None, false, Some(p)) => StartFrom::After(p.saturating_sub(1)),
        (None, false, None) => StartFrom::Beginning,
    };
    let mut opts = SubscriptionOptions::new(target, from);
    opts.types = q.types;
    Ok(opts)
}

/// Why the feed stopped, for the close frame.
enum End {
    /// The client closed, went away or broke the protocol: nothing more to send.
    Client,
    /// Close with this code and reason.
    Close(u16, String),
}

async fn feed(socket: WebSocket, store: EventStore, opts: SubscriptionOptions) {
    let (mut sink, mut incoming) = socket.split();
    let mut events = std::pin::pin!(store.subscribe(opts));
    let mut ping = interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let end = loop {
        tokio::select! {
            msg = incoming.next() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break End::Client,
                // Pongs and anything else prove the peer is alive; the feed is one-way.
                Some(Ok(_)) => last_heard = Instant::now(),
            },
            next = events.next() => {
                let frame = match next {
                    Some(Ok(e)) => match serde_json::to_string(&e) {
                        Ok(text) => Message::Text(text.into()),
                        Err(e) => break End::Close(close_code::ERROR, e.to_string()),
                    },
                    Some(Err(e)) => {
                        let p = Problem::from(e);
                        break End::Close(close_code::ERROR, format!("{}: {}", p.code, p.detail));
                    }
                    None => break End::Close(close_code::AWAY, "the event store is closing".into()),
                };
                match timeout(SEND_TIMEOUT, sink.send(frame)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break End::Client,
                    Err(_) => break End::Close(close_code::POLICY, "slow consumer: not reading".into()),
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > 2 * PING_INTERVAL {
                    break End::Close(close_code::POLICY, "no pong: peer unresponsive".into());
                }
                if timeout(SEND_TIMEOUT, sink.send(Message::Ping(Default::default()))).await.map_or(true, |r| r.is_err()) {
                    break End::Client;
                }
            }
        }
    };
    match end {
        // The library has queued the reply to a client's close; flushing sends it,
        // completing the handshake instead of resetting the connection.
        End::Client => {
            let _ = timeout(Duration::from_secs(5), sink.close()).await;
        }
        End::Close(code, reason) => {
            tracing::debug!(code, %reason, "closing event subscription socket");
            let frame = CloseFrame {
                code,
                reason: truncate(reason, 123).into(),
            };
            let _ = timeout(
                Duration::from_secs(5),
                sink.send(Message::Close(Some(frame))),
            )
            .await;
        }
    }
}

/// A close reason may hold at most 123 bytes; cut on a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}
