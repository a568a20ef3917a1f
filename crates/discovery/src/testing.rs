//! A throwaway etcd for tests and benchmarks of the etcd backend: Debian's
//! `etcd` (package etcd-server, which `scripts/setup` installs) on free
//! loopback ports, with its data in a temp dir removed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ETCD: &str = "/usr/bin/etcd";

/// A single-member etcd that lives as long as this value.
#[derive(Debug)]
pub struct TestEtcd {
    child: Child,
    url: String,
    dir: PathBuf,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl TestEtcd {
    /// Starts etcd and waits until it accepts connections. Without the
    /// binary it says so on stderr and returns `None` (the caller skips),
    /// unless `TRELLIS_REQUIRE_BACKENDS=1`, which makes that a panic.
    ///
    /// # Panics
    /// When etcd is required but missing, or does not start within 20 s.
    pub fn start() -> Option<TestEtcd> {
        if !std::path::Path::new(ETCD).exists() {
            assert!(
                std::env::var("TRELLIS_REQUIRE_BACKENDS").as_deref() != Ok("1"),
                "{ETCD} is missing (apt-get install etcd-server; scripts/setup does)"
            );
            eprintln!("SKIPPED: {ETCD} is not installed");
            return None;
        }
        let (client, peer) = (
            free_port().expect("a free port"),
            free_port().expect("a free port"),
        );
        let dir =
            std::env::temp_dir().join(format!("trellis-etcd-{client}-{}", std::process::id()));
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(ETCD)
            .args(["--name", "test", "--data-dir"])
            .arg(&dir)
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd starts");
        let etcd = TestEtcd { child, url, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
            assert!(Instant::now() < deadline, "etcd did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(etcd)
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
