//! The gateway's configuration: listeners, routes and upstreams, as the
//! `trellis` server embeds them in `trellis.toml` (see `docs/gateway-config.md`
//! for every key, its default and an example).
//!
//! Every struct denies unknown keys, so a typo is an error rather than a
//! silently ignored setting, and durations are humantime strings (`"250ms"`).
//! Deserializing checks shapes; [`GatewayConfig::validate`] checks meaning
//! (references between sections, regexes, header names, ranges) and reports
//! every problem with its key path, e.g. `routes[2].upstream: unknown upstream "x"`.
//!
//! # Route matching precedence
//!
//! A listener serves one route set (`route_set`, default `"default"`); only the
//! routes of that set are considered. Among them the first route that matches
//! wins, in this order:
//!
//! 1. **Host**: routes whose `host` is an exact name come first, then wildcard
//!    hosts (`*.example.com`, matching one or more labels before the suffix),
//!    longest suffix first, then routes without a host. A request falls through
//!    to the next group only when no route of the more specific group matches.
//! 2. **Path**, within a host group: exact `path` first, then `path_prefix`,
//!    longest prefix first, then `path_regex`, then routes without a path
//!    condition.
//! 3. **Other conditions**: among routes equal so far, the one with more
//!    method, header and query conditions comes first.
//! 4. **Config order** breaks any remaining tie.
//!
//! Host comparison is case-insensitive and ignores the port. A `path_prefix`
//! matches on segment boundaries: `/api` matches `/api`, `/api/` and `/api/x`
//! but not `/apix`. Paths are compared as received (not percent-decoded).

mod duration;
mod validate;

pub use validate::{ConfigError, ConfigErrors};

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The whole gateway section: listeners, the routes they serve, and the
/// upstreams those routes forward to.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
}

pub(crate) fn default_route_set() -> String {
    "default".to_owned()
}

/// One listening socket with its protocols, limits and route set. A
/// backend-for-frontend is a listener with a route set of its own.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub bind: SocketAddr,
    #[serde(default = "default_route_set")]
    pub route_set: String,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default = "Protocol::all")]
    pub protocols: Vec<Protocol>,
    #[serde(default)]
    pub limits: Limits,
    /// Threads of its own for this listener, each with a single-threaded
    /// runtime and its own `SO_REUSEPORT` socket (thread per core, as
    /// nginx's workers); connections stay on the thread that accepted them.
    /// 0 serves the listener on the node's shared runtime.
    #[serde(default)]
    pub workers: usize,
}

/// HTTP versions a listener speaks. Over TLS they are offered by ALPN; in
/// cleartext HTTP/2 is prior-knowledge h2c.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    fn all() -> Vec<Protocol> {
        vec![Protocol::Http1, Protocol::Http2]
    }
}

/// TLS termination: the first certificate is the default, the others are
/// chosen by the SNI name the client sends.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub certificates: Vec<CertificateConfig>,
}

/// A PEM certificate chain and its private key, served for `server_names`
/// (exact names or `*.example.com`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default)]
    pub server_names: Vec<String>,
}

/// Protective limits of a listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head (request line and headers) in bytes; larger gets `431`.
    pub max_header_bytes: usize,
    /// Most header fields in one request; more gets `431`.
    pub max_headers: usize,
    /// Longest request target in bytes; longer gets `414`.
    pub max_uri_bytes: usize,
    /// Largest request body in bytes; larger gets `413`.
    pub max_body_bytes: u64,
    /// Time allowed for a client to send a complete request head (slowloris).
    #[serde(deserialize_with = "duration::deserialize")]
    pub header_read_timeout: Duration,
    /// Open connections beyond this wait in the kernel backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
        }
    }
}

/// A route: a match, the upstream it forwards to, and the policies on the way.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    #[serde(default = "default_route_set")]
    pub route_set: String,
    #[serde(rename = "match", default)]
    pub matches: RouteMatch,
    pub upstream: String,
    /// Where the request names the service it is for, when `upstream` is a
    /// service-by-name upstream (`service = "*"`): `"path"` (the first
    /// segment after `match.path_prefix`, removed before forwarding),
    /// `"host"`, or `"header:<name>"`.
    #[serde(default)]
    pub service_from: Option<ServiceFrom>,
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    #[serde(default)]
    pub request_headers: HeaderRules,
    #[serde(default)]
    pub response_headers: HeaderRules,
    /// Deadline for the whole request, retries included, until response headers.
    #[serde(default, deserialize_with = "duration::option")]
    pub timeout: Option<Duration>,
    /// Deadline for each attempt.
    #[serde(default, deserialize_with = "duration::option")]
    pub per_try_timeout: Option<Duration>,
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    #[serde(default)]
    pub breaker: Option<BreakerPolicy>,
    #[serde(default)]
    pub bulkhead: Option<BulkheadPolicy>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitPolicy>,
    /// Authentication, in the shape of the `trellis-auth` crate's config.
    #[serde(default)]
    pub auth: Option<serde_json::Value>,
    /// CORS, in the shape of the `trellis-auth` crate's config.
    #[serde(default)]
    pub cors: Option<serde_json::Value>,
    /// A proxied WebSocket is closed after this long without a frame either way.
    #[serde(
        default = "default_ws_idle",
        deserialize_with = "duration::deserialize"
    )]
    pub websocket_idle_timeout: Duration,
}

