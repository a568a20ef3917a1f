//! One request through the native engine: the route's policies, attempts at
//! endpoints (with the route's retries and timeouts), and the response
//! relayed back — head rewritten, body passed through as it arrives.
//!
//! The policies, header hygiene, attempt bookkeeping and retry decisions are
//! the ones the hyper path uses (`crate::proxy`); only the wire work differs.

use super::chunked::ChunkedTracker;
use super::head::{self, Fields, RequestShape};
use super::outbound;
use super::pool::{self, PoolLimits, UpstreamConn};
use super::response::{self, BadResponse, Framing, ResponseEdits, ResponseHead};
use crate::proxy::{self, headers, Attempt, ClientConn, GatewayError};
use crate::route::CompiledRoute;
use crate::runtime::ListenerRuntime;
use crate::upstream::Endpoint;
use bytes::{Buf, BytesMut};
use http::{Method, StatusCode};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the client connection can carry another request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    KeepAlive,
    Close,
}

/// The client side of a connection: its stream, the bytes read from it and
/// not yet used (the request body's start, or pipelined requests), and a
/// scratch buffer for what is written to either side.
pub(super) struct Client<'a> {
    pub(super) io: &'a mut TcpStream,
    pub(super) buf: &'a mut BytesMut,
    pub(super) out: &'a mut Vec<u8>,
    /// Set when the gateway drains: the response then says the connection closes.
    pub(super) stop: &'a tokio::sync::watch::Receiver<Option<std::time::Duration>>,
}

impl Client<'_> {
    fn draining(&self) -> bool {
        self.stop.borrow().is_some()
    }
}

/// The client's request head as it arrived, and where its fields lie.
pub(super) struct RawHead<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) fields: &'a Fields,
}

/// Serves one request whose head has been read.
pub(super) async fn serve(
    listener: &ListenerRuntime,
    conn: &ClientConn,
    route: Option<Arc<CompiledRoute>>,
    parts: http::request::Parts,
    shape: RequestShape,
    raw: RawHead<'_>,
    mut client: Client<'_>,
) -> Next {
    let started = Instant::now();
    // Not put in the request's fields: the head sent upstream is written
    // from the client's bytes, with the id added there.
    let (request_id, id_made) = headers::request_id_of(&parts.headers);
    let method = parts.method.clone();
    let path_for_log = proxy::access_log_enabled().then(|| parts.uri.path().to_owned());
    // Body bytes not yet taken from the client (in its buffer or still unsent).
    let mut body_pending = shape.body_len;
    let result = match (proxy::admit(listener, &parts.uri, &parts.headers), &route) {
        (Err(e), _) => Err(e),
        (Ok(()), None) => Err(GatewayError::NoRoute),
        (Ok(()), Some(route)) => {
            let request = Request {
                route,
                conn,
                shape: &shape,
                request_id: (&request_id, id_made),
                raw,
            };
            forward(request, parts, &mut body_pending, &mut client).await
        }
    };
    let (status, next) = match result {
        Ok(relay) => {
            let status = relay.head.status;
            (
                status,
                relay.finish(&mut client).await.unwrap_or(Next::Close),
            )
        }
        Err(e) => {
            if let Some(r) = &route {
                r.metrics.error(e.code());
            }
            let next = refuse(
                e,
                route.as_deref(),
                &request_id,
                &shape,
                body_pending,
                &mut client,
            )
            .await;
            (e.status(), next)
        }
    };
    let elapsed = started.elapsed();
    if let Some(r) = &route {
        r.metrics.observe(status, elapsed.as_secs_f64());
    }
    if let Some(path) = path_for_log {
        proxy::log_access(&proxy::Access {
            listener: &listener.name,
            route: route.as_ref().map(|r| &*r.name),
            method: &method,
            path: &path,
            status,
            elapsed,
            client: conn.peer,
            request_id: &request_id,
        });
    }
    next
}

