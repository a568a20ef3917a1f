//! A JWKS cache: keys loaded from a file or URL, reloaded every
//! `refresh_interval` by a background task and on demand when a token names
//! an unknown `kid` (at most once per `min_refresh_interval`, and with
//! concurrent requests sharing one fetch). A failed reload keeps serving the
//! last good set, so an identity provider's outage does not log everyone out.

use super::keys::{parse_jwks, VerificationKey};
use jsonwebtoken::Algorithm;
use parking_lot::{Mutex, RwLock};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// A JWKS larger than this is refused: real ones are a few kilobytes.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

pub(crate) type KeySet = Arc<Vec<Arc<VerificationKey>>>;

#[derive(Debug, Clone)]
pub(crate) enum JwksLocation {
    File(PathBuf),
    Url(reqwest::Url),
}

impl std::fmt::Display for JwksLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksLocation::File(path) => write!(f, "{}", path.display()),
            JwksLocation::Url(url) => write!(f, "{url}"),
        }
    }
}

/// The health of one JWKS source, for status pages and the control API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksStatus {
    /// The file path or URL.
    pub source: String,
    /// Keys currently served.
    pub keys: usize,
    /// When the current set was loaded.
    pub last_success: Option<SystemTime>,
    /// Why the latest reload failed, if it did.
    pub last_error: Option<String>,
    /// Reloads failed in a row.
    pub consecutive_failures: u32,
    /// Loads attempted since start (file reads or HTTP requests).
    pub fetches: u64,
}

pub(crate) struct JwksSource {
    location: JwksLocation,
    client: Option<reqwest::Client>,
    allowed: Vec<Algorithm>,
    keys: RwLock<KeySet>,
    /// Bumped on every successful reload, so a request that waited for
    /// someone else's reload knows to look again instead of fetching again.
    generation: AtomicU64,
    /// Held while reloading; holds the time of the last attempt.
    reload: tokio::sync::Mutex<Option<Instant>>,
    refresh_interval: Duration,
    min_refresh_interval: Duration,
    status: Mutex<JwksStatus>,
}

impl std::fmt::Debug for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksSource")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl JwksSource {
    pub(crate) fn new(
        location: JwksLocation,
        allowed: Vec<Algorithm>,
        refresh_interval: Duration,
        min_refresh_interval: Duration,
        fetch_timeout: Duration,
    ) -> Result<Arc<Self>, String> {
        let client = match &location {
            JwksLocation::Url(_) => Some(
                reqwest::Client::builder()
                    .timeout(fetch_timeout)
                    .user_agent(concat!("trellis-auth/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| format!("cannot build an HTTP client: {e}"))?,
            ),
            JwksLocation::File(_) => None,
        };
        Ok(Arc::new(JwksSource {
            status: Mutex::new(JwksStatus {
                source: location.to_string(),
                keys: 0,
                last_success: None,
                last_error: None,
                consecutive_failures: 0,
                fetches: 0,
            }),
            location,
            client,
            allowed,
            keys: RwLock::new(Arc::new(Vec::new())),
            generation: AtomicU64::new(0),
            reload: tokio::sync::Mutex::new(None),
            refresh_interval,
            min_refresh_interval,
        }))
    }

    pub(crate) fn keys(&self) -> KeySet {
        self.keys.read().clone()
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn status(&self) -> JwksStatus {
        self.status.lock().clone()
    }

    /// Reloads now, whatever the rate limit says (startup, scheduled reloads).
    pub(crate) async fn reload(&self) -> Result<usize, String> {
        let mut last_attempt = self.reload.lock().await;
        *last_attempt = Some(Instant::now());
        self.reload_locked().await
    }

    /// Reloads because a token named a `kid` we do not have. Returns whether
    /// the key set may have changed since `seen_generation`, i.e. whether the
    /// caller should look its `kid` up again.
    pub(crate) async fn reload_for_unknown_kid(&self, seen_generation: u64) -> bool {
        let mut last_attempt = self.reload.lock().await;
        if self.generation() != seen_generation {
            return true;
        }
        if let Some(at) = *last_attempt {
            if at.elapsed() < self.min_refresh_interval {
                return false;
            }
        }
        *last_attempt = Some(Instant::now());
        self.reload_locked().await.is_ok()
    }

    async fn reload_locked(&self) -> Result<usize, String> {
        self.status.lock().fetches += 1;
        let result = match self.load().await {
            Ok(body) => parse_jwks(&body, &self.allowed),
            Err(e) => Err(e),
        };
        let mut status = self.status.lock();
        match result {
            Ok(keys) => {
                let count = keys.len();
                *self.keys.write() = Arc::new(keys);
                self.generation.fetch_add(1, Ordering::AcqRel);
                status.keys = count;
                status.last_success = Some(SystemTime::now());
                status.last_error = None;
                status.consecutive_failures = 0;
                tracing::debug!(source = %self.location, keys = count, "JWKS loaded");
                Ok(count)
            }
            Err(error) => {
                status.last_error = Some(error.clone());
                status.consecutive_failures = status.consecutive_failures.saturating_add(1);
                tracing::warn!(
                    source = %self.location,
                    %error,
                    serving_keys = status.keys,
                    "JWKS reload failed; keeping the last good key set"
                );
                Err(error)
            }
        }
    }

    async fn load(&self) -> Result<Vec<u8>, String> {
        match (&self.location, &self.client) {
            (JwksLocation::File(path), _) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                if bytes.len() > MAX_JWKS_BYTES {
                    return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
                }
                Ok(bytes)
            }
            (JwksLocation::Url(url), Some(client)) => fetch(client, url).await,
            (JwksLocation::Url(_), None) => Err("no HTTP client".to_owned()),
        }
    }

    /// Starts the periodic reload. The task holds only a weak reference and
    /// ends once the verifier is dropped (e.g. replaced by a config reload).
    pub(crate) fn spawn_refresher(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(source = %self.location, "no tokio runtime: JWKS reloads only on unknown kid");
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        let every = self.refresh_interval;
        let retry_floor = self.min_refresh_interval.max(Duration::from_secs(1));
        // The first deadline counts from now (the load that just happened),
        // not from whenever the runtime first polls the task.
        let mut next = Instant::now() + self.next_delay(every, retry_floor);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep_until(next).await;
                let Some(source) = weak.upgrade() else { return };
                let _ = source.reload().await;
                next = Instant::now() + source.next_delay(every, retry_floor);
            }
        });
    }

    /// The normal interval, or after failures a backoff from `retry_floor`
    /// doubling up to that interval.
    fn next_delay(&self, every: Duration, retry_floor: Duration) -> Duration {
        let failures = self.status.lock().consecutive_failures;
        if failures == 0 {
            every
        } else {
            retry_floor
                .saturating_mul(1 << (failures - 1).min(16))
                .min(every)
        }
    }
}

async fn fetch(client: &reqwest::Client, url: &reqwest::Url) -> Result<Vec<u8>, String> {
    let mut response = client
        .get(url.clone())
        .header(
            http::header::ACCEPT,
            "application/jwk-set+json, application/json",
        )
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading body: {e}"))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
