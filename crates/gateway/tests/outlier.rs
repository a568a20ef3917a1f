//! Outlier detection on tokio's paused clock: ejection after consecutive
//! failures, growing ejection times, the cap on ejected share, and return.
use std::time::Duration;
use trellis_gateway::config::UpstreamConfig;
use trellis_gateway::metrics::UpstreamMetrics;
use trellis_gateway::upstream::Upstream;

fn upstream(n: usize) -> Upstream {
    let eps: Vec<String> = (0..n).map(|i| format!("\"10.0.0.{i}:80\"")).collect();
    let text = format!(
        "name = \"u\"\nendpoints = [{}]\noutlier_detection = {{ consecutive_failures = 3, base_ejection_time = \"10s\", max_ejection_percent = 50 }}\n",
        eps.join(", ")
    );
    let cfg: UpstreamConfig = toml::from_str(&text).unwrap();
    Upstream::new(&cfg, UpstreamMetrics::default())
}

fn picks(up: &Upstream, n: usize) -> std::collections::HashSet<String> {
    let req = http::Request::new(());
    (0..n)
        .map(|_| up.pick(&req).unwrap().endpoint().address().to_owned())
        .collect()
}

fn fail(up: &Upstream, i: usize, times: usize) {
    let ep = up.endpoints().endpoints()[i].clone();
    for _ in 0..times {
        up.record_failure(&ep, Duration::from_millis(1));
    }
}

#[tokio::test(start_paused = true)]
async fn ejected_endpoints_return_after_a_growing_time() {
    let up = upstream(4);
    fail(&up, 0, 2);
    assert_eq!(up.ejected_count(), 0, "two failures are not enough");
    let ep0 = up.endpoints().endpoints()[0].clone();
    up.record_success(&ep0, Duration::from_millis(1));
    fail(&up, 0, 2);
    assert_eq!(up.ejected_count(), 0, "a success resets the count");
    fail(&up, 0, 1);
    assert_eq!(up.ejected_count(), 1);
    assert!(!picks(&up, 40).contains("10.0.0.0:80"));

    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(up.ejected_count(), 0, "back after base_ejection_time");
    assert!(picks(&up, 40).contains("10.0.0.0:80"));

    fail(&up, 0, 3);
    tokio::time::advance(Duration::from_secs(15)).await;
    assert_eq!(up.ejected_count(), 1, "second ejection lasts twice as long");
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(up.ejected_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn never_more_than_the_max_share_is_ejected() {
    let up = upstream(4);
    for i in 0..4 {
        fail(&up, i, 3);
    }
    assert_eq!(up.ejected_count(), 2, "50% of 4");
    assert_eq!(picks(&up, 40).len(), 2);
    let single = upstream(1);
    fail(&single, 0, 10);
    assert_eq!(single.ejected_count(), 0, "50% of one endpoint is none");
}
