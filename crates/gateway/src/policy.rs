//! A route's policies built from its config with the pattern crates:
//! CORS and authentication from `trellis-auth`, and the circuit breaker, bulkhead and
//! rate limiter (in memory or in Redis) from `trellis-resilience`. The proxy
//! applies them in the order CORS → auth → rate limit → bulkhead → (per
//! attempt) breaker, so an unauthenticated caller never spends anyone's quota and a
//! refused call never reaches the upstream.

use crate::config::{BreakerPolicy, BulkheadPolicy, RateLimitPolicy};
use http::HeaderName;
use std::net::IpAddr;
use std::sync::Arc;
use trellis_auth::{AuthConfig, Authenticator, CorsConfig, CorsPolicy, Identity};
use trellis_resilience::breaker::{CircuitBreaker, CircuitBreakerConfig, SlidingWindow};
use trellis_resilience::bulkhead::{Bulkhead, BulkheadConfig};
use trellis_resilience::ratelimit::{
    Decision, MemoryStore, Quota, RateLimiter, RedisStore, RedisStoreConfig,
};

/// Every policy a route enforces.
#[derive(Default)]
pub(crate) struct RoutePolicies {
    pub(crate) cors: Option<CorsPolicy>,
    pub(crate) auth: Option<Arc<Authenticator>>,
    pub(crate) limiter: Option<RouteLimiter>,
    pub(crate) bulkhead: Option<Bulkhead>,
    pub(crate) breaker: Option<CircuitBreaker>,
}

impl std::fmt::Debug for RoutePolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutePolicies")
            .field("cors", &self.cors.is_some())
            .field("auth", &self.auth.is_some())
            .field("rate_limit", &self.limiter.is_some())
            .field("bulkhead", &self.bulkhead.is_some())
            .field("breaker", &self.breaker.is_some())
            .finish()
    }
}

pub(crate) fn breaker(p: &BreakerPolicy, route: &str) -> Result<CircuitBreaker, String> {
    let mut config = CircuitBreakerConfig::default()
        .name(route)
        .sliding_window(SlidingWindow::time(p.window))
        .failure_rate_threshold(p.failure_rate_percent)
        .minimum_calls(p.minimum_calls)
        .open_duration(p.open_for)
        .permitted_calls_in_half_open(p.half_open_calls);
    if let Some(slow) = p.slow_call_duration {
        config = config.slow_calls(slow, p.slow_call_percent);
    }
    CircuitBreaker::new(config).map_err(|e| e.to_string())
}

pub(crate) fn bulkhead(p: &BulkheadPolicy) -> Result<Bulkhead, String> {
    let mut config = BulkheadConfig::new(p.max_concurrent);
    if p.max_queue > 0 {
        config = config.with_queue(
            p.max_queue,
            p.queue_timeout.unwrap_or(std::time::Duration::from_secs(1)),
        );
    }
    Bulkhead::new(config).map_err(|e| e.to_string())
}

/// Where a rate-limit key comes from.
#[derive(Debug, Clone)]
enum RateKey {
    ClientIp,
    Header(HeaderName),
    ApiKey,
    Claim(String),
}

enum Limiter {
    Memory(RateLimiter<String, MemoryStore<String>>),
    /// Keyed by client IP in memory: the address itself is the key, so a
    /// decision neither formats nor allocates.
    MemoryByIp(RateLimiter<IpAddr, MemoryStore<IpAddr>>),
    Redis(RateLimiter<String, RedisStore>),
}

/// A route's rate limiter and the request property it is keyed on.
pub(crate) struct RouteLimiter {
    key: RateKey,
    limiter: Limiter,
}

fn parse_key(key: &str) -> Result<RateKey, String> {
    match key.split_once(':') {
        None if key == "client_ip" => Ok(RateKey::ClientIp),
        None if key == "api_key" => Ok(RateKey::ApiKey),
        Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
            .map(RateKey::Header)
            .map_err(|_| format!("invalid header name {name:?}")),
        Some(("claim", name)) if !name.is_empty() => Ok(RateKey::Claim(name.to_owned())),
        _ => Err(format!(
            "unknown key {key:?}: write client_ip, header:<name>, api_key or claim:<name>"
        )),
    }
}

fn quota(p: &RateLimitPolicy) -> Result<Quota, String> {
    let q = Quota::new(p.requests, p.per).map_err(|e| e.to_string())?;
    match p.burst {
        Some(b) => q.with_burst(b).map_err(|e| e.to_string()),
        None => Ok(q),
    }
}

