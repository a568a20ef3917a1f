//! The native HTTP/1.1 engine: the gateway's fast path for plain HTTP/1.1
//! requests on cleartext listeners.
//!
//! # Why by hand
//!
//! hyper serves a request and hyper-util's pooled client sends it on, each
//! well and generally, but a proxy pays for both generalities: the request
//! crosses from the server's connection task to the client's connection task
//! through a channel and back, and the pool checks out through a lock, a
//! hash map and a waiter queue. Measured on the gateway benchmark that cost
//! about 20 µs of CPU per request against nginx's 7.5 (see
//! `docs/benchmarks/gateway.md`). A proxy on the request path only needs to
//! move a head it has rewritten and a body it does not touch, so this engine
//! does only that, as Pingora and nginx do: one task per client connection
//! reads a head, parses it with `httparse` (the parser hyper uses), runs the
//! same policies as the hyper path, writes the head to a pooled upstream
//! connection it owns for the exchange, and relays the response back.
//!
//! # What it takes, and what it hands to hyper
//!
//! Only plain requests: HTTP/1.1, origin-form target, no body or a
//! `Content-Length` body, no upgrade, no `Expect`, not gRPC, on a route
//! without auth or CORS (those policies work on hyper's types) whose
//! upstream speaks HTTP/1.1, on a listener without request tracing.
//! Everything else — and anything malformed — is handed to hyper together
//! with the bytes already read (which the framing guard replays), and hyper serves the connection
//! from that request on, with its own answers to bad input (`400`, `431`),
//! the framing guard, upgrades and HTTP/2. The engine therefore never has to
//! be more lenient or more clever than hyper: when in doubt it steps aside.

mod chunked;
mod exchange;
mod head;
mod outbound;
mod pool;
mod response;

pub(crate) use pool::{IdleConns, PoolLimits};

use crate::proxy::ClientConn;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use exchange::{Client, Next};
use head::{Fields, Scan};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// How a connection left the native engine.
pub(crate) enum Served {
    /// It is finished (closed by either side, or drained on shutdown).
    Done,
    /// hyper takes it from here, starting with these bytes.
    Hyper(TcpStream, Bytes),
}

/// Serves a client connection of listener `index` until it ends or meets a
/// request the engine leaves to hyper. Only for listeners where
/// [`crate::runtime::ListenerRuntime::native_h1`] holds.
pub(crate) async fn serve(
    mut io: TcpStream,
    conn: &ClientConn,
    index: usize,
    shared: Arc<ArcSwap<Runtime>>,
    mut stop: watch::Receiver<Option<Duration>>,
) -> Served {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut out = Vec::with_capacity(4 * 1024);
    let mut fields = Fields::default();
    // One timer for the connection, re-armed for each head.
    let wait = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(wait);
    loop {
        // The limits in force while the head arrives; the rest of the config
        // is loaded once it has, so a request sent after a reload on an idle
        // keep-alive connection is served by the new config.
        let (max_headers, max_head, header_timeout) = {
            let rt = shared.load();
            let l = &rt.listeners[index].limits;
            (l.max_headers, l.max_header_bytes, l.header_read_timeout)
        };
        wait.as_mut()
            .reset(tokio::time::Instant::now() + header_timeout);
        let shape = loop {
            if !buf.is_empty() {
                match head::scan(&buf, max_headers, max_head, &mut fields) {
                    Scan::Ready(shape) => break shape,
                    Scan::Partial => {}
                    Scan::Fallback => return Served::Hyper(io, buf.freeze()),
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(8 * 1024);
            }
            let idle = buf.is_empty();
            let read = tokio::select! {
                biased;
                r = io.read_buf(&mut buf) => r,
                // Like hyper's, the header timer also bounds an idle keep-alive wait.
                () = &mut wait => return Served::Done,
                _ = stop.changed(), if idle => return Served::Done,
            };
            match read {
                Ok(0) if buf.is_empty() => return Served::Done,
                // The client stopped mid-head: hyper says what it thinks of that.
                Ok(0) => return Served::Hyper(io, buf.freeze()),
                Ok(_) => {}
                Err(_) => return Served::Done,
            }
        };
        let rt = shared.load_full();
        let listener = &rt.listeners[index];
        let head = buf.split_to(shape.len).freeze();
        let Some(parts) = head::parts(&head, &fields) else {
            return to_hyper(io, head, buf);
        };
        let req = http::Request::from_parts(parts, ());
        let route = listener.table.find(&req).cloned();
        if route.as_ref().is_some_and(|r| !r.native_h1()) {
            return to_hyper(io, head, buf);
        }
        let (parts, ()) = req.into_parts();
        let client = Client {
            io: &mut io,
            buf: &mut buf,
            out: &mut out,
            stop: &stop,
        };
        let raw = exchange::RawHead {
            bytes: &head,
            fields: &fields,
        };
        let next = exchange::serve(listener, conn, route, parts, shape, raw, client).await;
        // The last view of the head's bytes: with it gone, the read buffer
        // owns its storage again and the next read reuses it.
        drop(head);
        if next == Next::Close || stop.borrow().is_some() {
            return Served::Done;
        }
    }
}

/// Hands the connection to hyper, replaying the head it has not seen.
fn to_hyper(io: TcpStream, head: Bytes, rest: BytesMut) -> Served {
    let mut pre = BytesMut::with_capacity(head.len() + rest.len());
    pre.extend_from_slice(&head);
    pre.extend_from_slice(&rest);
    Served::Hyper(io, pre.freeze())
}