/// Answers with the gateway's own error response.
async fn refuse(
    e: GatewayError,
    route: Option<&CompiledRoute>,
    request_id: &http::HeaderValue,
    shape: &RequestShape,
    body_pending: u64,
    client: &mut Client<'_>,
) -> Next {
    // The unread body must be skipped to reach the next request; when it
    // is not all here, the connection closes instead.
    let mut close = shape.close || client.draining();
    if body_pending > 0 {
        if client.buf.len() as u64 >= body_pending {
            client.buf.advance(body_pending as usize);
        } else {
            close = true;
        }
    }
    let mut resp = e.response(false, Some(request_id));
    if let (GatewayError::RateLimited { decision }, Some(r)) = (e, route) {
        decision.write_headers(&r.name, resp.headers_mut());
    }
    let (head, body) = resp.into_parts();
    client.out.clear();
    head::write_response(
        client.out,
        head.status,
        &head.headers,
        &body.into_full_bytes(),
        close,
    );
    match client.io.write_all(client.out).await {
        Ok(()) if !close => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// What one request brings to [`forward`].
struct Request<'r> {
    route: &'r CompiledRoute,
    conn: &'r ClientConn,
    shape: &'r RequestShape,
    /// The request's id, and whether the gateway made it.
    request_id: (&'r http::HeaderValue, bool),
    raw: RawHead<'r>,
}

/// A response from upstream, head parsed, ready to relay to the client.
struct Relay<'r> {
    head: ResponseHead,
    up: UpstreamConn,
    endpoint: Arc<Endpoint>,
    limits: PoolLimits,
    route: &'r CompiledRoute,
    request_id: &'r http::HeaderValue,
    client_close: bool,
    /// The bulkhead's permit lives until the body has passed.
    _permit: Option<trellis_resilience::bulkhead::BulkheadPermit>,
}

/// The route's policies, then attempts until a response head arrives.
async fn forward<'r>(
    req: Request<'r>,
    mut parts: http::request::Parts,
    body_pending: &mut u64,
    client: &mut Client<'_>,
) -> Result<Relay<'r>, GatewayError> {
    let route = req.route;
    let permit = proxy::enforce(route, req.conn, &parts).await?;
    let (upstream, service_path) = route.resolve(&parts.uri, &parts.headers).await?;
    // The head and whatever of the body has arrived go out in one write,
    // and stay in `out` in case the attempt is made again.
    client.out.clear();
    let (request_id, id_made) = req.request_id;
    // When the balancer reads fields, it must read them as they are sent:
    // then the fields are edited in the map, as on the hyper path.
    let edit_map = upstream.picks_by_fields();
    let target = if edit_map {
        if id_made {
            parts
                .headers
                .insert(headers::X_REQUEST_ID, request_id.clone());
        }
        let hop_by_hop = req.shape.hop_by_hop;
        proxy::prepare_outbound(route, req.conn, &mut parts, hop_by_hop, false, service_path)
    } else {
        proxy::outbound_target(route, &parts.uri, service_path)
    };
    let target = target
        .as_deref()
        .unwrap_or_else(|| parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    if edit_map {
        head::write_request(client.out, &parts.method, target, &parts.headers);
    } else {
        let cx = outbound::Context {
            conn: req.conn,
            route: &route.request_headers,
            request_id: req.request_id,
            hop_by_hop: req.shape.hop_by_hop,
        };
        let method = parts.method.as_str().as_bytes();
        outbound::write_request(
            client.out,
            method,
            target.as_bytes(),
            req.raw.bytes,
            req.raw.fields,
            &cx,
        );
    }
    let buffered = (*body_pending).min(client.buf.len() as u64) as usize;
    client.out.extend_from_slice(&client.buf[..buffered]);
    client.buf.advance(buffered);
    *body_pending -= buffered as u64;

    let ask = Ask {
        head_request: parts.method == Method::HEAD,
        idempotent: parts.method.is_idempotent(),
        limits: upstream.pool_limits(),
    };
    // As on the hyper path, only requests without a body are retried.
    let retry = route.retry.as_ref().filter(|_| req.shape.body_len == 0);
    if let Some(r) = retry {
        r.begin();
    }
    let attempts = async {
        let mut n = 0;
        loop {
            let result = match Attempt::begin(route, &upstream, &parts.uri, &parts.headers) {
                Err(e) => Err(e),
                Ok(attempt) => {
                    let endpoint = attempt.endpoint().clone();
                    let once = exchange(&endpoint, ask, body_pending, client);
                    let r = match route.per_try_timeout {
                        Some(t) => tokio::time::timeout(t, once)
                            .await
                            .unwrap_or(Err(GatewayError::UpstreamTimeout)),
                        None => once.await,
                    };
                    attempt.finish(r.as_ref().map(|(_, h)| h.status));
                    r.map(|(up, head)| (up, head, endpoint))
                }
            };
            n += 1;
            let outcome = result.as_ref().map(|(_, h, _)| h.status);
            match retry.and_then(|r| r.after_attempt(route, ask.idempotent, n, outcome)) {
                Some(pause) => tokio::time::sleep(pause).await,
                None => return result,
            }
        }
    };
    let (up, head, endpoint) = match route.timeout {
        Some(t) => tokio::time::timeout(t, attempts)
            .await
            .map_err(|_| GatewayError::UpstreamTimeout)??,
        None => attempts.await?,
    };
    Ok(Relay {
        head,
        up,
        endpoint,
        limits: ask.limits,
        route,
        request_id,
        client_close: req.shape.close,
        _permit: permit,
    })
}

