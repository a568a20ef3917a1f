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
        grpc_service: None,
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

/// A real gRPC server (tonic with tonic-health) whose health a test flips.
async fn grpc_health_server() -> (String, tonic_health::server::HealthReporter) {
    let (reporter, service) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    (addr, reporter)
}

fn grpc_check(service: Option<&str>) -> HealthCheck {
    HealthCheck {
        grpc_service: service.map(str::to_owned),
        ..check(CheckKind::Grpc, None)
    }
}

#[tokio::test]
async fn grpc_probe_follows_the_servers_health_reports() {
    use tonic_health::ServingStatus;
    let (addr, reporter) = grpc_health_server().await;
    let p = network_prober();

    // The server as a whole is SERVING as soon as tonic-health starts.
    let r = p.probe(&addr, &grpc_check(None)).await;
    assert_eq!(r.status, Status::Passing, "{}", r.output);

    reporter
        .set_service_status("orders.v1.Orders", ServingStatus::Serving)
        .await;
    let r = p.probe(&addr, &grpc_check(Some("orders.v1.Orders"))).await;
    assert_eq!(r.status, Status::Passing, "{}", r.output);

    reporter
        .set_service_status("orders.v1.Orders", ServingStatus::NotServing)
        .await;
    let r = p.probe(&addr, &grpc_check(Some("orders.v1.Orders"))).await;
    assert_eq!(r.status, Status::Critical);
    assert!(r.output.contains("NOT_SERVING"), "{}", r.output);

    // A service the server does not know is NOT_FOUND: critical, and said.
    let r = p.probe(&addr, &grpc_check(Some("nobody.Home"))).await;
    assert_eq!(r.status, Status::Critical);
    assert!(r.output.contains("grpc-status 5"), "{}", r.output);
}

#[tokio::test]
async fn grpc_probe_of_a_non_grpc_server_fails_clearly() {
    // An HTTP/1-only server cannot speak HTTP/2 at all.
    let addr = serve().await;
    let r = network_prober().probe(&addr, &grpc_check(None)).await;
    assert_eq!(r.status, Status::Critical);
    assert!(
        r.output.starts_with("gRPC health (server):"),
        "{}",
        r.output
    );
    // Nothing listening.
    let r = network_prober()
        .probe("127.0.0.1:1", &grpc_check(None))
        .await;
    assert_eq!(r.status, Status::Critical);
    assert!(r.output.contains("connect"), "{}", r.output);
}
