//! `trellis up` as a user runs it: probes, metrics, OpenAPI, auth, logging,
//! and graceful shutdown on signals.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{Trellis, Workspace, PATIENCE};
use serde_json::Value;

async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

#[tokio::test]
async fn serves_probes_and_creates_the_data_dir() {
    let ws = Workspace::new();
    let mut node = Trellis::up(&ws, &ws.up_config("", ""));
    let addr = node.control_addr();
    assert_eq!(
        get(addr, "/healthz", None).await,
        (200, r#"{"status":"ok"}"#.to_owned())
    );
    let (status, body) = get(addr, "/readyz", None).await;
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["components"]["control"]["state"], "ready");
    assert!(ws.path().join("data").is_dir());
    let (status, body) = get(addr, "/v1/status", None).await;
    assert_eq!(status, 200);
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["phase"], "running");
}

/// A strict reader of the OpenMetrics text format: every sample belongs to a
/// declared family and has a numeric value, and the document ends in `# EOF`.
fn parse_openmetrics(text: &str) -> Vec<(String, String, f64)> {
    let mut families: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "missing # EOF");
    for line in &lines[..lines.len() - 1] {
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts.next().unwrap();
            assert!(
                ["HELP", "TYPE", "UNIT"].contains(&kind),
                "bad line {line:?}"
            );
            if kind == "TYPE" {
                let ty = parts.next().unwrap();
                assert!(
                    [
                        "counter",
                        "gauge",
                        "histogram",
                        "info",
                        "summary",
                        "unknown",
                        "stateset"
                    ]
                    .contains(&ty),
                    "bad type in {line:?}"
                );
                families.push(name.to_owned());
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                assert!(l.ends_with('}'), "bad labels in {line:?}");
                (n, l.trim_end_matches('}'))
            }
            None => (series, ""),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name in {line:?}"
        );
        assert!(
            families.iter().any(|f| name.starts_with(f.as_str())),
            "sample {name} has no family"
        );
        samples.push((name.to_owned(), labels.to_owned(), value));
    }
    samples
}

#[tokio::test]
async fn metrics_are_valid_openmetrics_with_process_and_request_series() {
    let ws = Workspace::new();
    let mut node = Trellis::up(&ws, &ws.up_config("", ""));
    let addr = node.control_addr();
    get(addr, "/healthz", None).await;
    let resp = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let samples = parse_openmetrics(&resp.text().await.unwrap());
    let find = |name: &str| samples.iter().find(|s| s.0 == name).map(|s| s.2);
    assert_eq!(find("trellis_build_info"), Some(1.0));
    assert!(find("trellis_uptime_seconds").unwrap() > 0.0);
    assert!(find("trellis_process_resident_memory_bytes").unwrap() > 0.0);
    assert!(samples.iter().any(
        |(name, labels, value)| name == "trellis_control_requests_total"
            && labels.contains(r#"route="/healthz""#)
            && labels.contains(r#"status="200""#)
            && *value >= 1.0
    ));
}

#[tokio::test]
async fn openapi_document_lists_the_control_paths() {
    let ws = Workspace::new();
    let mut node = Trellis::up(&ws, &ws.up_config("", ""));
    let addr = node.control_addr();
    let (status, body) = get(addr, "/openapi.json", None).await;
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/v1/status",
        "/v1/logging",
        "/v1/reload",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from {doc:#}"
        );
    }
    assert!(doc["paths"]["/v1/logging"]["put"]["requestBody"].is_object());

    // Structurally sound: unique operation ids, responses everywhere, and
    // every $ref resolves.
    let mut ids = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}"));
            assert!(ids.insert(id.to_owned()), "duplicate operationId {id}");
            assert!(
                op["responses"].is_object(),
                "{method} {path} has no responses"
            );
        }
    }
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r.strip_prefix("#/components/schemas/").unwrap();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling {r}"
        );
    }
}

#[tokio::test]
async fn bearer_token_is_enforced_except_on_probes() {
    let ws = Workspace::new();
    let mut node = Trellis::up(&ws, &ws.up_config("token = \"sekret-token\"", ""));
    let addr = node.control_addr();
    assert_eq!(get(addr, "/healthz", None).await.0, 200);
    assert_eq!(get(addr, "/readyz", None).await.0, 200);
    for path in ["/metrics", "/openapi.json", "/v1/status"] {
        let (status, body) = get(addr, path, None).await;
        assert_eq!(status, 401, "{path}");
        assert!(body.contains("unauthorized"), "{body}");
        assert_eq!(get(addr, path, Some("not-it")).await.0, 401, "{path}");
        assert_eq!(get(addr, path, Some("sekret-token")).await.0, 200, "{path}");
    }
    assert!(
        !node.log_text().contains("sekret-token"),
        "token leaked into logs"
    );
}

