//! A cache of tokens whose signature has been verified, so a client sending
//! the same token on every request pays for one RSA or ECDSA check, not one
//! per request (as Envoy's `jwt_cache_config` does).
//!
//! What is cached is only the signature verdict and the claims: `exp`,
//! `nbf` and required claims are checked again on every hit. An entry lives
//! at most `ttl`, and a JWKS reload empties the cache so a key withdrawn by
//! the identity provider stops working at once. Entries are keyed by the
//! token's SHA-256, so the cache holds no usable token.

use jsonwebtoken::Algorithm;
use parking_lot::Mutex;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Clone)]
pub(crate) struct CachedToken {
    pub claims: Arc<Map<String, Value>>,
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    /// Unix seconds after which the entry is not used.
    expires_at: u64,
    /// The JWKS generation the verdict was reached under.
    generation: u64,
}

pub(crate) struct TokenCache {
    capacity: usize,
    ttl_secs: u64,
    entries: Mutex<HashMap<[u8; 32], CachedToken>>,
}

impl TokenCache {
    pub(crate) fn new(capacity: usize, ttl_secs: u64) -> Self {
        TokenCache {
            capacity,
            ttl_secs,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    pub(crate) fn get(&self, key: &[u8; 32], now: u64, generation: u64) -> Option<CachedToken> {
        let mut entries = self.entries.lock();
        match entries.get(key) {
            Some(entry) if entry.generation == generation && now < entry.expires_at => {
                Some(entry.clone())
            }
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub(crate) fn insert(
        &self,
        key: [u8; 32],
        claims: Arc<Map<String, Value>>,
        kid: Option<String>,
        algorithm: Algorithm,
        now: u64,
        generation: u64,
    ) {
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity {
            // Drop what is stale first; if the cache is still full of live
            // entries, start over rather than track recency on every hit.
            entries.retain(|_, e| e.generation == generation && now < e.expires_at);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(
            key,
            CachedToken {
                claims,
                kid,
                algorithm,
                expires_at: now.saturating_add(self.ttl_secs),
                generation,
            },
        );
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.lock().len()
    }
}
