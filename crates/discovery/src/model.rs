//! What the registry holds: registrations as a service submits them, the
//! instances it serves back, their health, and the rules a registration must
//! pass before anything is written.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::RegistryConfig;
use crate::error::RegistryError;

/// Health of one instance, in Consul's three levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Up and taking traffic.
    Passing,
    /// Degraded but still served (e.g. an HTTP check answering `429`).
    Warning,
    /// Down: not served, and removed after the deregister grace.
    Critical,
}

impl Status {
    /// Whether discovery serves an instance in this state by default.
    pub fn is_served(self) -> bool {
        !matches!(self, Status::Critical)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }
}

/// How the registry probes an instance it checks actively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// `GET <path>` on the instance's address; 2xx passes, 429 warns, anything else fails.
    Http,
    /// A TCP connect to the instance's address.
    Tcp,
    /// The gRPC health protocol (`grpc.health.v1.Health/Check`) over
    /// cleartext HTTP/2: `SERVING` passes, anything else fails.
    Grpc,
}

/// An active health check the registry runs against the instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// Request path for `http` checks, starting with `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The service name a `grpc` check asks about; empty or absent asks
    /// about the server as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_service: Option<String>,
    #[serde(default = "default_interval", with = "crate::duration")]
    pub interval: Duration,
    #[serde(default = "default_timeout", with = "crate::duration")]
    pub timeout: Duration,
    /// Consecutive passes that bring a failing instance back.
    #[serde(default = "one")]
    pub success_threshold: u32,
    /// Consecutive failures that make a passing instance critical.
    #[serde(default = "three")]
    pub failure_threshold: u32,
}

fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}

/// What a service submits to register one instance (the service name and
/// instance id come from the URL / call, not the body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// An IP address or DNS host name, without port or scheme.
    pub address: String,
    pub port: u16,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// The instance must heartbeat within this long or become critical.
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// The registry probes the instance itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<HealthCheck>,
    /// How long a critical instance stays listed before it is removed;
    /// the registry's `deregister_after` when absent.
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub deregister_after: Option<Duration>,
}

