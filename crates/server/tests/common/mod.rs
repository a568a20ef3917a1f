//! Runs the real `trellis` binary for the integration tests: configs in temp
//! dirs, port 0 so runs never collide, and stderr followed line by line so
//! tests wait for what the process says rather than for time to pass.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_trellis");

/// Long enough for a debug build on a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A temp dir holding `trellis.toml` and the data dir.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        Workspace {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `trellis.toml` and returns its path.
    pub fn config(&self, text: &str) -> PathBuf {
        let path = self.dir.path().join("trellis.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A config listening on a free loopback port, data under the temp dir,
    /// plus `extra_control` lines in `[control]` and `rest` after it.
    pub fn up_config(&self, extra_control: &str, rest: &str) -> PathBuf {
        let data = self.dir.path().join("data");
        self.config(&format!(
            "[control]\nlisten = \"127.0.0.1:0\"\n{extra_control}\n\n[data]\ndir = '{}'\n\n{rest}\n",
            data.display()
        ))
    }

    pub fn check(&self, config: &Path) -> std::process::Output {
        Command::new(BIN)
            .args(["check", "-c"])
            .arg(config)
            .current_dir(self.path())
            .output()
            .unwrap()
    }
}

/// A running `trellis up`; killed on drop if still running.
pub struct Trellis {
    child: Child,
    lines: Receiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Trellis {
    pub fn up(ws: &Workspace, config: &Path) -> Self {
        Self::up_with_env(ws, config, &[])
    }

    pub fn up_with_env(ws: &Workspace, config: &Path, env: &[(&str, &str)]) -> Self {
        let config = config.to_string_lossy();
        Self::spawn(ws, &["up", "-c", &config], env)
    }

    /// Runs `trellis <args>` in `ws`, following its stderr.
    pub fn spawn(ws: &Workspace, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(ws.path())
            .env_remove("RUST_LOG")
            .env_remove("TRELLIS_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let all = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                all.lock().unwrap().push(line.clone());
                // The receiver may be gone; keep collecting the log anyway.
                let _ = tx.send(line);
            }
        });
        Trellis {
            child,
            lines,
            reader: Some(reader),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stderr line matching `pred`; panics with the log so far
    /// if none comes within [`PATIENCE`] or the process closes stderr.
    pub fn wait_for_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no log line {what}; log: {:#?}", self.log)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("trellis exited before logging {what}; log: {:#?}", self.log)
                }
            }
        }
    }

    /// The control address from the startup log line (text or JSON).
    pub fn control_addr(&mut self) -> SocketAddr {
        let line = self.wait_for_line("control API listening", |l| {
            l.contains("control API listening")
        });
        let addr = if let Some(rest) = line.split("addr=").nth(1) {
            rest.split_whitespace().next().unwrap().to_owned()
        } else {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            v["addr"].as_str().unwrap().to_owned()
        };
        addr.parse().unwrap()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Waits for exit, bounded by [`PATIENCE`]; returns the status and how
    /// long it took.
    pub fn wait_exit(&mut self) -> (ExitStatus, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let took = started.elapsed();
                // stderr is at EOF now; let the reader take in the last lines.
                if let Some(reader) = self.reader.take() {
                    reader.join().unwrap();
                }
                return (status, took);
            }
            assert!(
                started.elapsed() < PATIENCE,
                "trellis did not exit; log: {:#?}",
                self.log
            );
            // Polling a child's exit; std has no wait-with-timeout.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Trellis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `trellis` with `args` to completion.
pub fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An upstream that answers every request with its path.
pub async fn upstream() -> SocketAddr {
    let app = axum::Router::new()
        .fallback(|uri: axum::http::Uri| async move { format!("upstream saw {}", uri.path()) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The gateway listener's address from its startup log line.
pub fn gateway_addr(node: &mut Trellis) -> SocketAddr {
    let line = node.wait_for_line("gateway listening", |l| l.contains("gateway listening"));
    let addr = line
        .split("address=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    addr.trim_matches('"').parse().unwrap()
}
