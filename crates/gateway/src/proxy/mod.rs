//! The request path: route lookup, limits, header hygiene, endpoint choice,
//! retries and timeouts, streaming both ways, upgrades, and the gateway's own
//! error responses.
//!
//! A route's policies run in a fixed order — CORS (preflights answered
//! here), auth, rate limit, bulkhead, then per attempt the circuit breaker — using the primitives of
//! `trellis-auth` and `trellis-resilience` (permits and decisions) rather than
//! stacked tower layers, so the per-request path boxes nothing and a route
//! without policies pays nothing for them.

pub(crate) mod headers;
mod problem;
mod retry;
mod upgrade;

pub(crate) use headers::X_REQUEST_ID;
pub use problem::GatewayError;
pub(crate) use retry::{Attempt, RetryState};

use crate::body::{Body, BodyError};
use crate::route::CompiledRoute;
use crate::runtime::ListenerRuntime;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Who is on the other end of a client connection.
#[derive(Debug, Clone)]
pub(crate) struct ClientConn {
    pub(crate) peer: SocketAddr,
    pub(crate) tls: bool,
    /// The peer's IP as header text, made once per connection for the
    /// forwarding headers of each of its requests.
    pub(crate) ip_text: HeaderValue,
}

impl ClientConn {
    pub(crate) fn new(peer: SocketAddr, tls: bool) -> ClientConn {
        let ip_text = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
        ClientConn { peer, tls, ip_text }
    }
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Serves one client request on a listener.
pub(crate) async fn handle(
    listener: &ListenerRuntime,
    conn: &ClientConn,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let grpc = is_grpc(&req);
    let request_id = headers::request_id(req.headers_mut());
    let method = req.method().clone();
    // The path is copied only when someone listens to the access log.
    let path_for_log = access_log_enabled().then(|| req.uri().path().to_owned());

    let outcome = admit(listener, req.uri(), req.headers()).and_then(|()| {
        listener
            .table
            .find(&req)
            .cloned()
            .ok_or(GatewayError::NoRoute)
    });
    let span = listener.tracing.as_ref().map(|t| {
        let route = outcome.as_ref().ok().map(|r| &*r.name);
        t.start(&mut req, &listener.name, route, conn.peer, conn.tls)
    });
    let (mut response, route) = match outcome {
        Err(e) => (e.response(grpc, Some(&request_id)), None),
        Ok(route) => {
            let (cors, preflight) = crate::cors::begin(
                route.policies.cors.as_ref(),
                req.method(),
                req.headers(),
                grpc,
                &request_id,
            );
            let served = match preflight {
                Some(answer) => Ok(answer),
                None => RouteService::serve(&route, listener, conn, req).await,
            };
            let mut resp = match served {
                Ok(mut r) => {
                    r.headers_mut()
                        .insert(headers::X_REQUEST_ID, request_id.clone());
                    r
                }
                Err(e) => {
                    route.metrics.error(e.code());
                    let mut resp = e.response(grpc, Some(&request_id));
                    if let GatewayError::RateLimited { decision } = e {
                        decision.write_headers(&route.name, resp.headers_mut());
                    }
                    resp
                }
            };
            crate::cors::finish(&mut resp, cors);
            (resp, Some(route))
        }
    };
    let elapsed = started.elapsed();
    if let Some(span) = span {
        span.finish(&mut response, route.as_ref().map(|r| r.target.name()));
    }
    if let Some(r) = &route {
        r.metrics.observe(response.status(), elapsed.as_secs_f64());
    }
    if let Some(path) = path_for_log {
        log_access(&Access {
            listener: &listener.name,
            route: route.as_ref().map(|r| &*r.name),
            method: &method,
            path: &path,
            status: response.status(),
            elapsed,
            client: conn.peer,
            request_id: &request_id,
        });
    }
    response
}

/// Whether anyone listens to the access log (then the path is kept for it).
pub(crate) fn access_log_enabled() -> bool {
    tracing::enabled!(target: "trellis::access", tracing::Level::INFO)
}

/// One line of the access log.
pub(crate) struct Access<'a> {
    pub(crate) listener: &'a str,
    pub(crate) route: Option<&'a str>,
    pub(crate) method: &'a http::Method,
    pub(crate) path: &'a str,
    pub(crate) status: http::StatusCode,
    pub(crate) elapsed: std::time::Duration,
    pub(crate) client: SocketAddr,
    pub(crate) request_id: &'a HeaderValue,
}

pub(crate) fn log_access(a: &Access<'_>) {
    tracing::info!(
        target: "trellis::access",
        listener = a.listener,
        route = a.route,
        method = %a.method,
        path = %a.path,
        status = a.status.as_u16(),
        duration_us = a.elapsed.as_micros() as u64,
        client = %a.client.ip(),
        request_id = a.request_id.to_str().unwrap_or(""),
    );
}