/// What an attempt needs to know about its request.
#[derive(Debug, Clone, Copy)]
struct Ask {
    head_request: bool,
    idempotent: bool,
    limits: PoolLimits,
}

/// How sending a request on a connection failed.
enum Failure {
    /// Nothing came back on a connection that served a request before: the
    /// endpoint had closed it. `written` says the request went out whole.
    Stale { written: bool },
    /// The client went away while its body was being passed on.
    ClientGone,
    /// The endpoint failed or answered with something that is not HTTP/1.1.
    Upstream,
}

/// Size of each read from either side.
const READ: usize = 16 * 1024;

/// One attempt at `endpoint`: a pooled connection (or a new one), the
/// request sent, the response head read. A pooled connection the endpoint
/// had closed is replaced once, when the request can be sent again safely.
async fn exchange(
    endpoint: &Endpoint,
    ask: Ask,
    body_pending: &mut u64,
    client: &mut Client<'_>,
) -> Result<(UpstreamConn, ResponseHead), GatewayError> {
    let unavailable = |_| GatewayError::UpstreamUnavailable { retry_after: None };
    let whole_in_out = *body_pending == 0;
    let mut up = endpoint
        .idle
        .checkout(endpoint.address(), ask.limits)
        .await
        .map_err(unavailable)?;
    loop {
        match send(&mut up, ask.head_request, body_pending, client).await {
            Ok(head) => return Ok((up, head)),
            Err(Failure::Stale { written }) if whole_in_out && (!written || ask.idempotent) => {
                up = pool::connect(endpoint.address(), ask.limits.connect_timeout)
                    .await
                    .map_err(unavailable)?;
            }
            Err(Failure::ClientGone) => return Err(GatewayError::BadRequest),
            Err(Failure::Stale { .. } | Failure::Upstream) => {
                return Err(GatewayError::UpstreamError)
            }
        }
    }
}

/// Sends the request in `client.out` (and the rest of its body from the
/// client) on `up`, then reads the response head, passing any interim
/// (1xx) responses on to the client.
async fn send(
    up: &mut UpstreamConn,
    head_request: bool,
    body_pending: &mut u64,
    client: &mut Client<'_>,
) -> Result<ResponseHead, Failure> {
    let reused = up.reused;
    let stale = |written| {
        if reused {
            Failure::Stale { written }
        } else {
            Failure::Upstream
        }
    };
    if up.io.write_all(client.out).await.is_err() {
        return Err(stale(false));
    }
    while *body_pending > 0 {
        if client.buf.is_empty() {
            client.buf.reserve(READ);
            match client.io.read_buf(client.buf).await {
                Ok(0) | Err(_) => return Err(Failure::ClientGone),
                Ok(_) => {}
            }
        }
        let take = (*body_pending).min(client.buf.len() as u64) as usize;
        up.io
            .write_all(&client.buf[..take])
            .await
            .map_err(|_| Failure::Upstream)?;
        client.buf.advance(take);
        *body_pending -= take as u64;
    }
    let mut received = false;
    loop {
        if !up.buf.is_empty() {
            match response::parse_response(&up.buf, head_request, &mut up.fields) {
                Ok(Some(h)) if h.status == StatusCode::SWITCHING_PROTOCOLS => {
                    return Err(Failure::Upstream)
                }
                Ok(Some(h)) if h.status.is_informational() => {
                    client
                        .io
                        .write_all(&up.buf[..h.len])
                        .await
                        .map_err(|_| Failure::ClientGone)?;
                    up.buf.advance(h.len);
                    continue;
                }
                Ok(Some(h)) => return Ok(h),
                Ok(None) => {}
                Err(BadResponse::Malformed | BadResponse::TooLarge) => {
                    return Err(Failure::Upstream)
                }
            }
        }
        up.buf.reserve(READ);
        match up.io.read_buf(&mut up.buf).await {
            Ok(0) | Err(_) if !received => return Err(stale(true)),
            Ok(0) | Err(_) => return Err(Failure::Upstream),
            Ok(_) => received = true,
        }
    }
}

