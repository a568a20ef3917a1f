//! Meaning checks on a deserialized config: references between sections,
//! regexes, header names, ranges. Every problem is reported with its key path
//! so `trellis check` can point at it.

use super::{
    GatewayConfig, HashOn, HeaderRules, LbPolicy, Route, ServiceFrom, UpstreamConfig, ValueMatch,
};
use std::collections::HashSet;
use std::fmt;

/// One problem in a config, at a key path like `routes[2].upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }
}

impl GatewayConfig {
    /// Checks everything deserializing could not, returning every problem.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errs = Errors::default();
        let mut names = HashSet::new();
        let mut binds = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let at = format!("listeners[{i}]");
            if l.name.is_empty() {
                errs.push(format!("{at}.name"), "must not be empty");
            } else if !names.insert(l.name.as_str()) {
                errs.push(
                    format!("{at}.name"),
                    format!("duplicate listener name {:?}", l.name),
                );
            }
            if l.bind.port() != 0 && !binds.insert(l.bind) {
                errs.push(
                    format!("{at}.bind"),
                    format!("address {} is used by another listener", l.bind),
                );
            }
            if l.protocols.is_empty() {
                errs.push(
                    format!("{at}.protocols"),
                    "must name at least one of \"http1\", \"http2\"",
                );
            }
            let lim = &l.limits;
            // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
            if lim.max_header_bytes < 8192 {
                errs.push(
                    format!("{at}.limits.max_header_bytes"),
                    "must be at least 8192",
                );
            }
            if lim.max_headers == 0 {
                errs.push(format!("{at}.limits.max_headers"), "must be at least 1");
            }
            if lim.max_uri_bytes < 16 {
                errs.push(format!("{at}.limits.max_uri_bytes"), "must be at least 16");
            }
            if lim.header_read_timeout.is_zero() {
                errs.push(
                    format!("{at}.limits.header_read_timeout"),
                    "must be greater than zero",
                );
            }
            if lim.max_connections == 0 {
                errs.push(format!("{at}.limits.max_connections"), "must be at least 1");
            }
            if l.workers > 1024 {
                errs.push(format!("{at}.workers"), "must be at most 1024");
            }
            if let Some(tls) = &l.tls {
                if tls.certificates.is_empty() {
                    errs.push(
                        format!("{at}.tls.certificates"),
                        "must list at least one certificate",
                    );
                }
                for (j, c) in tls.certificates.iter().enumerate() {
                    for (k, n) in c.server_names.iter().enumerate() {
                        if let Err(m) = check_host(n) {
                            errs.push(format!("{at}.tls.certificates[{j}].server_names[{k}]"), m);
                        }
                    }
                }
            }
        }

        let mut route_names = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            if r.name.is_empty() {
                errs.push(format!("{at}.name"), "must not be empty");
            } else if !route_names.insert(r.name.as_str()) {
                errs.push(
                    format!("{at}.name"),
                    format!("duplicate route name {:?}", r.name),
                );
            }
            match self.upstreams.iter().find(|u| u.name == r.upstream) {
                None => errs.push(
                    format!("{at}.upstream"),
                    format!("unknown upstream {:?}", r.upstream),
                ),
                Some(u) => check_service_from(&at, r, u, &mut errs),
            }
            check_route(&at, r, &mut errs);
        }

        let mut up_names = HashSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            let at = format!("upstreams[{i}]");
            if u.name.is_empty() {
                errs.push(format!("{at}.name"), "must not be empty");
            } else if !up_names.insert(u.name.as_str()) {
                errs.push(
                    format!("{at}.name"),
                    format!("duplicate upstream name {:?}", u.name),
                );
            }
            check_upstream(&at, u, &mut errs);
        }
        if errs.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs.0))
        }
    }
}