/// Where a request names its service; see [`Route::service_from`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ServiceFrom {
    /// `/<prefix>/<service>/<rest>` is forwarded as `/<rest>`.
    Path,
    /// The request's host, without port.
    Host,
    /// The value of this header.
    Header(String),
}

impl TryFrom<String> for ServiceFrom {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "path" => Ok(ServiceFrom::Path),
            "host" => Ok(ServiceFrom::Host),
            _ => match s.strip_prefix("header:") {
                Some(h) if http::HeaderName::from_bytes(h.as_bytes()).is_ok() => {
                    Ok(ServiceFrom::Header(h.to_ascii_lowercase()))
                }
                _ => Err(format!(
                    "invalid service_from {s:?}: use \"path\", \"host\" or \"header:<name>\""
                )),
            },
        }
    }
}

fn default_ws_idle() -> Duration {
    Duration::from_secs(300)
}

/// Conditions a request must meet; all given conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// `api.example.com` or `*.example.com`.
    pub host: Option<String>,
    /// Exact path.
    pub path: Option<String>,
    /// Path prefix, on segment boundaries.
    pub path_prefix: Option<String>,
    /// Regular expression the whole path must match.
    pub path_regex: Option<String>,
    /// Allowed methods; empty allows all.
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    #[serde(default)]
    pub query: Vec<ValueMatch>,
}

/// A header or query parameter condition: present, equal to `value`, or
/// matching `regex`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueMatch {
    pub name: String,
    pub value: Option<String>,
    pub regex: Option<String>,
}

/// Path rewrite of a `path_prefix` route: strip the prefix, or replace it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    #[serde(default)]
    pub strip_prefix: bool,
    pub replace_prefix: Option<String>,
}

/// Header edits, applied in the order remove, set, add.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRules {
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub add: std::collections::BTreeMap<String, String>,
}

/// Retries of failed attempts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Total attempts, the first included.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    #[serde(
        default = "default_backoff",
        deserialize_with = "duration::deserialize"
    )]
    pub backoff: Duration,
    #[serde(
        default = "default_max_backoff",
        deserialize_with = "duration::deserialize"
    )]
    pub max_backoff: Duration,
    /// Retries allowed as a percentage of requests (plus a floor of 10 per 10 s).
    #[serde(default = "default_budget")]
    pub budget_percent: f64,
    /// Also retry responses with these statuses (only for idempotent requests
    /// without a body). Connection failures are always retried.
    #[serde(default)]
    pub retry_on_status: Vec<u16>,
}

fn default_attempts() -> u32 {
    3
}
fn default_backoff() -> Duration {
    Duration::from_millis(25)
}
fn default_max_backoff() -> Duration {
    Duration::from_millis(250)
}
fn default_budget() -> f64 {
    20.0
}

/// A circuit breaker on the route's upstream calls.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerPolicy {
    /// Failure percentage over the window at which the breaker opens.
    #[serde(default = "default_failure_rate")]
    pub failure_rate_percent: f32,
    /// Calls the window must hold before the breaker may open.
    #[serde(default = "default_minimum_calls")]
    pub minimum_calls: u32,
    /// How far back the time-based sliding window reaches.
    #[serde(default = "default_window", deserialize_with = "duration::deserialize")]
    pub window: Duration,
    /// How long the breaker stays open before admitting probes.
    #[serde(
        default = "default_open_for",
        deserialize_with = "duration::deserialize"
    )]
    pub open_for: Duration,
    /// Probe calls admitted while half-open.
    #[serde(default = "default_half_open")]
    pub half_open_calls: u32,
    /// Calls slower than this count as slow; with `slow_call_percent` they
    /// open the breaker too.
    #[serde(default, deserialize_with = "duration::option")]
    pub slow_call_duration: Option<Duration>,
    #[serde(default = "default_slow_percent")]
    pub slow_call_percent: f32,
}

fn default_failure_rate() -> f32 {
    50.0
}
fn default_minimum_calls() -> u32 {
    20
}
fn default_window() -> Duration {
    Duration::from_secs(10)
}
fn default_open_for() -> Duration {
    Duration::from_secs(30)
}
fn default_half_open() -> u32 {
    3
}
fn default_slow_percent() -> f32 {
    100.0
}

