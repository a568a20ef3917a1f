//! The compiled route table of a route set: routes grouped by host kind and
//! sorted by the precedence documented in [`crate::config`], with regexes
//! compiled and header names parsed once, so matching a request allocates
//! nothing (except when its Host header has capital letters).

use crate::config::{HeaderRules, Route, ServiceFrom, ValueMatch};
use crate::metrics::RouteMetrics;
use crate::proxy::GatewayError;
use crate::upstream::{ServiceDirectory, Upstream};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug)]
enum PathMatcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
    Any,
}

impl PathMatcher {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatcher::Exact(p) => path == p,
            PathMatcher::Prefix(p) => {
                path.starts_with(p.as_str())
                    && (p.ends_with('/')
                        || path.len() == p.len()
                        || path.as_bytes()[p.len()] == b'/')
            }
            PathMatcher::Regex(r) => r.is_match(path),
            PathMatcher::Any => true,
        }
    }

    /// Sort key: exact, then longer prefixes, then regex, then none.
    fn rank(&self) -> (u8, std::cmp::Reverse<usize>) {
        match self {
            PathMatcher::Exact(_) => (0, std::cmp::Reverse(0)),
            PathMatcher::Prefix(p) => (1, std::cmp::Reverse(p.len())),
            PathMatcher::Regex(_) => (2, std::cmp::Reverse(0)),
            PathMatcher::Any => (3, std::cmp::Reverse(0)),
        }
    }
}

#[derive(Debug)]
enum ValueMatcher {
    Present,
    Exact(String),
    Regex(Regex),
}

impl ValueMatcher {
    fn compile(v: &ValueMatch) -> Result<ValueMatcher, regex::Error> {
        Ok(match (&v.value, &v.regex) {
            (Some(val), _) => ValueMatcher::Exact(val.clone()),
            (None, Some(re)) => ValueMatcher::Regex(Regex::new(&format!("^(?:{re})$"))?),
            (None, None) => ValueMatcher::Present,
        })
    }

    fn matches(&self, value: &[u8]) -> bool {
        match self {
            ValueMatcher::Present => true,
            ValueMatcher::Exact(v) => v.as_bytes() == value,
            ValueMatcher::Regex(r) => std::str::from_utf8(value).is_ok_and(|s| r.is_match(s)),
        }
    }
}

/// Header edits with names and values parsed once.
#[derive(Debug, Default)]
pub(crate) struct HeaderEdits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderEdits {
    pub(crate) fn compile(rules: &HeaderRules) -> HeaderEdits {
        let pairs = |m: &std::collections::BTreeMap<String, String>| {
            m.iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect()
        };
        HeaderEdits {
            remove: rules
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
            set: pairs(&rules.set),
            add: pairs(&rules.add),
        }
    }

    /// Whether the edits replace or remove the fields named `name` (any case).
    #[inline]
    pub(crate) fn drops(&self, name: &[u8]) -> bool {
        // Most routes edit nothing: that answer should cost one comparison.
        if self.remove.is_empty() && self.set.is_empty() {
            return false;
        }
        let same = |n: &HeaderName| name.eq_ignore_ascii_case(n.as_str().as_bytes());
        self.remove.iter().any(same) || self.set.iter().any(|(n, _)| same(n))
    }

    /// Fields the edits write.
    pub(crate) fn written(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.set.iter().chain(&self.add).map(|(n, v)| (n, v))
    }

    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

/// Where a route forwards: one upstream, or the upstream of the service the
/// request names.
#[derive(Debug)]
pub(crate) enum RouteTarget {
    Upstream(Arc<Upstream>),
    Service {
        directory: Arc<ServiceDirectory>,
        from: ServiceFrom,
    },
}

/// The upstream a request goes to: the route's own, borrowed, or the one of
/// the service it named, shared with the directory.
pub(crate) enum Resolved<'a> {
    Route(&'a Upstream),
    Service(Arc<Upstream>),
}

impl std::ops::Deref for Resolved<'_> {
    type Target = Upstream;

    fn deref(&self) -> &Upstream {
        match self {
            Resolved::Route(u) => u,
            Resolved::Service(u) => u,
        }
    }
}

impl RouteTarget {
    /// The protocol spoken to the upstream (or the template's).
    pub(crate) fn protocol(&self) -> crate::config::UpstreamProtocol {
        match self {
            RouteTarget::Upstream(u) => u.protocol(),
            RouteTarget::Service { directory, .. } => directory.protocol(),
        }
    }

    /// The upstream's (or service-by-name template's) configured name.
    pub(crate) fn name(&self) -> &str {
        match self {
            RouteTarget::Upstream(u) => u.name(),
            RouteTarget::Service { directory, .. } => directory.name(),
        }
    }
}

