//! Hot reload on file change, as a user runs it with `trellis up -c FILE`:
//! an edit (in place, or an editor's write-then-rename) is applied without a
//! signal; a broken file is refused with a clear log line and the old config
//! keeps serving; continuous traffic through the gateway sees no failed
//! request while the file is rewritten again and again; `reload.watch =
//! false` turns watching off.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{upstream, Trellis, Workspace};

fn gateway_addr(node: &mut Trellis) -> SocketAddr {
    // The node's log is read with a blocking wait; keep the runtime going.
    tokio::task::block_in_place(|| common::gateway_addr(node))
}

/// Routes `/a` (and `/b` when `with_b`) to `upstream`, tagging responses
/// with `x-config: tag`.
fn routes(upstream: SocketAddr, tag: &str, with_b: bool) -> String {
    let b = if with_b {
        "[[routes]]\nname = \"b\"\nupstream = \"up\"\nmatch = { path_prefix = \"/b\" }\n"
    } else {
        ""
    };
    format!(
        r#"
[reload]
debounce = "50ms"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"

[[routes]]
name = "a"
upstream = "up"
match = {{ path_prefix = "/a" }}
response_headers = {{ set = {{ "x-config" = "{tag}" }} }}
{b}
[[upstreams]]
name = "up"
endpoints = ["{upstream}"]
"#
    )
}

/// Replaces the file the way many editors save: write a temp file, rename it over.
fn save_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The config a node started from (`head`: control and data sections) with
/// new gateway sections.
fn rewrite(head: &str, rest: &str) -> String {
    format!("{head}\n{rest}")
}

