//! Rate-limit state in Redis, so a fleet of gateways shares one limit.
//!
//! Each decision is one `EVALSHA` of a Lua script that runs GCRA atomically
//! on the server: read the key's TAT, decide, write it back with a TTL that
//! ends exactly when the key goes idle (so idle keys cost Redis nothing).
//! The script reads the server's `TIME`, so gateways whose clocks disagree
//! still agree on the limit. Times in Redis are microseconds (Lua numbers
//! are doubles), counted from 2023-11-14 to keep sub-microsecond precision.
//!
//! The connection is made on first use and re-made in the background by
//! redis-rs's `ConnectionManager` after a failure. Every decision is bounded
//! by `timeout`; a failure or timeout is a [`StoreError`] that the limiter's
//! failure policy turns into a decision. After a failed connection attempt
//! the store does not retry for `reconnect_backoff`, failing at once, so an
//! outage never makes callers wait.

use super::{Decision, Quota, RateLimitStore, StoreError};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// GCRA on the server. KEYS[1]: the key. ARGV[1]: emission interval in
/// microseconds (may be fractional). ARGV[2]: burst. Returns
/// `{allowed, remaining, reset_after_us, retry_after_us}`.
const GCRA_LUA: &str = r#"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local window = interval * burst
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1700000000) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local new_tat = tat + interval
local used = new_tat - now
if used > window + 0.01 then
  return {0, 0, math.ceil(tat - now), math.ceil(used - window)}
end
local ttl = math.max(1, math.ceil(used / 1000))
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', ttl)
return {1, math.floor((window - used) / interval + 0.01), math.ceil(used), 0}
"#;

/// Where the Redis store connects and how patient it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStoreConfig {
    /// `redis://host:port/db` (or `rediss://` with TLS support compiled in).
    pub url: String,
    /// Prepended to every key, so limits of different apps never meet.
    pub prefix: String,
    /// Longest a decision may take, connection included.
    pub timeout: Duration,
    /// After a failed connection attempt, fail at once for this long
    /// before trying again.
    pub reconnect_backoff: Duration,
}

impl RedisStoreConfig {
    /// Defaults for `url`: prefix `trellis:rl:`, 50 ms timeout, 1 s backoff.
    pub fn new(url: impl Into<String>) -> Self {
        RedisStoreConfig {
            url: url.into(),
            prefix: "trellis:rl:".to_owned(),
            timeout: Duration::from_millis(50),
            reconnect_backoff: Duration::from_secs(1),
        }
    }
}

/// Rate-limit state in Redis; see the module docs. Clones share a connection.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    config: RedisStoreConfig,
    conn: OnceCell<ConnectionManager>,
    down_until: Mutex<Option<Instant>>,
    script: Script,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("config", &self.shared.config)
            .field("connected", &self.shared.conn.initialized())
            .finish()
    }
}

impl RedisStore {
    /// A store for `config`. Only the URL is checked here; the connection
    /// is made on first use, so a gateway starts even while Redis is down.
    pub fn new(config: RedisStoreConfig) -> Result<Self, StoreError> {
        let client = Client::open(config.url.as_str())
            .map_err(|e| StoreError::Unavailable(format!("bad redis url {:?}: {e}", config.url)))?;
        Ok(RedisStore {
            shared: Arc::new(Shared {
                client,
                config,
                conn: OnceCell::new(),
                down_until: Mutex::new(None),
                script: Script::new(GCRA_LUA),
            }),
        })
    }

    /// One decision, in one round trip.
    pub async fn decide_now(&self, key: &str, quota: &Quota) -> Result<Decision, StoreError> {
        Shared::decide(self.shared.clone(), self.redis_key(key), *quota).await
    }

    fn redis_key(&self, key: &str) -> String {
        let prefix = &self.shared.config.prefix;
        let mut full = String::with_capacity(prefix.len() + key.len());
        full.push_str(prefix);
        full.push_str(key);
        full
    }
}

impl Shared {
    async fn decide(
        shared: Arc<Shared>,
        key: String,
        quota: Quota,
    ) -> Result<Decision, StoreError> {
        let timeout = shared.config.timeout;
        match tokio::time::timeout(timeout, shared.run(&key, &quota)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                if !shared.conn.initialized() {
                    // The connection attempt itself hung: back off as if it failed.
                    shared.back_off();
                }
                Err(StoreError::Timeout(timeout))
            }
        }
    }

    async fn run(&self, key: &str, quota: &Quota) -> Result<Decision, StoreError> {
        let mut conn = self.connection().await?;
        let interval_us = quota.interval_ns() as f64 / 1000.0;
        let reply: Vec<i64> = self
            .script
            .key(key)
            .arg(interval_us)
            .arg(quota.burst())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let [allowed, remaining, reset_us, retry_us] = reply[..] else {
            return Err(StoreError::Protocol(format!(
                "expected 4 integers from the GCRA script, got {reply:?}"
            )));
        };
        let micros = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
        Ok(Decision {
            allowed: allowed == 1,
            limit: u64::from(quota.burst()),
            remaining: u64::try_from(remaining).unwrap_or(0),
            reset_after: micros(reset_us),
            retry_after: micros(retry_us),
            window: quota.window(),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(conn) = self.conn.get() {
            return Ok(conn.clone());
        }
        if let Some(until) = *self.down_until.lock() {
            if Instant::now() < until {
                return Err(StoreError::Unavailable(
                    "not connected (waiting before the next attempt)".to_owned(),
                ));
            }
        }
        let timeout = self.config.timeout;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(1);
        let made = self
            .conn
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await;
        match made {
            Ok(conn) => Ok(conn.clone()),
            Err(e) => {
                self.back_off();
                Err(StoreError::Unavailable(e.to_string()))
            }
        }
    }

    fn back_off(&self) {
        *self.down_until.lock() = Some(Instant::now() + self.config.reconnect_backoff);
    }
}

impl<K> RateLimitStore<K> for RedisStore
where
    K: fmt::Display + Send + Sync + 'static,
{
    type Decide = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>;

    fn decide(&self, key: &K, quota: &Quota) -> Self::Decide {
        use std::fmt::Write;
        let mut full = self.shared.config.prefix.clone();
        // Writing to a String cannot fail.
        let _ = write!(full, "{key}");
        Box::pin(Shared::decide(self.shared.clone(), full, *quota))
    }
}
