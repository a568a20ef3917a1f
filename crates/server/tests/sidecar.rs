//! `trellis run`: real `trellis` processes running a small Python service
//! (tests/fixtures/app.py) beside their sidecars, registered with a central
//! node whose gateway calls the service by name.

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Trellis, Workspace, PATIENCE};
use serde_json::Value;

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/app.py");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The central node: the registry, and a gateway whose `echo` route follows
/// the service with retries and outlier ejection.
fn central(ws: &Workspace) -> (Trellis, SocketAddr, SocketAddr) {
    let config = ws.up_config(
        "",
        r#"
[[listeners]]
name = "edge"
bind = "127.0.0.1:0"

[[upstreams]]
name = "echo"
service = "echo"
outlier_detection = { consecutive_failures = 1, base_ejection_time = "10s", max_ejection_percent = 67 }

[[routes]]
name = "echo"
upstream = "echo"
retry = { attempts = 3, backoff = "5ms", max_backoff = "20ms" }
"#,
    );
    let mut node = Trellis::up(ws, &config);
    let gateway = common::gateway_addr(&mut node);
    let control = node.control_addr();
    (node, control, gateway)
}

/// A running `trellis run` and the addresses it logged.
struct Sidecar {
    process: Trellis,
    inbound: SocketAddr,
    outbound: SocketAddr,
    control: SocketAddr,
    app_port: u16,
}

fn field(line: &str, key: &str) -> String {
    line.split(&format!("{key}="))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .trim_matches('"')
        .to_owned()
}

/// Starts `trellis run --app-id <app_id>` for the fixture app called `name`,
/// and waits until the app is registered.
fn sidecar(
    ws: &Workspace,
    app_id: &str,
    name: &str,
    registry: Option<SocketAddr>,
    extra: &[&str],
) -> Sidecar {
    let app_port = free_port().to_string();
    let registry = registry.map(|r| format!("http://{r}"));
    let mut args = vec![
        "run",
        "--app-id",
        app_id,
        "--app-port",
        &app_port,
        "--ttl",
        "2s",
        "--drain-delay",
        "300ms",
    ];
    if let Some(r) = &registry {
        args.extend(["--registry", r]);
    }
    args.extend(extra);
    args.extend(["--", "python3", APP]);
    let mut process = Trellis::spawn(ws, &args, &[("APP_NAME", name)]);
    let line = process.wait_for_line("sidecar listening", |l| l.contains("sidecar listening"));
    let inbound = field(&line, "inbound").parse().unwrap();
    let outbound = field(&line, "outbound").parse().unwrap();
    let control = field(&line, "control").parse().unwrap();
    process.wait_for_line("app registered", |l| l.contains("app registered"));
    Sidecar {
        process,
        inbound,
        outbound,
        control,
        app_port: app_port.parse().unwrap(),
    }
}