/// Polls `url` until its status is 200 and `x-config` is `tag` (when
/// given); panics with the node's log after 10 s.
async fn wait_until_served(http: &reqwest::Client, url: &str, tag: Option<&str>, node: &Trellis) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(resp) = http.get(url).send().await {
            let header = resp
                .headers()
                .get("x-config")
                .map(|v| v.to_str().unwrap_or("").to_owned());
            if resp.status() == 200 && tag.is_none_or(|t| header.as_deref() == Some(t)) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{url} not served as expected; log:\n{}",
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_edits_are_applied_and_a_broken_file_is_refused() {
    let up = upstream().await;
    let ws = Workspace::new();
    let config = ws.up_config("", &routes(up, "one", false));
    let head = std::fs::read_to_string(&config).unwrap();
    let head = head.split("\n[reload]").next().unwrap().to_owned();
    let mut node = Trellis::up(&ws, &config);
    let gw = gateway_addr(&mut node);
    let http = reqwest::Client::new();
    let resp = http.get(format!("http://{gw}/b/x")).send().await.unwrap();
    assert_eq!(resp.status(), 404);

    // An editor's save (temp file renamed over) adds route b: no signal needed.
    save_by_rename(&config, &rewrite(&head, &routes(up, "two", true)));
    wait_until_served(&http, &format!("http://{gw}/b/x"), None, &node).await;
    wait_until_served(&http, &format!("http://{gw}/a/x"), Some("two"), &node).await;
    tokio::task::block_in_place(|| {
        node.wait_for_line("config file changed", |l| l.contains("config file changed"));
    });

    // Garbage written in place is refused with a located error, and the
    // config in force keeps serving.
    std::fs::write(&config, format!("{head}\n[[routes]\nname = \n")).unwrap();
    let line = tokio::task::block_in_place(|| {
        node.wait_for_line("reload rejected", |l| l.contains("config reload rejected"))
    });
    assert!(line.contains("trellis.toml:"), "{line}");
    let resp = http.get(format!("http://{gw}/a/x")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-config"], "two");
    let resp = http.get(format!("http://{gw}/b/x")).send().await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "route b still served after a broken edit"
    );

    // A valid file after the broken one is picked up again.
    std::fs::write(&config, rewrite(&head, &routes(up, "three", false))).unwrap();
    wait_until_served(&http, &format!("http://{gw}/a/x"), Some("three"), &node).await;
    let resp = http.get(format!("http://{gw}/b/x")).send().await.unwrap();
    assert_eq!(resp.status(), 404, "route b was removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_reloads_under_continuous_load_fail_no_request() {
    let up = upstream().await;
    let ws = Workspace::new();
    let config = ws.up_config("", &routes(up, "v0", false));
    let head = std::fs::read_to_string(&config).unwrap();
    let head = head.split("\n[reload]").next().unwrap().to_owned();
    let mut node = Trellis::up(&ws, &config);
    let gw = gateway_addr(&mut node);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok) = (stop.clone(), ok.clone());
        workers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut failures = Vec::new();
            // Bounded: the main task stops the loop, and this caps it regardless.
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match http.get(format!("http://{gw}/a/x")).send().await {
                    Ok(r) if r.status().is_success() => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            failures
        }));
    }
    let http = reqwest::Client::new();
    for i in 1..=6 {
        let tag = format!("v{i}");
        // Alternate in-place writes and rename-on-save, and add a route
        // every other time so the route table really changes.
        let text = rewrite(&head, &routes(up, &tag, i % 2 == 0));
        if i % 2 == 0 {
            save_by_rename(&config, &text);
        } else {
            std::fs::write(&config, text).unwrap();
        }
        wait_until_served(&http, &format!("http://{gw}/a/x"), Some(&tag), &node).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "load too light to mean anything: {}",
        ok.load(Ordering::Relaxed)
    );
    let reloads = node.log_text().matches("gateway config reloaded").count();
    assert!(
        reloads >= 6,
        "expected 6 reloads, log:\n{}",
        node.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_can_be_turned_off() {
    let up = upstream().await;
    let ws = Workspace::new();
    let off = |tag: &str| routes(up, tag, false).replace("[reload]", "[reload]\nwatch = false");
    let config = ws.up_config("", &off("one"));
    let head = std::fs::read_to_string(&config).unwrap();
    let head = head.split("\n[reload]").next().unwrap().to_owned();
    let mut node = Trellis::up(&ws, &config);
    let gw = gateway_addr(&mut node);
    let http = reqwest::Client::new();
    std::fs::write(&config, rewrite(&head, &off("two"))).unwrap();
    // Ten times the debounce: a watcher would have reloaded by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resp = http.get(format!("http://{gw}/a/x")).send().await.unwrap();
    assert_eq!(resp.headers()["x-config"], "one");
    assert!(!node.log_text().contains("config file changed"));
    assert!(!node.log_text().contains("watching the config file"));
    // SIGHUP still reloads.
    node.signal("HUP");
    wait_until_served(&http, &format!("http://{gw}/a/x"), Some("two"), &node).await;
}

/// A Kubernetes ConfigMap volume: `trellis.toml -> ..data/trellis.toml`,
/// `..data -> ..v1`; an update writes `..v2` and swaps `..data` by rename.
/// The file itself is never written, only the symlink changes.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_style_symlink_swap_is_seen() {
    use std::os::unix::fs::symlink;
    let up = upstream().await;
    let ws = Workspace::new();
    let config = ws.up_config("", &routes(up, "one", false));
    let text = std::fs::read_to_string(&config).unwrap();
    let dir = ws.path();
    std::fs::create_dir(dir.join("..v1")).unwrap();
    std::fs::write(dir.join("..v1/trellis.toml"), &text).unwrap();
    symlink("..v1", dir.join("..data")).unwrap();
    std::fs::remove_file(&config).unwrap();
    symlink("..data/trellis.toml", &config).unwrap();

    let mut node = Trellis::up(&ws, &config);
    let gw = gateway_addr(&mut node);
    let http = reqwest::Client::new();
    wait_until_served(&http, &format!("http://{gw}/a/x"), Some("one"), &node).await;

    std::fs::create_dir(dir.join("..v2")).unwrap();
    std::fs::write(
        dir.join("..v2/trellis.toml"),
        text.replace("\"x-config\" = \"one\"", "\"x-config\" = \"two\""),
    )
    .unwrap();
    symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    wait_until_served(&http, &format!("http://{gw}/a/x"), Some("two"), &node).await;
}
