//! The `[registry]` section of `trellis.toml`: defaults and limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Registry settings. Every field has a default, so `[registry]` may be empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Whether the node runs the registry at all.
    pub enabled: bool,
    /// The control API (`http://host:port`) of another Trellis node whose
    /// registry this node uses instead of running its own: gateway upstreams
    /// follow it and `trellis run` registers there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// Bearer token for `remote`'s control API, when it asks for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_token: Option<String>,
    /// `[registry.etcd]`: share the registry with other nodes through etcd
    /// (when `endpoints` is not empty) instead of keeping it in the store.
    pub etcd: crate::etcd::EtcdConfig,
    /// How long a critical instance stays listed (as critical) before it is
    /// removed, unless its registration says otherwise.
    #[serde(with = "crate::duration")]
    pub deregister_after: Duration,
    /// The longest a blocking query may wait (`wait=` is capped to this).
    #[serde(with = "crate::duration")]
    pub max_wait: Duration,
    /// Shortest and longest TTL a registration may ask for.
    #[serde(with = "crate::duration")]
    pub min_ttl: Duration,
    #[serde(with = "crate::duration")]
    pub max_ttl: Duration,
    /// Shortest active-check interval, so one registration cannot make the
    /// registry probe in a tight loop.
    #[serde(with = "crate::duration")]
    pub min_check_interval: Duration,
    /// Longest per-registration `deregister_after`.
    #[serde(with = "crate::duration")]
    pub max_deregister_after: Duration,
    /// Instances across all services; registrations beyond it are refused.
    pub max_instances: usize,
    pub max_tags: usize,
    pub max_tag_len: usize,
    pub max_meta_entries: usize,
    pub max_meta_key_len: usize,
    pub max_meta_value_len: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            enabled: true,
            remote: None,
            remote_token: None,
            etcd: crate::etcd::EtcdConfig::default(),
            deregister_after: Duration::from_secs(60),
            max_wait: Duration::from_secs(300),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(24 * 3600),
            min_check_interval: Duration::from_secs(1),
            max_deregister_after: Duration::from_secs(7 * 24 * 3600),
            max_instances: 100_000,
            max_tags: 64,
            max_tag_len: 128,
            max_meta_entries: 64,
            max_meta_key_len: 128,
            max_meta_value_len: 512,
        }
    }
}

impl RegistryConfig {
    /// Checks the section's values against each other; the error names the key.
    pub fn validate(&self) -> Result<(), crate::RegistryError> {
        let bad = |field: &str, reason: &str| {
            Err(crate::RegistryError::Invalid {
                field: field.to_owned(),
                reason: reason.to_owned(),
            })
        };
        if self.min_ttl.is_zero() {
            return bad("min_ttl", "must be more than 0s");
        }
        if self.max_ttl < self.min_ttl {
            return bad("max_ttl", "must be at least min_ttl");
        }
        if self.min_check_interval < Duration::from_millis(10) {
            return bad("min_check_interval", "must be at least 10ms");
        }
        if self.deregister_after > self.max_deregister_after {
            return bad("deregister_after", "must be at most max_deregister_after");
        }
        if self.max_wait.is_zero() {
            return bad("max_wait", "must be more than 0s");
        }
        if self.max_instances == 0 {
            return bad("max_instances", "must be at least 1");
        }
        for (i, url) in self.etcd.endpoints.iter().enumerate() {
            if !is_http_url(url) {
                return bad(
                    &format!("etcd.endpoints[{i}]"),
                    "must be an http:// client URL such as http://127.0.0.1:2379",
                );
            }
        }
        if !self.etcd.prefix.starts_with('/') {
            return bad("etcd.prefix", "must start with /");
        }
        if self.etcd.session_ttl < Duration::from_secs(2) {
            return bad(
                "etcd.session_ttl",
                "must be at least 2s (etcd's shortest lease)",
            );
        }
        if self.remote.as_deref().is_some_and(|u| !is_http_url(u)) {
            return bad(
                "remote",
                "must be the http:// URL of a Trellis node's control API, e.g. http://10.0.0.1:9900",
            );
        }
        Ok(())
    }
}

/// `http://host[:port][/…]`: what a control API or an etcd client URL looks like.
fn is_http_url(url: &str) -> bool {
    url.parse::<http::Uri>()
        .is_ok_and(|u| u.scheme_str() == Some("http") && u.authority().is_some())
}