async fn get_json(url: String) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// The ids of the served instances of `service` at the registry on `control`.
async fn served(control: SocketAddr, service: &str) -> BTreeSet<String> {
    let url = format!("http://{control}/v1/registry/services/{service}");
    let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn wait_served(control: SocketAddr, service: &str, want: usize) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = served(control, service).await;
        if now.len() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{service}: want {want} served, have {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Clients calling `url` in a loop until stopped: who answered, and every failure.
struct Load {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<(Instant, String)>>>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, answers, failures, url) =
                    (stop.clone(), answers.clone(), failures.clone(), url.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(&url).send().await {
                            Ok(r) if r.status().is_success() => {
                                let v: Value = r.json().await.unwrap_or_default();
                                let who = v["instance"].as_str().unwrap_or("?").to_owned();
                                answers.lock().unwrap().push((Instant::now(), who));
                            }
                            Ok(r) => {
                                let status = r.status();
                                let body = r.text().await.unwrap_or_default();
                                failures.lock().unwrap().push(format!("{status}: {body}"));
                            }
                            Err(e) => failures.lock().unwrap().push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            answers,
            failures,
            tasks,
        }
    }

    async fn finish(self) -> (Vec<(Instant, String)>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let answers = std::mem::take(&mut *self.answers.lock().unwrap());
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (answers, failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_one_instance_under_load_is_hidden_by_retries_and_its_ttl_lapses() {
    let ws = Workspace::new();
    let (_central, control, gateway) = central(&ws);
    let a = sidecar(&ws, "echo", "a", Some(control), &[]);
    let b = sidecar(&ws, "echo", "b", Some(control), &[]);
    let c = sidecar(&ws, "echo", "c", Some(control), &[]);
    wait_served(control, "echo", 3).await;

    let load = Load::start(format!("http://{gateway}/whoami"), 8);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b_pid = b.process.pid().to_string();
    let killed = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-9", &b_pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (answers, failures) = load.finish().await;

    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let before: BTreeSet<_> = answers
        .iter()
        .filter(|(t, _)| *t < killed)
        .map(|(_, w)| w.as_str())
        .collect();
    let after: BTreeSet<_> = answers
        .iter()
        .filter(|(t, _)| *t > killed + Duration::from_millis(200))
        .map(|(_, w)| w.as_str())
        .collect();
    assert_eq!(
        before,
        BTreeSet::from(["a", "b", "c"]),
        "all three served before the kill"
    );
    assert_eq!(
        after,
        BTreeSet::from(["a", "c"]),
        "only the live two after it"
    );
    // The killed sidecar took its app down with it.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", b.app_port)).is_err(),
        "b's app still listens"
    );

    // Nobody deregistered b: its 2s TTL lapses and it stops being served.
    wait_served(control, "echo", 2).await;
    assert!(
        killed.elapsed() < Duration::from_secs(6),
        "TTL lapse took {:?}",
        killed.elapsed()
    );
    drop((a, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_deregisters_first_and_loses_no_request() {
    let ws = Workspace::new();
    let (_central, control, gateway) = central(&ws);
    let _a = sidecar(&ws, "echo", "a", Some(control), &[]);
    let mut b = sidecar(&ws, "echo", "b", Some(control), &[]);
    wait_served(control, "echo", 2).await;

    let load = Load::start(format!("http://{gateway}/whoami"), 8);
    tokio::time::sleep(Duration::from_millis(400)).await;
    b.process.signal("TERM");
    b.process
        .wait_for_line("deregistration", |l| l.contains("app deregistered"));
    // Out of the registry while it still drains.
    assert_eq!(served(control, "echo").await.len(), 1);
    let (status, _) = b.process.wait_exit();
    assert!(status.success(), "trellis run exited with {status}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (answers, failures) = load.finish().await;

    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        answers.iter().any(|(_, w)| w == "b"),
        "b served before it stopped"
    );
    let log = b.process.log_text();
    let order = [
        "app deregistered",
        "stopped: all in-flight requests finished",
    ];
    let at: Vec<_> = order
        .iter()
        .map(|m| log.find(m).unwrap_or_else(|| panic!("{m} missing: {log}")))
        .collect();
    assert!(at[0] < at[1], "deregistered after draining: {log}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", b.app_port)).is_err(),
        "b's app still listens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_app_is_deregistered_at_once_and_restarted_with_its_output_logged() {
    let ws = Workspace::new();
    // Its own embedded registry this time.
    let mut s = sidecar(&ws, "solo", "s", None, &["--restart-backoff", "300ms"]);
    assert_eq!(served(s.control, "solo").await.len(), 1);
    let client = reqwest::Client::new();
    let who: Value = get_json(format!("http://{}/whoami", s.inbound)).await;
    assert_eq!(who["env"]["TRELLIS_APP_ID"], "solo");
    assert_eq!(
        who["env"]["TRELLIS_HTTP_ENDPOINT"],
        format!("http://{}", s.outbound)
    );
    assert_eq!(who["env"]["TRELLIS_APP_PORT"], s.app_port.to_string());

    client
        .get(format!("http://{}/exit/3", s.inbound))
        .send()
        .await
        .unwrap();
    s.process
        .wait_for_line("restart", |l| l.contains("restarting it"));
    // Deregistered before the restart pause, so nobody is sent to a dead app.
    assert!(served(s.control, "solo").await.is_empty());
    s.process
        .wait_for_line("registered again", |l| l.contains("app registered"));
    let r = client
        .get(format!("http://{}/whoami", s.inbound))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let log = s.process.log_text();
    assert!(
        log.contains("GET /exit/3"),
        "the app's output is in the sidecar's log: {log}"
    );
    assert!(log.contains("code=Some(3)"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_restart_never_the_sidecar_exits_with_the_apps_code() {
    let ws = Workspace::new();
    let mut s = sidecar(&ws, "once", "o", None, &["--restart", "never"]);
    reqwest::get(format!("http://{}/exit/7", s.inbound))
        .await
        .unwrap();
    let (status, _) = s.process.wait_exit();
    assert_eq!(status.code(), Some(7), "{}", s.process.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ambassador_calls_services_by_name() {
    let ws = Workspace::new();
    let (_central, control, _gateway) = central(&ws);
    let _echo = sidecar(&ws, "echo", "e", Some(control), &[]);
    let caller = sidecar(&ws, "caller", "c", Some(control), &[]);
    let client = reqwest::Client::new();

    // The app calls TRELLIS_HTTP_ENDPOINT/v1/invoke/echo/whoami.
    let v: Value = get_json(format!("http://{}/call/echo/whoami", caller.inbound)).await;
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["body"]["instance"], "e");
    assert_eq!(
        v["body"]["path"], "/whoami",
        "the prefix and service are stripped"
    );

    // By header, on any path.
    let v: Value = client
        .get(format!("http://{}/whoami?x=1", caller.outbound))
        .header("x-trellis-service", "echo")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["instance"], "e");
    assert_eq!(v["path"], "/whoami?x=1");

    // A service nobody registered, and a name that cannot be one.
    let r = client
        .get(format!("http://{}/v1/invoke/nobody/x", caller.outbound))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "no_instances");
    let r = client
        .get(format!("http://{}/v1/invoke/bad%20name/x", caller.outbound))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "invalid_service");
}

#[test]
fn bad_flags_are_refused_with_the_flag_named() {
    let out = common::run(&["run", "--app-id", "x", "--app-port", "99999", "--", "true"]);
    assert!(!out.status.success());
    assert!(
        common::text(&out.stderr).contains("--app-port"),
        "{}",
        common::text(&out.stderr)
    );
    let out = common::run(&["run", "--app-id", "x", "--app-port", "3000"]);
    assert!(!out.status.success(), "no command");
    let out = common::run(&[
        "run",
        "--app-id",
        "x",
        "--app-port",
        "3000",
        "--ttl",
        "soon",
        "--",
        "true",
    ]);
    assert!(
        common::text(&out.stderr).contains("--ttl"),
        "{}",
        common::text(&out.stderr)
    );
}