/// The answer to a request whose framing was ambiguous (see
/// `crate::framing`): `400`, and the connection closes after it.
pub(crate) fn refuse_ambiguous<B>(req: &Request<B>) -> Response<Body> {
    tracing::info!(method = %req.method(), path = req.uri().path(), "refused a request with ambiguous framing (Content-Length with Transfer-Encoding, or twice)");
    let mut resp = GatewayError::BadRequest.response(is_grpc(req), None);
    resp.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Listener limits that do not need a route: URI length and declared body size.
pub(crate) fn admit(
    listener: &ListenerRuntime,
    uri: &Uri,
    headers: &http::HeaderMap,
) -> Result<(), GatewayError> {
    let uri_len = uri.path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > listener.limits.max_uri_bytes {
        return Err(GatewayError::UriTooLong);
    }
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    if let Some(cl) = lengths.next() {
        // hyper folds identical duplicates and refuses differing ones; this
        // catches what reaches us over HTTP/2, where framing is the frame's.
        if lengths.next().is_some() {
            return Err(GatewayError::BadRequest);
        }
        let len: u64 = cl
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(GatewayError::BadRequest)?;
        if len > listener.limits.max_body_bytes {
            return Err(GatewayError::PayloadTooLarge);
        }
    }
    Ok(())
}

/// Serves a request on its route: policies, then forwarding upstream.
#[derive(Clone)]
pub(crate) struct RouteService;

impl RouteService {
    async fn serve(
        route: &Arc<CompiledRoute>,
        listener: &ListenerRuntime,
        conn: &ClientConn,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, GatewayError> {
        let upgrade =
            headers::wants_upgrade(req.headers()) && req.version() == http::Version::HTTP_11;
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, incoming) = req.into_parts();
        if let Some(auth) = &route.policies.auth {
            if let Err(e) = auth.authenticate(&mut parts).await {
                let (head, body) = auth.reject(&e).into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                return Ok(Response::from_parts(head, Body::full(bytes)));
            }
        }
        let permit = enforce(route, conn, &parts).await?;
        let (upstream, service_path) = route.resolve(&parts.uri, &parts.headers).await?;
        let path_and_query = prepare_outbound(route, conn, &mut parts, true, upgrade, service_path)
            .unwrap_or_else(|| {
                parts
                    .uri
                    .path_and_query()
                    .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned())
            });
        let declared = parts.headers.contains_key(CONTENT_LENGTH);
        let body = if declared {
            Body::stream(incoming)
        } else {
            Body::limited(incoming, listener.limits.max_body_bytes)
        };
        let req = Request::from_parts(parts, body);

        let fut = retry::forward(route, &upstream, req, path_and_query);
        let mut resp = match route.timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .map_err(|_| GatewayError::UpstreamTimeout)??,
            None => fut.await?,
        };

        let upstream_upgraded = upgrade && resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        if upstream_upgraded {
            if let Some(client) = client_upgrade {
                upgrade::tunnel(
                    client,
                    hyper::upgrade::on(&mut resp),
                    route.websocket_idle_timeout,
                );
            }
        }
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, upstream_upgraded);
        route.response_headers.apply(&mut parts.headers);
        let body = match permit {
            // The bulkhead bounds streams too, so its permit lives as long as the body.
            Some(p) => Body::stream(body).holding(p),
            None => Body::stream(body),
        };
        Ok(Response::from_parts(parts, body))
    }
}

/// The rate limit and the bulkhead of a route, in that order; the permit
/// (when the route has a bulkhead) must live as long as the response streams.
pub(crate) async fn enforce(
    route: &CompiledRoute,
    conn: &ClientConn,
    parts: &http::request::Parts,
) -> Result<Option<trellis_resilience::bulkhead::BulkheadPermit>, GatewayError> {
    let policies = &route.policies;
    if let Some(limiter) = &policies.limiter {
        let decision = limiter.check(parts, conn.peer.ip()).await;
        if !decision.allowed {
            return Err(GatewayError::RateLimited { decision });
        }
    }
    match &policies.bulkhead {
        Some(b) => Ok(Some(
            b.acquire()
                .await
                .map_err(|_| GatewayError::UpstreamOverloaded)?,
        )),
        None => Ok(None),
    }
}

/// Turns a client's request head into the one sent upstream: hop-by-hop
/// headers out (`hop_by_hop` says some may be present), forwarding headers
/// and a trace context in, the route's header edits, and the path after a
/// rewrite (or the service's path when the request named a service in it).
/// Returns the path and query to send when it is not the request's own.
pub(crate) fn prepare_outbound(
    route: &CompiledRoute,
    conn: &ClientConn,
    parts: &mut http::request::Parts,
    hop_by_hop: bool,
    upgrade: bool,
    service_path: Option<String>,
) -> Option<String> {
    let original_host = parts.headers.get(HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    if hop_by_hop {
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    }
    headers::set_forwarded(&mut parts.headers, conn, original_host.as_ref());
    headers::ensure_traceparent(&mut parts.headers);
    if !parts.headers.contains_key(HOST) {
        if let Some(h) = original_host {
            parts.headers.insert(HOST, h);
        }
    }
    route.request_headers.apply(&mut parts.headers);
    outbound_target(route, &parts.uri, service_path)
}

/// The target to send upstream when it is not the client's own: the
/// service's path, or the route's rewrite of the client's path (query kept).
pub(crate) fn outbound_target(
    route: &CompiledRoute,
    uri: &Uri,
    service_path: Option<String>,
) -> Option<String> {
    let rewritten = || {
        let mut p = route.rewritten(uri.path())?;
        if let Some(q) = uri.query() {
            p.push('?');
            p.push_str(q);
        }
        Some(p)
    };
    service_path.or_else(rewritten)
}

/// Builds the absolute URI of `path_and_query` at `authority`.
fn upstream_uri(
    authority: &http::uri::Authority,
    path_and_query: &str,
) -> Result<Uri, GatewayError> {
    Uri::builder()
        .scheme("http")
        .authority(authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| GatewayError::BadRequest)
}

/// Maps a client error to the gateway error the caller sees.
fn classify(err: &hyper_util::client::legacy::Error) -> GatewayError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(BodyError::TooLarge(_)) = e.downcast_ref::<BodyError>() {
            return GatewayError::PayloadTooLarge;
        }
        source = e.source();
    }
    if err.is_connect() {
        GatewayError::UpstreamUnavailable { retry_after: None }
    } else {
        GatewayError::UpstreamError
    }
}
