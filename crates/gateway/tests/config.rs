//! Config parsing and validation: unknown keys, durations, key paths.
mod common;

use trellis_gateway::GatewayConfig;

fn de(text: &str) -> Result<GatewayConfig, String> {
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| e.to_string())
}

#[test]
fn a_full_config_parses_with_durations_and_defaults() {
    let cfg = de(r#"
        [[listeners]]
        name = "public"
        bind = "0.0.0.0:8080"
        limits = { header_read_timeout = "250ms", max_body_bytes = 1024 }

        [[routes]]
        name = "users"
        upstream = "users"
        timeout = "2s"
        match = { host = "*.example.com", path_prefix = "/users", methods = ["GET"] }
        retry = { attempts = 2, retry_on_status = [503] }

        [[upstreams]]
        name = "users"
        endpoints = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3 }]
        load_balancer = { policy = "consistent_hash", hash_on = { header = "x-user" } }
        outlier_detection = { consecutive_failures = 3, base_ejection_time = "10s" }
    "#)
    .unwrap();
    cfg.validate().unwrap();
    let l = &cfg.listeners[0];
    assert_eq!(
        l.limits.header_read_timeout,
        std::time::Duration::from_millis(250)
    );
    assert_eq!(
        l.limits.max_headers, 100,
        "unset limits keep their defaults"
    );
    assert_eq!(l.route_set, "default");
    assert_eq!(
        cfg.routes[0].timeout,
        Some(std::time::Duration::from_secs(2))
    );
    assert_eq!(cfg.upstreams[0].endpoints[1].weight(), 3);
}

#[test]
fn unknown_keys_and_bad_durations_are_errors_naming_the_key() {
    let e = de("[[routes]]\nname = \"a\"\nupstream = \"u\"\ntimeuot = \"1s\"\n").unwrap_err();
    assert!(e.contains("routes[0]") && e.contains("timeuot"), "{e}");
    let e = de("[[routes]]\nname = \"a\"\nupstream = \"u\"\ntimeout = \"soon\"\n").unwrap_err();
    assert!(
        e.contains("routes[0].timeout") && e.contains("invalid duration"),
        "{e}"
    );
}

#[test]
fn validation_reports_every_problem_with_its_path() {
    let cfg = de(r#"
        [[listeners]]
        name = "a"
        bind = "127.0.0.1:1"
        limits = { max_header_bytes = 100 }
        [[routes]]
        name = "r0"
        upstream = "up"
        [[routes]]
        name = "r1"
        upstream = "up"
        [[routes]]
        name = "r2"
        upstream = "x"
        match = { path = "/a", path_prefix = "/b", path_regex = "(" }
        rewrite = { strip_prefix = true }
        [[upstreams]]
        name = "up"
        endpoints = ["no-port"]
        load_balancer = { policy = "consistent_hash" }
    "#)
    .unwrap();
    let errs = cfg.validate().unwrap_err();
    let text: Vec<String> = errs.0.iter().map(|e| e.to_string()).collect();
    for expected in [
        "listeners[0].limits.max_header_bytes: must be at least 8192",
        "routes[2].upstream: unknown upstream \"x\"",
        "routes[2].match: give at most one of path, path_prefix, path_regex",
        "routes[2].match.path_regex: invalid regex",
        "upstreams[0].endpoints[0]: invalid address \"no-port\"",
        "upstreams[0].load_balancer.hash_on: consistent_hash needs hash_on",
    ] {
        assert!(
            text.iter().any(|t| t.starts_with(expected)),
            "missing {expected:?} in {text:#?}"
        );
    }
}

#[test]
fn policy_sections_are_checked_with_their_paths() {
    let cfg = de(r#"
        [[routes]]
        name = "r"
        upstream = "up"
        cors = { allowed_origins = ["*", "https://app.example.com/"], allow_credentials = true }
        rate_limit = { requests = 0, per = "1s" }
        bulkhead = { max_concurrent = 0 }
        auth = { api_keys = { keys = [] }, bogus = 1 }
        [[routes]]
        name = "claims"
        upstream = "up"
        rate_limit = { requests = 5, per = "1s", key = "claim:sub" }
        cors = { allow_origins = ["*"] }
        [[upstreams]]
        name = "up"
    "#)
    .unwrap();
    let errs = cfg.validate().unwrap_err().to_string();
    for expected in [
        "routes[0].cors.allowed_origins[0]: \"*\" cannot be combined with allow_credentials",
        "routes[0].cors.allowed_origins[1]: \"https://app.example.com/\": an origin is scheme://host[:port]",
        "routes[1].cors: unknown field `allow_origins`",
        "routes[0].rate_limit.requests",
        "routes[0].bulkhead",
        "routes[0].auth",
        "routes[1].rate_limit.key: \"claim:sub\" needs an auth section",
    ] {
        assert!(errs.contains(expected), "missing {expected:?} in {errs}");
    }
}