#[test]
fn refuses_to_start_beyond_loopback_without_a_token() {
    let ws = Workspace::new();
    let config = ws.config("[control]\nlisten = \"0.0.0.0:0\"\n");
    let mut node = Trellis::up(&ws, &config);
    let (status, _) = node.wait_exit();
    assert_eq!(status.code(), Some(1));
    assert!(
        node.log_text().contains("control.token: required"),
        "{}",
        node.log_text()
    );
}

#[test]
fn reports_a_busy_port_and_exits_non_zero() {
    let ws = Workspace::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = ws.config(&format!("[control]\nlisten = \"127.0.0.1:{port}\"\n"));
    let mut node = Trellis::up(&ws, &config);
    let (status, _) = node.wait_exit();
    assert_eq!(status.code(), Some(1));
    let log = node.log_text();
    assert!(
        log.contains(&format!("cannot listen on control.listen 127.0.0.1:{port}")),
        "{log}"
    );
}

#[tokio::test]
async fn json_logs_and_rust_log_override() {
    let ws = Workspace::new();
    // The config asks for errors only; RUST_LOG wins, so the info line shows.
    let config = ws.up_config("", "[log]\nformat = \"json\"\nlevel = \"error\"\n");
    let mut node = Trellis::up_with_env(&ws, &config, &[("RUST_LOG", "info")]);
    let addr = node.control_addr();
    let line = node
        .log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("control API listening"))
        .unwrap()
        .clone();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["message"], "control API listening");

    // The filter can be changed at run time.
    let client = reqwest::Client::new();
    let resp = client
        .put(format!("http://{addr}/v1/logging"))
        .json(&serde_json::json!({"filter": "warn"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        get(addr, "/v1/logging", None).await.1,
        r#"{"filter":"warn"}"#
    );
    let resp = client
        .put(format!("http://{addr}/v1/logging"))
        .json(&serde_json::json!({"filter": "info,[{"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
}

/// Opens a connection and starts a `PUT /v1/logging` whose body is held
/// back: `Expect: 100-continue` makes the server say when the handler is
/// waiting for the body, so the request is provably in flight.
fn start_in_flight_request(addr: SocketAddr) -> (TcpStream, &'static [u8]) {
    let body: &[u8] = br#"{"filter":"info"}"#;
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        conn,
        "PUT /v1/logging HTTP/1.1\r\nHost: trellis\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    )
    .unwrap();
    let head = read_head(&mut conn);
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    (conn, body)
}

fn read_head(conn: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = conn.read(&mut byte).unwrap();
        assert_eq!(
            n,
            1,
            "connection closed; got {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

fn finishes_in_flight_request_then_exits_zero(signal: &str) {
    let ws = Workspace::new();
    let mut node = Trellis::up(&ws, &ws.up_config("shutdown_grace = \"30s\"", ""));
    let addr = node.control_addr();
    let (mut conn, body) = start_in_flight_request(addr);

    node.signal(signal);
    node.wait_for_line("shutdown requested", |l| l.contains("shutdown requested"));

    // No new connections while draining. Bounded poll: the listener closes
    // just after the log line.
    let refused = (0..500).any(|_| {
        let r = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err();
        if !r {
            std::thread::sleep(Duration::from_millis(10));
        }
        r
    });
    assert!(refused, "still accepting connections while draining");

    conn.write_all(body).unwrap();
    let head = read_head(&mut conn);
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "in-flight request not finished: {head}"
    );

    let (status, took) = node.wait_exit();
    assert_eq!(status.code(), Some(0), "log: {}", node.log_text());
    assert!(
        took < Duration::from_secs(25),
        "waited for the grace deadline instead of the request"
    );
    assert!(node.log_text().contains("all in-flight requests finished"));
}

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    finishes_in_flight_request_then_exits_zero("TERM");
}

#[test]
fn sigint_finishes_in_flight_requests_and_exits_zero() {
    finishes_in_flight_request_then_exits_zero("INT");
}

#[test]
fn drain_stops_at_the_grace_deadline() {
    let ws = Workspace::new();
    let mut node = Trellis::up(&ws, &ws.up_config("shutdown_grace = \"300ms\"", ""));
    let addr = node.control_addr();
    let (_conn, _body) = start_in_flight_request(addr);
    node.signal("TERM");
    let (status, _) = node.wait_exit();
    assert_eq!(status.code(), Some(0));
    assert!(
        node.log_text().contains("grace period ran out"),
        "{}",
        node.log_text()
    );
}

#[test]
fn a_second_signal_abandons_the_drain() {
    let ws = Workspace::new();
    let mut node = Trellis::up(&ws, &ws.up_config("shutdown_grace = \"1h\"", ""));
    let addr = node.control_addr();
    let (_conn, _body) = start_in_flight_request(addr);
    node.signal("TERM");
    node.wait_for_line("shutdown requested", |l| l.contains("shutdown requested"));
    node.signal("INT");
    let (status, _) = node.wait_exit();
    assert_eq!(status.code(), Some(130), "{}", node.log_text());
}

#[tokio::test]
async fn sighup_requests_a_reload_without_stopping() {
    let ws = Workspace::new();
    let mut node = Trellis::up(&ws, &ws.up_config("", ""));
    let addr = node.control_addr();
    node.signal("HUP");
    node.wait_for_line("reload requested", |l| {
        l.contains("config reload requested")
    });
    assert_eq!(get(addr, "/readyz", None).await.0, 200);
}

fn status_cmd(ws: &Workspace, args: &[&str], token_env: Option<&str>) -> std::process::Output {
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.arg("status").args(args).current_dir(ws.path());
    cmd.env_remove("TRELLIS_TOKEN").env_remove("TRELLIS_CONFIG");
    if let Some(t) = token_env {
        cmd.env("TRELLIS_TOKEN", t);
    }
    cmd.output().unwrap()
}

#[test]
fn status_command_reports_a_running_node() {
    let ws = Workspace::new();
    let config = ws.up_config("token = \"status-token\"", "");
    let mut node = Trellis::up(&ws, &config);
    let addr = node.control_addr().to_string();
    let cfg = config.to_str().unwrap();

    // Token from the config file.
    let out = status_cmd(&ws, &["-c", cfg, "--addr", &addr], None);
    let stdout = common::text(&out.stdout);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    assert!(
        stdout.starts_with(&format!(
            "trellis {} at {addr}: running, ready",
            env!("CARGO_PKG_VERSION")
        )),
        "{stdout}"
    );
    assert!(stdout.contains("control"), "{stdout}");

    let out = status_cmd(&ws, &["--addr", &addr, "--json"], Some("status-token"));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ready"], true);

    let out = status_cmd(&ws, &["--addr", &addr], Some("wrong"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::text(&out.stderr).contains("401"),
        "{}",
        common::text(&out.stderr)
    );
}

#[test]
fn status_command_says_when_nothing_listens() {
    let ws = Workspace::new();
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = status_cmd(&ws, &["--addr", &free.to_string()], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = common::text(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot reach the control API at {free}")),
        "{stderr}"
    );
}

#[tokio::test]
async fn sighup_reloads_the_config_file_and_applies_the_log_level() {
    let ws = Workspace::new();
    let config = ws.up_config("", "[log]\nlevel = \"info\"\n");
    let mut node = Trellis::up(&ws, &config);
    let addr = node.control_addr();
    ws.up_config("", "[log]\nlevel = \"info,trellis=debug\"\n");
    node.signal("HUP");
    node.wait_for_line("config reloaded", |l| l.contains("config reloaded"));
    assert_eq!(
        get(addr, "/v1/logging", None).await.1,
        r#"{"filter":"info,trellis=debug"}"#
    );
    let metrics = get(addr, "/metrics", None).await.1;
    assert!(
        metrics.contains(r#"trellis_config_reloads_total{result="success"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_broken_edit_is_rejected_with_its_location_and_the_node_keeps_running() {
    let ws = Workspace::new();
    let config = ws.up_config("", "[log]\nlevel = \"info\"\n");
    let mut node = Trellis::up(&ws, &config);
    let addr = node.control_addr();
    ws.config("[log]\nlevel = \"info\"\nformat = \"yaml\"\n");
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v1/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let line = node.wait_for_line("reload rejected", |l| l.contains("config reload rejected"));
    assert!(
        line.contains(&format!(
            "{}:3:10: log.format: unknown variant `yaml`",
            config.display()
        )),
        "{line}"
    );
    assert_eq!(get(addr, "/readyz", None).await.0, 200);
    assert_eq!(
        get(addr, "/v1/logging", None).await.1,
        r#"{"filter":"info"}"#
    );
    let metrics = get(addr, "/metrics", None).await.1;
    assert!(
        metrics.contains(r#"trellis_config_reloads_total{result="failure"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn token_file_guards_the_api() {
    let ws = Workspace::new();
    let token_file = ws.path().join("token");
    std::fs::write(&token_file, "from-a-file\n").unwrap();
    let config = ws.up_config(&format!("token_file = '{}'", token_file.display()), "");
    let mut node = Trellis::up(&ws, &config);
    let addr = node.control_addr();
    assert_eq!(get(addr, "/v1/status", None).await.0, 401);
    assert_eq!(get(addr, "/v1/status", Some("from-a-file")).await.0, 200);
}

#[test]
fn a_second_node_on_the_same_data_dir_is_refused() {
    let ws = Workspace::new();
    let config = ws.up_config("", "");
    let mut first = Trellis::up(&ws, &config);
    first.control_addr();
    let mut second = Trellis::up(&ws, &config);
    let (status, _) = second.wait_exit();
    assert_eq!(status.code(), Some(1));
    let log = second.log_text();
    assert!(
        log.contains(&format!(
            "is in use by another trellis process (pid {})",
            first.pid()
        )),
        "{log}"
    );
}