/// Checks a rate-limit section; the error names the key at fault.
pub(crate) fn check_rate_limit(
    p: &RateLimitPolicy,
    has_auth: bool,
) -> Result<(), (&'static str, String)> {
    quota(p).map_err(|e| ("requests", e))?;
    let key = parse_key(&p.key).map_err(|e| ("key", e))?;
    if matches!(key, RateKey::ApiKey | RateKey::Claim(_)) && !has_auth {
        return Err((
            "key",
            format!("{:?} needs an auth section on the route", p.key),
        ));
    }
    if p.store != "memory" && !p.store.starts_with("redis://") && !p.store.starts_with("rediss://")
    {
        return Err((
            "store",
            format!("{:?}: write \"memory\" or a redis:// URL", p.store),
        ));
    }
    Ok(())
}

pub(crate) fn limiter(p: &RateLimitPolicy) -> Result<RouteLimiter, String> {
    let quota = quota(p)?;
    let key = parse_key(&p.key)?;
    let limiter = if p.store == "memory" && matches!(key, RateKey::ClientIp) {
        Limiter::MemoryByIp(RateLimiter::new(
            quota,
            MemoryStore::with_max_keys(100_000).map_err(|e| e.to_string())?,
        ))
    } else if p.store == "memory" {
        Limiter::Memory(RateLimiter::new(
            quota,
            MemoryStore::with_max_keys(100_000).map_err(|e| e.to_string())?,
        ))
    } else {
        let store =
            RedisStore::new(RedisStoreConfig::new(p.store.clone())).map_err(|e| e.to_string())?;
        Limiter::Redis(RateLimiter::new(quota, store))
    };
    Ok(RouteLimiter { key, limiter })
}

impl RouteLimiter {
    /// Decides one request. Requests without the key share one bucket, so
    /// leaving a header out is no way around the limit.
    pub(crate) async fn check(&self, req: &http::request::Parts, client: IpAddr) -> Decision {
        if let Limiter::MemoryByIp(l) = &self.limiter {
            return l.check(&client).await;
        }
        let identity = req.extensions.get::<Identity>();
        let key = match &self.key {
            RateKey::ClientIp => client.to_string(),
            RateKey::Header(h) => req
                .headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned(),
            RateKey::ApiKey => identity
                .and_then(|i| i.api_key_id())
                .unwrap_or("")
                .to_owned(),
            RateKey::Claim(c) => identity
                .and_then(|i| i.claim_text(c))
                .map(|c| c.into_owned())
                .unwrap_or_default(),
        };
        match &self.limiter {
            Limiter::Memory(l) => l.check(&key).await,
            Limiter::Redis(l) => l.check(&key).await,
            Limiter::MemoryByIp(l) => l.check(&client).await,
        }
    }
}

/// Every problem in an `auth` section, as (path below `auth`, message).
pub(crate) fn check_auth(value: &serde_json::Value) -> Vec<(String, String)> {
    match serde_json::from_value::<AuthConfig>(value.clone()) {
        Err(e) => vec![(String::new(), e.to_string())],
        Ok(config) => located(config.validate()),
    }
}

/// Every problem in a `cors` section, as (path below `cors`, message).
pub(crate) fn check_cors(value: &serde_json::Value) -> Vec<(String, String)> {
    match serde_json::from_value::<CorsConfig>(value.clone()) {
        Err(e) => vec![(String::new(), e.to_string())],
        Ok(config) => located(config.validate()),
    }
}

pub(crate) fn cors(value: &serde_json::Value) -> Result<CorsPolicy, String> {
    let config: CorsConfig = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    CorsPolicy::from_config(&config).map_err(|e| e.to_string())
}

fn located(result: Result<(), trellis_auth::ConfigErrors>) -> Vec<(String, String)> {
    match result {
        Ok(()) => Vec::new(),
        Err(errs) => errs
            .errors()
            .iter()
            .map(|e| {
                (
                    if e.path.is_empty() {
                        String::new()
                    } else {
                        format!(".{}", e.path)
                    },
                    e.message.clone(),
                )
            })
            .collect(),
    }
}

pub(crate) async fn authenticator(value: &serde_json::Value) -> Result<Arc<Authenticator>, String> {
    let config: AuthConfig = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    Authenticator::from_config(&config)
        .await
        .map(Arc::new)
        .map_err(|e| e.to_string())
}