/// Bounded concurrency with a bounded wait queue.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkheadPolicy {
    pub max_concurrent: usize,
    #[serde(default)]
    pub max_queue: usize,
    #[serde(default, deserialize_with = "duration::option")]
    pub queue_timeout: Option<Duration>,
}

/// Requests per period per key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicy {
    pub requests: u32,
    #[serde(deserialize_with = "duration::deserialize")]
    pub per: Duration,
    /// Requests a fresh key may make at once; defaults to `requests`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// `client_ip`, `header:<name>`, `api_key` or `claim:<name>`.
    #[serde(default = "default_rl_key")]
    pub key: String,
    /// `memory`, or a `redis://` URL for a limit shared by a fleet.
    #[serde(default = "default_rl_store")]
    pub store: String,
}

fn default_rl_key() -> String {
    "client_ip".to_owned()
}
fn default_rl_store() -> String {
    "memory".to_owned()
}

/// A named set of endpoints with a balancing policy and health checking.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// Follow the service registry instead of listing `endpoints`: the
    /// upstream serves the healthy instances of this service, updated by
    /// watch as they come and go. The gateway itself only exposes
    /// [`Upstream::set_endpoints`](crate::upstream::Upstream::set_endpoints);
    /// the `trellis` binary does the following.
    ///
    /// `"*"` makes a service-by-name upstream: routes to it name the service
    /// per request ([`Route::service_from`]), and the gateway keeps one
    /// upstream per service named, with this upstream's settings, fed by the
    /// embedder's [`ServiceResolver`](crate::ServiceResolver).
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[serde(default)]
    pub load_balancer: LoadBalancerConfig,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetectionConfig>,
    #[serde(default)]
    pub pool: PoolConfig,
}

/// `"127.0.0.1:8081"` or `{ address = "10.0.0.5:80", weight = 3 }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum EndpointConfig {
    Address(String),
    Weighted {
        address: String,
        #[serde(default = "default_weight")]
        weight: u32,
    },
}

fn default_weight() -> u32 {
    1
}

impl EndpointConfig {
    pub fn address(&self) -> &str {
        match self {
            EndpointConfig::Address(a) | EndpointConfig::Weighted { address: a, .. } => a,
        }
    }
    pub fn weight(&self) -> u32 {
        match self {
            EndpointConfig::Address(_) => 1,
            EndpointConfig::Weighted { weight, .. } => *weight,
        }
    }
}

/// How the gateway talks to an upstream: HTTP/1.1, or HTTP/2 with prior
/// knowledge (needed for gRPC).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerConfig {
    #[serde(default)]
    pub policy: LbPolicy,
    /// For `consistent_hash`: where the key comes from.
    #[serde(default)]
    pub hash_on: Option<HashOn>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    /// Smooth weighted round robin.
    Weighted,
    /// Power of two choices on outstanding requests.
    LeastRequest,
    /// Power of two choices on EWMA latency.
    Ewma,
    /// Consistent hashing of a request key (`hash_on`).
    ConsistentHash,
}

/// Exactly one of: a header, a cookie, or a path segment (0-based).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashOn {
    pub header: Option<String>,
    pub cookie: Option<String>,
    pub path_segment: Option<usize>,
}

/// Active health checks; an endpoint that fails `unhealthy_threshold` checks
/// in a row leaves the pool until it passes `healthy_threshold` in a row.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// HTTP path to `GET`; without it the check is a TCP connect.
    pub path: Option<String>,
    #[serde(
        default = "default_hc_interval",
        deserialize_with = "duration::deserialize"
    )]
    pub interval: Duration,
    #[serde(
        default = "default_hc_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub timeout: Duration,
    #[serde(default = "default_two")]
    pub healthy_threshold: u32,
    #[serde(default = "default_three")]
    pub unhealthy_threshold: u32,
}

fn default_hc_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_hc_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_two() -> u32 {
    2
}
fn default_three() -> u32 {
    3
}

/// Passive outlier detection from live traffic.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetectionConfig {
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u32,
    #[serde(
        default = "default_base_ejection",
        deserialize_with = "duration::deserialize"
    )]
    pub base_ejection_time: Duration,
    #[serde(default = "default_max_ejection")]
    pub max_ejection_percent: u32,
}

fn default_consecutive() -> u32 {
    5
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection() -> u32 {
    50
}

/// Connection pool to an upstream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    pub max_idle_per_endpoint: usize,
    #[serde(deserialize_with = "duration::deserialize")]
    pub idle_timeout: Duration,
    #[serde(deserialize_with = "duration::deserialize")]
    pub connect_timeout: Duration,
    /// Concurrent requests one endpoint may have; when every endpoint is at
    /// the limit the request is refused with `503` (`upstream_overloaded`).
    pub max_requests_per_endpoint: Option<usize>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_idle_per_endpoint: 512,
            idle_timeout: Duration::from_secs(90),
            connect_timeout: Duration::from_secs(2),
            max_requests_per_endpoint: None,
        }
    }
}
