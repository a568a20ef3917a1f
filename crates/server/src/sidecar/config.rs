//! The sidecar's node config: whatever the user's `-c` file says, plus the
//! two listeners a sidecar always has, each with the routes it needs unless
//! the file already gives that listener's route set some:
//!
//! - `inbound` (route set `inbound`): everything to the app on
//!   `127.0.0.1:<app-port>`, through the policies the flags or file set;
//! - `outbound` (route set `outbound`, on loopback): the ambassador,
//!   `/v1/invoke/<service>/<path>` or any path with an
//!   `x-trellis-service: <service>` header, to the named service's
//!   instances with retries, outlier ejection and a circuit breaker.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context as _;

use crate::config::{Config, Validate as _, Validator};

/// The header that names the service an outbound call is for.
pub const SERVICE_HEADER: &str = "x-trellis-service";

/// What the sidecar's generated part depends on.
#[derive(Debug, Clone)]
pub struct SidecarPorts {
    pub app_port: u16,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    /// Most requests in the app at once (a bulkhead on the inbound route).
    pub max_concurrency: Option<usize>,
    /// Inbound requests per second per client IP (`requests`, burst).
    pub rate_limit: Option<u32>,
}

/// The generated part, in the config file's own language so that it is
/// checked by the same rules (and could be pasted into a file).
fn generated(p: &SidecarPorts, has_inbound: bool, has_outbound: bool) -> String {
    let mut t = format!(
        r#"
[[listeners]]
name = "inbound"
bind = "{inbound}"
route_set = "inbound"

[[listeners]]
name = "outbound"
bind = "{outbound}"
route_set = "outbound"
"#,
        inbound = p.inbound,
        outbound = p.outbound,
    );
    if !has_inbound {
        t.push_str(&format!(
            r#"
[[upstreams]]
name = "app"
endpoints = ["127.0.0.1:{app_port}"]

[[routes]]
name = "inbound"
route_set = "inbound"
upstream = "app"
"#,
            app_port = p.app_port
        ));
        if let Some(n) = p.max_concurrency {
            t.push_str(&format!(
                "bulkhead = {{ max_concurrent = {n}, max_queue = {n}, queue_timeout = \"1s\" }}\n"
            ));
        }
        if let Some(n) = p.rate_limit {
            t.push_str(&format!(
                "rate_limit = {{ requests = {n}, per = \"1s\", burst = {n} }}\n"
            ));
        }
    }
    if !has_outbound {
        let policy = r#"upstream = "services"
timeout = "30s"
per_try_timeout = "10s"
retry = { attempts = 3, backoff = "10ms", max_backoff = "200ms", retry_on_status = [502, 503, 504] }
"#;
        t.push_str(&format!(
            r#"
[[upstreams]]
name = "services"
service = "*"
outlier_detection = {{ consecutive_failures = 3, base_ejection_time = "5s", max_ejection_percent = 50 }}

[[routes]]
name = "invoke"
route_set = "outbound"
match = {{ path_prefix = "/v1/invoke" }}
service_from = "path"
{policy}
[[routes]]
name = "invoke-by-header"
route_set = "outbound"
match = {{ headers = [{{ name = "{SERVICE_HEADER}" }}] }}
service_from = "header:{SERVICE_HEADER}"
{policy}"#
        ));
    }
    t
}

/// The user's config (or the defaults) with the sidecar's listeners, routes
/// and upstreams added, validated as a whole.
pub fn build(base: Config, file: Option<&Path>, ports: &SidecarPorts) -> anyhow::Result<Config> {
    let mut config = base;
    let in_set = |set: &str| config.routes.iter().any(|r| r.route_set == set);
    let (has_inbound, has_outbound) = (in_set("inbound"), in_set("outbound"));
    if let Some(l) = config
        .listeners
        .iter()
        .find(|l| l.name == "inbound" || l.name == "outbound")
    {
        anyhow::bail!(
            "{}: the sidecar makes the {:?} listener itself (its address comes from the --inbound/--outbound flags); remove it from the file",
            file.map_or_else(|| "config".into(), |f| f.display().to_string()),
            l.name
        );
    }
    let text = generated(ports, has_inbound, has_outbound);
    let extra = Config::parse(&text, Path::new("<trellis run>"))
        .context("the sidecar's generated config is invalid")?;
    config.listeners.extend(extra.listeners);
    config.upstreams.extend(extra.upstreams);
    config.routes.extend(extra.routes);
    let mut v = Validator::new();
    config.validate(&mut v);
    let problems = v.into_problems();
    if !problems.is_empty() {
        let list: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect();
        anyhow::bail!(
            "the sidecar's config, with its own listeners and routes added, is invalid:\n  {}",
            list.join("\n  ")
        );
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports() -> SidecarPorts {
        SidecarPorts {
            app_port: 3001,
            inbound: "127.0.0.1:3500".parse().unwrap(),
            outbound: "127.0.0.1:3501".parse().unwrap(),
            max_concurrency: Some(8),
            rate_limit: Some(100),
        }
    }

    #[test]
    fn the_defaults_get_both_listeners_and_their_routes() {
        let c = build(Config::default(), None, &ports()).unwrap();
        let names: Vec<_> = c.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["inbound", "outbound"]);
        let inbound = c.routes.iter().find(|r| r.name == "inbound").unwrap();
        assert_eq!(inbound.upstream, "app");
        assert!(inbound.bulkhead.is_some() && inbound.rate_limit.is_some());
        let invoke = c.routes.iter().find(|r| r.name == "invoke").unwrap();
        assert_eq!(
            invoke.service_from,
            Some(trellis_gateway::config::ServiceFrom::Path)
        );
    }

    #[test]
    fn routes_of_the_file_replace_the_generated_ones() {
        let text = r#"
[[upstreams]]
name = "mine"
endpoints = ["127.0.0.1:3001"]

[[routes]]
name = "only-api"
route_set = "inbound"
match = { path_prefix = "/api" }
upstream = "mine"
"#;
        let base = Config::parse(text, Path::new("t.toml")).unwrap();
        let c = build(base, None, &ports()).unwrap();
        assert!(c.routes.iter().all(|r| r.name != "inbound"));
        assert!(c.routes.iter().any(|r| r.name == "invoke"));
    }

    #[test]
    fn a_listener_of_the_sidecars_own_name_is_refused() {
        let text = r#"
[[listeners]]
name = "inbound"
bind = "127.0.0.1:0"
"#;
        let base = Config::parse(text, Path::new("t.toml")).unwrap();
        let e = build(base, Some(Path::new("t.toml")), &ports()).unwrap_err();
        assert!(e.to_string().contains("t.toml"), "{e}");
    }
}