/// A host name or `*.suffix` wildcard, lowercase, without a port.
pub(crate) fn check_host(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.is_empty() || name.contains('*') {
        return Err(format!(
            "invalid host {host:?}: write a name or \"*.example.com\""
        ));
    }
    if name
        .bytes()
        .any(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
    {
        return Err(format!(
            "invalid host {host:?}: only letters, digits, '-' and '.' (no port)"
        ));
    }
    Ok(())
}

fn check_route(at: &str, r: &Route, errs: &mut Errors) {
    let m = &r.matches;
    if let Some(h) = &m.host {
        if let Err(e) = check_host(h) {
            errs.push(format!("{at}.match.host"), e);
        }
    }
    let paths = [
        m.path.is_some(),
        m.path_prefix.is_some(),
        m.path_regex.is_some(),
    ];
    if paths.iter().filter(|p| **p).count() > 1 {
        errs.push(
            format!("{at}.match"),
            "give at most one of path, path_prefix, path_regex",
        );
    }
    for (key, p) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
        if let Some(p) = p {
            if !p.starts_with('/') {
                errs.push(
                    format!("{at}.match.{key}"),
                    format!("{p:?} must start with '/'"),
                );
            }
        }
    }
    if let Some(re) = &m.path_regex {
        if let Err(e) = regex::Regex::new(re) {
            errs.push(
                format!("{at}.match.path_regex"),
                format!("invalid regex: {e}"),
            );
        }
    }
    for (j, method) in m.methods.iter().enumerate() {
        if http::Method::from_bytes(method.as_bytes()).is_err() {
            errs.push(
                format!("{at}.match.methods[{j}]"),
                format!("invalid method {method:?}"),
            );
        }
    }
    for (j, h) in m.headers.iter().enumerate() {
        let p = format!("{at}.match.headers[{j}]");
        if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            errs.push(
                format!("{p}.name"),
                format!("invalid header name {:?}", h.name),
            );
        }
        check_value_match(&p, h, errs);
    }
    for (j, q) in m.query.iter().enumerate() {
        let p = format!("{at}.match.query[{j}]");
        if q.name.is_empty() {
            errs.push(format!("{p}.name"), "must not be empty");
        }
        check_value_match(&p, q, errs);
    }
    if let Some(rw) = &r.rewrite {
        if m.path_prefix.is_none() {
            errs.push(
                format!("{at}.rewrite"),
                "a prefix rewrite needs match.path_prefix",
            );
        }
        match (&rw.replace_prefix, rw.strip_prefix) {
            (Some(_), true) => errs.push(
                format!("{at}.rewrite"),
                "give strip_prefix or replace_prefix, not both",
            ),
            (None, false) => errs.push(
                format!("{at}.rewrite"),
                "give strip_prefix = true or replace_prefix",
            ),
            (Some(p), false) if !p.starts_with('/') => errs.push(
                format!("{at}.rewrite.replace_prefix"),
                format!("{p:?} must start with '/'"),
            ),
            _ => {}
        }
    }
    check_header_rules(&format!("{at}.request_headers"), &r.request_headers, errs);
    check_header_rules(&format!("{at}.response_headers"), &r.response_headers, errs);
    for (key, d) in [
        ("timeout", r.timeout),
        ("per_try_timeout", r.per_try_timeout),
    ] {
        if d.is_some_and(|d| d.is_zero()) {
            errs.push(format!("{at}.{key}"), "must be greater than zero");
        }
    }
    if let Some(retry) = &r.retry {
        if !(1..=10).contains(&retry.attempts) {
            errs.push(format!("{at}.retry.attempts"), "must be between 1 and 10");
        }
        if retry.max_backoff < retry.backoff {
            errs.push(
                format!("{at}.retry.max_backoff"),
                "must not be less than backoff",
            );
        }
        if !(0.0..=100.0).contains(&retry.budget_percent) {
            errs.push(
                format!("{at}.retry.budget_percent"),
                "must be between 0 and 100",
            );
        }
        for (j, s) in retry.retry_on_status.iter().enumerate() {
            if !(500..=599).contains(s) {
                errs.push(
                    format!("{at}.retry.retry_on_status[{j}]"),
                    format!("{s} is not a 5xx status"),
                );
            }
        }
    }
    if r.websocket_idle_timeout.is_zero() {
        errs.push(
            format!("{at}.websocket_idle_timeout"),
            "must be greater than zero",
        );
    }
    if let Some(cors) = &r.cors {
        for (path, e) in crate::policy::check_cors(cors) {
            errs.push(format!("{at}.cors{path}"), e);
        }
    }
    if let Some(b) = &r.breaker {
        if let Err(e) = crate::policy::breaker(b, &r.name) {
            errs.push(format!("{at}.breaker"), e);
        }
    }
    if let Some(b) = &r.bulkhead {
        if let Err(e) = crate::policy::bulkhead(b) {
            errs.push(format!("{at}.bulkhead"), e);
        }
    }
    if let Some(rl) = &r.rate_limit {
        if let Err((key, e)) = crate::policy::check_rate_limit(rl, r.auth.is_some()) {
            errs.push(format!("{at}.rate_limit.{key}"), e);
        }
    }
    if let Some(auth) = &r.auth {
        for (path, e) in crate::policy::check_auth(auth) {
            errs.push(format!("{at}.auth{path}"), e);
        }
    }
}

fn check_value_match(at: &str, v: &ValueMatch, errs: &mut Errors) {
    if v.value.is_some() && v.regex.is_some() {
        errs.push(at.to_owned(), "give value or regex, not both");
    }
    if let Some(re) = &v.regex {
        if let Err(e) = regex::Regex::new(re) {
            errs.push(format!("{at}.regex"), format!("invalid regex: {e}"));
        }
    }
}

fn check_header_rules(at: &str, rules: &HeaderRules, errs: &mut Errors) {
    for (j, name) in rules.remove.iter().enumerate() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errs.push(
                format!("{at}.remove[{j}]"),
                format!("invalid header name {name:?}"),
            );
        }
    }
    for (key, map) in [("set", &rules.set), ("add", &rules.add)] {
        for (name, value) in map {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                errs.push(format!("{at}.{key}.{name}"), "invalid header name");
            }
            if http::HeaderValue::from_str(value).is_err() {
                errs.push(
                    format!("{at}.{key}.{name}"),
                    format!("invalid header value {value:?}"),
                );
            }
        }
    }
}

