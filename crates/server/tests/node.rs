//! The node as a library: what other crates' wiring and in-process tests use.

use std::time::Duration;

use trellis::config::Config;
use trellis::shutdown::Shutdown;
use trellis::up::{Node, NodeOptions, Outcome};

#[tokio::test]
async fn starts_on_a_free_port_and_drains_on_trigger() {
    let data = tempfile::tempdir().unwrap();
    let text = format!(
        "[control]\nlisten = \"127.0.0.1:0\"\n[data]\ndir = '{}'\n",
        data.path().join("d").display()
    );
    let config = Config::parse(&text, std::path::Path::new("inline.toml")).unwrap();
    let mut options = NodeOptions::new(config);
    options.shutdown = Shutdown::new(Duration::from_secs(5));
    let shutdown = options.shutdown.clone();
    let node = Node::start(options).await.unwrap();
    let addr = node.control_addr();
    assert_ne!(addr.port(), 0);
    let run = tokio::spawn(node.run_until_stopped());

    let body = reqwest::get(format!("http://{addr}/readyz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains(r#""ready":true"#), "{body}");
    // Logging is the embedder's: no /v1/logging without a handle.
    let status = reqwest::get(format!("http://{addr}/v1/logging"))
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 404);

    shutdown.trigger();
    assert_eq!(run.await.unwrap().unwrap(), Outcome::Drained);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
