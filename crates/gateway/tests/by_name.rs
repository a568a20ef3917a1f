//! Service-by-name upstreams (`service = "*"`): the request names the service
//! (path segment, header or host), the gateway asks its resolver once per
//! service and follows the lists it yields.
mod common;

use common::{client, echo, json, parse, LISTENER};
use futures::stream::BoxStream;
use futures::StreamExt as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use trellis_gateway::{Gateway, GatewayOptions, ServiceResolver};

type Lists = Mutex<HashMap<String, watch::Sender<Vec<(String, u32)>>>>;

/// Services whose endpoint lists the test changes at will; counts how often
/// each service was asked for.
#[derive(Default)]
struct TestResolver {
    services: Lists,
    asked: Mutex<HashMap<String, usize>>,
}

impl TestResolver {
    fn set(&self, service: &str, endpoints: &[std::net::SocketAddr]) {
        let list = endpoints.iter().map(|a| (a.to_string(), 1)).collect();
        let mut services = self.services.lock().unwrap();
        services
            .entry(service.to_owned())
            .or_insert_with(|| watch::channel(Vec::new()).0)
            .send_replace(list);
    }
}

impl ServiceResolver for TestResolver {
    fn follow(&self, service: &str) -> BoxStream<'static, Vec<(String, u32)>> {
        *self
            .asked
            .lock()
            .unwrap()
            .entry(service.to_owned())
            .or_default() += 1;
        let rx = self
            .services
            .lock()
            .unwrap()
            .entry(service.to_owned())
            .or_insert_with(|| watch::channel(Vec::new()).0)
            .subscribe();
        tokio_stream::wrappers::WatchStream::new(rx).boxed()
    }
}

const CONFIG: &str = r#"
[[upstreams]]
name = "services"
service = "*"

[[routes]]
name = "invoke"
match = { path_prefix = "/invoke" }
upstream = "services"
service_from = "path"

[[routes]]
name = "by-header"
match = { headers = [{ name = "x-service" }] }
upstream = "services"
service_from = "header:x-service"
"#;

async fn start(resolver: Arc<TestResolver>) -> (trellis_gateway::GatewayHandle, String) {
    let mut registry = prometheus_client::registry::Registry::default();
    let options = GatewayOptions {
        resolver: Some(resolver),
        ..GatewayOptions::default()
    };
    let gw = Gateway::start_with(
        parse(&format!("{LISTENER}{CONFIG}")),
        &mut registry,
        options,
    )
    .await
    .unwrap();
    let addr = gw.local_addr("main").unwrap();
    (gw, format!("http://{addr}"))
}

#[tokio::test]
async fn the_request_names_the_service_and_the_gateway_follows_it() {
    let orders = echo("orders-1").await;
    let billing = echo("billing-1").await;
    let resolver = Arc::new(TestResolver::default());
    resolver.set("orders", &[orders.addr]);
    resolver.set("billing", &[billing.addr]);
    let (gw, base) = start(resolver.clone()).await;
    let c = client();

    let v = json(
        c.get(format!("{base}/invoke/orders/api/x?y=1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["upstream"], "orders-1");
    assert_eq!(
        v["uri"], "/api/x?y=1",
        "prefix and service segment are stripped"
    );
    let v = json(
        c.get(format!("{base}/invoke/billing"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (v["upstream"].as_str(), v["uri"].as_str()),
        (Some("billing-1"), Some("/"))
    );
    let v = json(
        c.get(format!("{base}/any/path"))
            .header("x-service", "orders")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (v["upstream"].as_str(), v["uri"].as_str()),
        (Some("orders-1"), Some("/any/path"))
    );

    // A new instance list reaches the live upstream.
    let orders2 = echo("orders-2").await;
    resolver.set("orders", &[orders2.addr]);
    let mut seen = String::new();
    for _ in 0..100 {
        let v = json(
            c.get(format!("{base}/invoke/orders/"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        seen = v["upstream"].as_str().unwrap_or("").to_owned();
        if seen == "orders-2" {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(seen, "orders-2");

    // Asked once per service, however many requests and a reload later.
    let mut config = parse(&format!("{LISTENER}{CONFIG}"));
    config.routes[0].timeout = Some(std::time::Duration::from_secs(5));
    gw.reload(config).await.unwrap();
    c.get(format!("{base}/invoke/orders/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resolver.asked.lock().unwrap()["orders"], 1);
}

#[tokio::test]
async fn unknown_and_malformed_service_names_get_clear_errors() {
    let resolver = Arc::new(TestResolver::default());
    let (_gw, base) = start(resolver).await;
    let c = client();
    let r = c
        .get(format!("{base}/invoke/nobody/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(json(r).await["code"], "no_instances");
    for bad in ["/invoke/bad%20name/x", "/invoke/", "/invoke/%2e%2e%2fetc/x"] {
        let r = c.get(format!("{base}{bad}")).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(json(r).await["code"], "invalid_service", "{bad}");
    }
}

#[tokio::test]
async fn a_service_by_name_upstream_needs_a_resolver() {
    let mut registry = prometheus_client::registry::Registry::default();
    let err = Gateway::start(parse(&format!("{LISTENER}{CONFIG}")), &mut registry)
        .await
        .expect_err("no resolver");
    assert!(err.to_string().contains("services by name"), "{err}");
}

#[test]
fn service_from_is_checked_against_its_upstream() {
    let bad = |text: &str| parse(text).validate().unwrap_err().to_string();
    let e = bad(r#"
        [[upstreams]]
        name = "services"
        service = "*"
        [[routes]]
        name = "r"
        upstream = "services"
    "#);
    assert!(e.contains("routes[0].service_from"), "{e}");
    let e = bad(r#"
        [[upstreams]]
        name = "fixed"
        endpoints = ["127.0.0.1:1"]
        [[routes]]
        name = "r"
        upstream = "fixed"
        service_from = "host"
    "#);
    assert!(
        e.contains("only routes to a service-by-name upstream"),
        "{e}"
    );
    let e = bad(r#"
        [[upstreams]]
        name = "services"
        service = "*"
        [[routes]]
        name = "r"
        upstream = "services"
        service_from = "path"
    "#);
    assert!(e.contains("routes[0].match.path_prefix"), "{e}");
    let text = r#"
        [[upstreams]]
        name = "services"
        service = "*"
        [[routes]]
        name = "r"
        upstream = "services"
        service_from = "cookie:x"
    "#;
    let e = serde_path_to_error::deserialize::<_, trellis_gateway::GatewayConfig>(
        toml::Deserializer::new(text),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("service_from"), "{e}");
}