/// A route to a service-by-name upstream says where the service is named,
/// and only such a route does.
fn check_service_from(at: &str, r: &Route, u: &UpstreamConfig, errs: &mut Errors) {
    let by_name = u.service.as_deref() == Some("*");
    match (&r.service_from, by_name) {
        (None, true) => errs.push(
            format!("{at}.service_from"),
            format!(
                "upstream {:?} serves services by name (service = \"*\"); say where the request names one: \"path\", \"host\" or \"header:<name>\"",
                u.name
            ),
        ),
        (Some(_), false) => errs.push(
            format!("{at}.service_from"),
            format!(
                "only routes to a service-by-name upstream (service = \"*\") take service_from; {:?} is not one",
                u.name
            ),
        ),
        (Some(ServiceFrom::Path), true) => {
            if r.matches.path_prefix.is_none() {
                errs.push(
                    format!("{at}.match.path_prefix"),
                    "service_from = \"path\" takes the service from the segment after match.path_prefix, so the route needs one",
                );
            }
            if r.rewrite.is_some() {
                errs.push(
                    format!("{at}.rewrite"),
                    "service_from = \"path\" already removes the prefix and the service segment; drop rewrite",
                );
            }
        }
        _ => {}
    }
}

fn check_upstream(at: &str, u: &UpstreamConfig, errs: &mut Errors) {
    if let Some(service) = &u.service {
        if !u.endpoints.is_empty() {
            errs.push(
                format!("{at}.service"),
                "give either `service` (follow the registry) or `endpoints`, not both",
            );
        }
        if service.is_empty() {
            errs.push(format!("{at}.service"), "must name a service");
        }
    }
    for (j, e) in u.endpoints.iter().enumerate() {
        let p = format!("{at}.endpoints[{j}]");
        match e.address().parse::<http::uri::Authority>() {
            Ok(a) if a.port_u16().is_some() && !a.as_str().contains('@') => {}
            _ => errs.push(
                p.clone(),
                format!("invalid address {:?}: write host:port", e.address()),
            ),
        }
        if e.weight() == 0 {
            errs.push(format!("{p}.weight"), "must be at least 1");
        }
    }
    let lb = &u.load_balancer;
    match (lb.policy, &lb.hash_on) {
        (LbPolicy::ConsistentHash, None) => errs.push(
            format!("{at}.load_balancer.hash_on"),
            "consistent_hash needs hash_on (header, cookie or path_segment)",
        ),
        (LbPolicy::ConsistentHash, Some(h)) => {
            check_hash_on(&format!("{at}.load_balancer.hash_on"), h, errs)
        }
        (_, Some(_)) => errs.push(
            format!("{at}.load_balancer.hash_on"),
            "only used with policy = \"consistent_hash\"",
        ),
        _ => {}
    }
    if let Some(hc) = &u.health_check {
        let p = format!("{at}.health_check");
        if hc.path.as_deref().is_some_and(|p| !p.starts_with('/')) {
            errs.push(format!("{p}.path"), "must start with '/'");
        }
        if hc.interval.is_zero() {
            errs.push(format!("{p}.interval"), "must be greater than zero");
        }
        if hc.timeout.is_zero() {
            errs.push(format!("{p}.timeout"), "must be greater than zero");
        }
        if hc.healthy_threshold == 0 {
            errs.push(format!("{p}.healthy_threshold"), "must be at least 1");
        }
        if hc.unhealthy_threshold == 0 {
            errs.push(format!("{p}.unhealthy_threshold"), "must be at least 1");
        }
    }
    if let Some(od) = &u.outlier_detection {
        let p = format!("{at}.outlier_detection");
        if od.consecutive_failures == 0 {
            errs.push(format!("{p}.consecutive_failures"), "must be at least 1");
        }
        if od.base_ejection_time.is_zero() {
            errs.push(
                format!("{p}.base_ejection_time"),
                "must be greater than zero",
            );
        }
        if od.max_ejection_percent > 100 {
            errs.push(
                format!("{p}.max_ejection_percent"),
                "must be between 0 and 100",
            );
        }
    }
    if u.pool.connect_timeout.is_zero() {
        errs.push(
            format!("{at}.pool.connect_timeout"),
            "must be greater than zero",
        );
    }
    if u.pool.max_requests_per_endpoint == Some(0) {
        errs.push(
            format!("{at}.pool.max_requests_per_endpoint"),
            "must be at least 1",
        );
    }
}

fn check_hash_on(at: &str, h: &HashOn, errs: &mut Errors) {
    let given = [
        h.header.is_some(),
        h.cookie.is_some(),
        h.path_segment.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        errs.push(
            at.to_owned(),
            "give exactly one of header, cookie, path_segment",
        );
    }
    if let Some(name) = &h.header {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errs.push(
                format!("{at}.header"),
                format!("invalid header name {name:?}"),
            );
        }
    }
}