impl Registration {
    /// A registration with no health mechanism (passing until deregistered).
    pub fn new(address: impl Into<String>, port: u16) -> Self {
        Registration {
            address: address.into(),
            port,
            tags: Vec::new(),
            meta: BTreeMap::new(),
            ttl: None,
            check: None,
            deregister_after: None,
        }
    }

    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    pub fn with_check(mut self, check: HealthCheck) -> Self {
        self.check = Some(check);
        self
    }

    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    pub fn with_meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta.insert(key.into(), value.into());
        self
    }

    /// `host:port`, with IPv6 addresses bracketed.
    pub fn authority(&self) -> String {
        match self.address.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            _ => format!("{}:{}", self.address, self.port),
        }
    }

    /// Checks every field against the registry's limits; the error names the first bad field.
    pub fn validate(&self, limits: &RegistryConfig) -> Result<(), RegistryError> {
        validate_address(&self.address)?;
        if self.port == 0 {
            return Err(invalid("port", "must be between 1 and 65535"));
        }
        if self.tags.len() > limits.max_tags {
            return Err(invalid(
                "tags",
                format!("at most {} tags are allowed", limits.max_tags),
            ));
        }
        for (i, tag) in self.tags.iter().enumerate() {
            if tag.is_empty() || tag.len() > limits.max_tag_len || tag.chars().any(char::is_control)
            {
                return Err(invalid(
                    &format!("tags[{i}]"),
                    format!(
                        "must be 1 to {} characters without control characters",
                        limits.max_tag_len
                    ),
                ));
            }
        }
        if self.meta.len() > limits.max_meta_entries {
            return Err(invalid(
                "meta",
                format!("at most {} entries are allowed", limits.max_meta_entries),
            ));
        }
        for (k, v) in &self.meta {
            if !is_meta_key(k, limits.max_meta_key_len) {
                return Err(invalid(
                    &format!("meta.{}", shown(k)),
                    format!(
                        "keys are 1 to {} of A-Z a-z 0-9 _ . -",
                        limits.max_meta_key_len
                    ),
                ));
            }
            if v.len() > limits.max_meta_value_len || v.chars().any(char::is_control) {
                return Err(invalid(
                    &format!("meta.{k}"),
                    format!(
                        "values are at most {} bytes without control characters",
                        limits.max_meta_value_len
                    ),
                ));
            }
        }
        if self.ttl.is_some() && self.check.is_some() {
            return Err(invalid(
                "check",
                "give either a ttl (heartbeats) or a check (probes), not both",
            ));
        }
        if let Some(ttl) = self.ttl {
            if ttl < limits.min_ttl || ttl > limits.max_ttl {
                return Err(invalid(
                    "ttl",
                    format!(
                        "must be between {} and {}",
                        humantime::format_duration(limits.min_ttl),
                        humantime::format_duration(limits.max_ttl)
                    ),
                ));
            }
        }
        if let Some(check) = &self.check {
            validate_check(check, limits)?;
        }
        if let Some(grace) = self.deregister_after {
            if grace > limits.max_deregister_after {
                return Err(invalid(
                    "deregister_after",
                    format!(
                        "must be at most {}",
                        humantime::format_duration(limits.max_deregister_after)
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn validate_check(check: &HealthCheck, limits: &RegistryConfig) -> Result<(), RegistryError> {
    match (check.kind, &check.path) {
        (CheckKind::Http, None) => return Err(invalid("check.path", "an http check needs a path")),
        (CheckKind::Http, Some(p)) => {
            if !p.starts_with('/')
                || p.len() > 1024
                || p.chars().any(|c| c.is_whitespace() || c.is_control())
                || p.parse::<http::uri::PathAndQuery>().is_err()
            {
                return Err(invalid(
                    "check.path",
                    "must be an absolute path such as /healthz (at most 1024 characters)",
                ));
            }
        }
        (CheckKind::Tcp | CheckKind::Grpc, Some(_)) => {
            return Err(invalid("check.path", "only an http check takes a path"))
        }
        (CheckKind::Tcp | CheckKind::Grpc, None) => {}
    }
    match (check.kind, &check.grpc_service) {
        (CheckKind::Grpc, Some(name))
            if name.len() > 256 || name.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            return Err(invalid(
                "check.grpc_service",
                "must be a gRPC service name such as orders.v1.Orders (at most 256 characters)",
            ));
        }
        (CheckKind::Http | CheckKind::Tcp, Some(_)) => {
            return Err(invalid(
                "check.grpc_service",
                "only a grpc check takes a grpc_service",
            ));
        }
        _ => {}
    }
    if check.interval < limits.min_check_interval || check.interval > Duration::from_secs(3600) {
        return Err(invalid(
            "check.interval",
            format!(
                "must be between {} and 1h",
                humantime::format_duration(limits.min_check_interval)
            ),
        ));
    }
    if check.timeout < Duration::from_millis(10) || check.timeout > check.interval {
        return Err(invalid(
            "check.timeout",
            "must be at least 10ms and no longer than the interval",
        ));
    }
    for (field, n) in [
        ("check.success_threshold", check.success_threshold),
        ("check.failure_threshold", check.failure_threshold),
    ] {
        if !(1..=100).contains(&n) {
            return Err(invalid(field, "must be between 1 and 100"));
        }
    }
    Ok(())
}

fn invalid(field: &str, reason: impl Into<String>) -> RegistryError {
    RegistryError::Invalid {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

fn shown(s: &str) -> String {
    s.chars().take(40).filter(|c| !c.is_control()).collect()
}

fn is_meta_key(k: &str, max: usize) -> bool {
    !k.is_empty()
        && k.len() <= max
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Service names and instance ids: 1–128 of `A-Z a-z 0-9 _ . - :`, starting
/// with a letter or digit, so they are safe in URLs, keys and log lines.
pub fn validate_name(field: &str, name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "{:?} is not 1 to 128 of A-Z a-z 0-9 _ . - : starting with a letter or digit",
                shown(name)
            ),
        ))
    }
}

fn validate_address(address: &str) -> Result<(), RegistryError> {
    if address.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    let host = address.strip_suffix('.').unwrap_or(address);
    if !host.is_empty() && host.len() <= 253 && host.split('.').all(label_ok) {
        return Ok(());
    }
    Err(invalid(
        "address",
        format!(
            "{:?} is neither an IP address nor a DNS host name (no scheme or port)",
            shown(address)
        ),
    ))
}

/// One instance as discovery returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub service: String,
    pub id: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub status: Status,
    /// The last check's or heartbeat's note (why it is warning or critical).
    pub output: String,
    /// `ttl`, `http`, `tcp` or `none`.
    pub health: String,
    /// The registry index at which this instance was registered.
    pub create_index: u64,
    /// The registry index of its last change (registration or status).
    pub modify_index: u64,
}

impl Instance {
    /// `host:port`, with IPv6 addresses bracketed.
    pub fn authority(&self) -> String {
        match self.address.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            _ => format!("{}:{}", self.address, self.port),
        }
    }
}

/// Which instances a discovery returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Every tag listed must be present.
    pub tags: Vec<String>,
    /// Every key must be present with exactly this value.
    pub meta: BTreeMap<String, String>,
    /// Also return critical instances (default: served ones only).
    pub include_unhealthy: bool,
}

impl Filter {
    pub fn matches(&self, i: &Instance) -> bool {
        (self.include_unhealthy || i.status.is_served())
            && self.tags.iter().all(|t| i.tags.contains(t))
            && self.meta.iter().all(|(k, v)| i.meta.get(k) == Some(v))
    }
}

/// One service in the listing, with health counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    pub name: String,
    pub instances: usize,
    pub passing: usize,
    pub warning: usize,
    pub critical: usize,
    /// Union of its instances' tags.
    pub tags: Vec<String>,
}

/// What changed, as watches report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Registered,
    Deregistered,
    /// The instance's health status changed.
    Health,
    /// The watcher fell behind and missed changes: re-read what it follows.
    Resync,
}

/// One change, in index order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub index: u64,
    pub kind: ChangeKind,
    pub service: String,
    pub id: String,
    /// The instance after the change; absent when it was removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<Instance>,
}