/// A route ready to serve: its matcher, its upstream and its policies.
#[derive(Debug)]
pub(crate) struct CompiledRoute {
    pub(crate) name: Arc<str>,
    path: PathMatcher,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, ValueMatcher)>,
    query: Vec<(String, ValueMatcher)>,
    rewrite: Option<String>,
    pub(crate) target: RouteTarget,
    pub(crate) request_headers: HeaderEdits,
    pub(crate) response_headers: HeaderEdits,
    pub(crate) timeout: Option<Duration>,
    pub(crate) per_try_timeout: Option<Duration>,
    pub(crate) retry: Option<crate::proxy::RetryState>,
    pub(crate) websocket_idle_timeout: Duration,
    pub(crate) metrics: RouteMetrics,
    pub(crate) policies: crate::policy::RoutePolicies,
}

impl CompiledRoute {
    /// Compiles a validated route. Errors only on a config that skipped `validate()`.
    pub(crate) fn compile(
        r: &Route,
        target: RouteTarget,
        metrics: RouteMetrics,
    ) -> Result<Self, String> {
        let m = &r.matches;
        let path = match (&m.path, &m.path_prefix, &m.path_regex) {
            (Some(p), _, _) => PathMatcher::Exact(p.clone()),
            (None, Some(p), _) => PathMatcher::Prefix(p.clone()),
            (None, None, Some(re)) => PathMatcher::Regex(
                Regex::new(&format!("^(?:{re})$")).map_err(|e| format!("route {}: {e}", r.name))?,
            ),
            _ => PathMatcher::Any,
        };
        let methods = m
            .methods
            .iter()
            .filter_map(|s| Method::from_bytes(s.as_bytes()).ok())
            .collect();
        let mut headers = Vec::new();
        for h in &m.headers {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|e| format!("route {}: {e}", r.name))?;
            headers.push((
                name,
                ValueMatcher::compile(h).map_err(|e| format!("route {}: {e}", r.name))?,
            ));
        }
        let mut query = Vec::new();
        for q in &m.query {
            query.push((
                q.name.clone(),
                ValueMatcher::compile(q).map_err(|e| format!("route {}: {e}", r.name))?,
            ));
        }
        let rewrite = r
            .rewrite
            .as_ref()
            .map(|rw| rw.replace_prefix.clone().unwrap_or_default());
        Ok(CompiledRoute {
            name: Arc::from(r.name.as_str()),
            path,
            methods,
            headers,
            query,
            rewrite,
            target,
            request_headers: HeaderEdits::compile(&r.request_headers),
            response_headers: HeaderEdits::compile(&r.response_headers),
            timeout: r.timeout,
            per_try_timeout: r.per_try_timeout,
            retry: r.retry.as_ref().map(crate::proxy::RetryState::new),
            websocket_idle_timeout: r.websocket_idle_timeout,
            metrics,
            policies: crate::policy::RoutePolicies::default(),
        })
    }

    /// Whether the native HTTP/1.1 engine (`crate::h1`) can serve this
    /// route: no policy that works on hyper's request types (auth, CORS),
    /// and an upstream that speaks HTTP/1.1.
    pub(crate) fn native_h1(&self) -> bool {
        self.policies.auth.is_none()
            && self.policies.cors.is_none()
            && self.target.protocol() == crate::config::UpstreamProtocol::Http1
    }

    fn conditions(&self) -> usize {
        usize::from(!self.methods.is_empty()) + self.headers.len() + self.query.len()
    }

    fn matches(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> bool {
        if !self.path.matches(path) {
            return false;
        }
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        let headers_ok = self.headers.iter().all(|(name, m)| {
            headers
                .get_all(name)
                .iter()
                .any(|v| m.matches(v.as_bytes()))
        });
        headers_ok
            && self.query.iter().all(|(name, m)| {
                query.is_some_and(|q| {
                    q.split('&').any(|pair| {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        k == name && m.matches(v.as_bytes())
                    })
                })
            })
    }

    /// The upstream for this request and, when the service was named in the
    /// path, the path to send it (without the prefix and service segment).
    pub(crate) async fn resolve(
        &self,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Result<(Resolved<'_>, Option<String>), GatewayError> {
        let (directory, from) = match &self.target {
            RouteTarget::Upstream(u) => return Ok((Resolved::Route(u), None)),
            RouteTarget::Service { directory, from } => (directory, from),
        };
        let (service, path) = match from {
            ServiceFrom::Host => (
                request_host_of(uri, headers).ok_or(GatewayError::InvalidService)?,
                None,
            ),
            ServiceFrom::Header(name) => (
                headers
                    .get(name.as_str())
                    .and_then(|v| v.to_str().ok())
                    .ok_or(GatewayError::InvalidService)?,
                None,
            ),
            ServiceFrom::Path => {
                let PathMatcher::Prefix(prefix) = &self.path else {
                    return Err(GatewayError::InvalidService);
                };
                let rest = uri.path().get(prefix.len()..).unwrap_or("");
                let rest = rest.strip_prefix('/').unwrap_or(rest);
                let (service, tail) = rest.split_once('/').unwrap_or((rest, ""));
                let mut path = String::with_capacity(tail.len() + 2);
                path.push('/');
                path.push_str(tail);
                if let Some(q) = uri.query() {
                    path.push('?');
                    path.push_str(q);
                }
                (service, Some(path))
            }
        };
        Ok((Resolved::Service(directory.get(service).await?), path))
    }

    /// The path and query to send upstream, after a prefix rewrite.
    pub(crate) fn rewritten(&self, path: &str) -> Option<String> {
        let replacement = self.rewrite.as_ref()?;
        let PathMatcher::Prefix(prefix) = &self.path else {
            return None;
        };
        let rest = path.get(prefix.len()..).unwrap_or("");
        let mut out = String::with_capacity(replacement.len() + rest.len() + 1);
        out.push_str(replacement.trim_end_matches('/'));
        if !rest.starts_with('/') {
            out.push('/');
        }
        out.push_str(rest);
        Some(out)
    }
}

/// The routes of one route set, ordered by precedence.
#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    exact: HashMap<String, Vec<Arc<CompiledRoute>>>,
    /// (".example.com", routes), longest suffix first.
    wildcard: Vec<(String, Vec<Arc<CompiledRoute>>)>,
    any: Vec<Arc<CompiledRoute>>,
}

