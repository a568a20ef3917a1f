//! The network probes against real sockets (real clock; no timing asserted
//! beyond the probe's own timeout).

use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use trellis_discovery::*;

fn check(kind: CheckKind, path: Option<&str>) -> HealthCheck {
    HealthCheck {
        kind,
        path: path.map(str::to_owned),
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(2),
        success_threshold: 1,
        failure_threshold: 1,
    }
}

async fn serve() -> String {
    let app = axum::Router::new()
        .route("/ok", get(|| async { "fine" }))
        .route("/busy", get(|| async { StatusCode::TOO_MANY_REQUESTS }))
        .route("/down", get(|| async { StatusCode::SERVICE_UNAVAILABLE }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn http_probe_maps_status_codes_to_health() {
    let addr = serve().await;
    let p = network_prober();
    let cases = [
        ("/ok", Status::Passing),
        ("/busy", Status::Warning),
        ("/down", Status::Critical),
        ("/missing", Status::Critical),
    ];
    for (path, want) in cases {
        let got = p.probe(&addr, &check(CheckKind::Http, Some(path))).await;
        assert_eq!(got.status, want, "{path}: {}", got.output);
        assert!(got.output.contains(path));
    }
}

#[tokio::test]
async fn tcp_probe_passes_on_connect_and_fails_on_refusal() {
    let addr = serve().await;
    let p = network_prober();
    assert_eq!(
        p.probe(&addr, &check(CheckKind::Tcp, None)).await.status,
        Status::Passing
    );
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let r = p.probe(&closed, &check(CheckKind::Tcp, None)).await;
    assert_eq!(r.status, Status::Critical);
    assert!(r.output.contains(&closed), "{}", r.output);
    let r = p.probe(&closed, &check(CheckKind::Http, Some("/ok"))).await;
    assert_eq!(r.status, Status::Critical);
}

#[tokio::test]
async fn http_probe_times_out_on_a_silent_server() {
    // Accepts connections but never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut c = check(CheckKind::Http, Some("/ok"));
    c.timeout = Duration::from_millis(200);
    let r = network_prober().probe(&addr, &c).await;
    assert_eq!(r.status, Status::Critical);
    assert!(r.output.contains("within"), "{}", r.output);
}

#[tokio::test]
async fn registry_probes_a_real_instance_and_serves_it() {
    let addr = serve().await;
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let r = Registry::in_memory(RegistryConfig::default());
    let mut changes = Box::pin(r.changes());
    r.register(
        "web",
        "a",
        Registration::new("127.0.0.1", port).with_check(check(CheckKind::Http, Some("/ok"))),
    )
    .await
    .unwrap();
    use futures::StreamExt;
    changes.next().await.unwrap();
    let health = tokio::time::timeout(Duration::from_secs(10), changes.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(health.instance.unwrap().status, Status::Passing);
    assert_eq!(r.discover("web", &Filter::default()).1.len(), 1);
    r.shutdown();
}