impl Relay<'_> {
    /// Writes the response to the client, passing the body through as it
    /// arrives, and returns the upstream connection to the pool when the
    /// response ended cleanly. `Err` when either side failed mid-body: the
    /// client connection must close (its response is cut short).
    async fn finish(self, client: &mut Client<'_>) -> Result<Next, ()> {
        let Relay {
            head: h,
            mut up,
            endpoint,
            limits,
            route,
            request_id,
            client_close,
            _permit,
        } = self;
        let close = client_close || h.framing == Framing::UntilClose || client.draining();
        client.out.clear();
        response::write_response_head(
            client.out,
            &up.buf,
            &h,
            &up.fields,
            &ResponseEdits {
                route: &route.response_headers,
                request_id,
                chunked: h.framing == Framing::Chunked,
                close,
            },
        );
        up.buf.advance(h.len);
        match h.framing {
            Framing::Empty => write(client, None).await?,
            Framing::Length(n) => {
                let mut left = n;
                let take = left.min(up.buf.len() as u64) as usize;
                client.out.extend_from_slice(&up.buf[..take]);
                up.buf.advance(take);
                left -= take as u64;
                write(client, None).await?;
                while left > 0 {
                    fill(&mut up).await?;
                    let take = left.min(up.buf.len() as u64) as usize;
                    write(client, Some(&up.buf[..take])).await?;
                    up.buf.advance(take);
                    left -= take as u64;
                }
            }
            Framing::Chunked => {
                let mut chunks = ChunkedTracker::new();
                let used = chunks.feed(&up.buf).map_err(|_| ())?;
                client.out.extend_from_slice(&up.buf[..used]);
                up.buf.advance(used);
                write(client, None).await?;
                while !chunks.is_done() {
                    fill(&mut up).await?;
                    let used = chunks.feed(&up.buf).map_err(|_| ())?;
                    write(client, Some(&up.buf[..used])).await?;
                    up.buf.advance(used);
                }
            }
            Framing::UntilClose => {
                client.out.extend_from_slice(&up.buf);
                up.buf.clear();
                write(client, None).await?;
                loop {
                    up.buf.reserve(READ);
                    match up.io.read_buf(&mut up.buf).await {
                        Ok(0) => break,
                        Ok(_) => {
                            write(client, Some(&up.buf)).await?;
                            up.buf.clear();
                        }
                        Err(_) => return Err(()),
                    }
                }
            }
        }
        // Bytes past the response's end mean the endpoint broke the framing.
        if !h.close && up.buf.is_empty() {
            endpoint.idle.release(up, limits);
        }
        Ok(if close { Next::Close } else { Next::KeepAlive })
    }
}

/// Reads more of the response body; the end of the stream here is an error.
async fn fill(up: &mut UpstreamConn) -> Result<(), ()> {
    up.buf.reserve(READ);
    match up.io.read_buf(&mut up.buf).await {
        Ok(0) | Err(_) => Err(()),
        Ok(_) => Ok(()),
    }
}

/// Writes `bytes`, or what `client.out` holds, to the client.
async fn write(client: &mut Client<'_>, bytes: Option<&[u8]>) -> Result<(), ()> {
    let bytes = bytes.unwrap_or(client.out);
    client.io.write_all(bytes).await.map_err(|_| ())
}