impl RouteTable {
    /// Builds the table from routes in config order, each with its `match.host`.
    pub(crate) fn new(routes: Vec<(Option<String>, Arc<CompiledRoute>)>) -> RouteTable {
        let mut table = RouteTable::default();
        for (host, route) in routes {
            match host.map(|h| h.to_ascii_lowercase()) {
                None => table.any.push(route),
                Some(h) => match h.strip_prefix('*') {
                    Some(suffix) => match table.wildcard.iter_mut().find(|(s, _)| s == suffix) {
                        Some((_, list)) => list.push(route),
                        None => table.wildcard.push((suffix.to_owned(), vec![route])),
                    },
                    None => table.exact.entry(h).or_default().push(route),
                },
            }
        }
        // Stable sorts keep config order as the last tie-breaker.
        let order = |list: &mut Vec<Arc<CompiledRoute>>| {
            list.sort_by_key(|r| (r.path.rank(), std::cmp::Reverse(r.conditions())));
        };
        table.exact.values_mut().for_each(order);
        table.wildcard.iter_mut().for_each(|(_, l)| order(l));
        table
            .wildcard
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        order(&mut table.any);
        table
    }

    /// The route for a request, by the documented precedence.
    pub(crate) fn find<B>(&self, req: &http::Request<B>) -> Option<&Arc<CompiledRoute>> {
        let host = request_host(req);
        let method = req.method();
        let path = req.uri().path();
        let query = req.uri().query();
        let headers = req.headers();
        let hit = |list: &'_ Vec<Arc<CompiledRoute>>| -> Option<usize> {
            list.iter()
                .position(|r| r.matches(method, path, query, headers))
        };
        if let Some(host) = host {
            let lower;
            let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                lower = host.to_ascii_lowercase();
                lower.as_str()
            } else {
                host
            };
            if let Some(list) = self.exact.get(host) {
                if let Some(i) = hit(list) {
                    return list.get(i);
                }
            }
            for (suffix, list) in &self.wildcard {
                if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                    if let Some(i) = hit(list) {
                        return list.get(i);
                    }
                }
            }
        }
        hit(&self.any).and_then(|i| self.any.get(i))
    }
}

/// The request's host without port: the URI authority (HTTP/2, absolute
/// form) or the Host header.
pub(crate) fn request_host<B>(req: &http::Request<B>) -> Option<&str> {
    request_host_of(req.uri(), req.headers())
}

/// [`request_host`] from a request's parts.
fn request_host_of<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    let raw = match uri.host() {
        Some(h) => return Some(h.trim_start_matches('[').trim_end_matches(']')),
        None => headers.get(http::header::HOST)?.to_str().ok()?,
    };
    if let Some(rest) = raw.strip_prefix('[') {
        return rest.split_once(']').map(|(h, _)| h);
    }
    Some(raw.rsplit_once(':').map_or(raw, |(h, _)| h))
}
