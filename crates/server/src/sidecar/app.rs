//! The app as a child process: started with its ports in the environment,
//! its output copied line by line into the sidecar's log, probed until it is
//! ready, and stopped with SIGTERM then, after a grace period, SIGKILL.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// How the app is started.
#[derive(Debug, Clone)]
pub struct AppSpec {
    pub app_id: String,
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Extra environment for the app.
    pub env: Vec<(String, String)>,
}

/// A running app.
pub struct App {
    child: Child,
    pid: Option<u32>,
}

impl App {
    /// Starts the app. On Linux it is asked to receive SIGKILL if the sidecar
    /// dies, so a killed sidecar never leaves an unsupervised app serving.
    pub fn spawn(spec: &AppSpec) -> anyhow::Result<App> {
        let (program, args) = spec
            .command
            .split_first()
            .context("no app command given after `--`")?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start the app {program:?}"))?;
        let pid = child.id();
        if let Some(out) = child.stdout.take() {
            tokio::spawn(copy_lines(out, spec.app_id.clone(), "stdout"));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(copy_lines(err, spec.app_id.clone(), "stderr"));
        }
        tracing::info!(app_id = %spec.app_id, pid, command = ?spec.command, "app started");
        Ok(App { child, pid })
    }

    /// Waits for the app to exit.
    pub async fn exited(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(mut self, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        #[cfg(unix)]
        if let Some(pid) = self.pid.and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) on our own child's pid; it has not been reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                tracing::warn!(
                    pid = self.pid,
                    ?grace,
                    "app did not stop in time; killing it"
                );
                let _ = self.child.kill().await;
                self.child.wait().await.ok()
            }
        }
    }
}

/// Copies the app's output into the log, one event per line.
async fn copy_lines(stream: impl AsyncRead + Unpin, app_id: String, name: &'static str) {
    let mut lines = BufReader::new(stream).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                tracing::info!(target: "trellis::app", app_id = %app_id, stream = name, "{line}")
            }
            Ok(None) => return,
            Err(e) => {
                // Not UTF-8 or a broken pipe: say so once and stop copying.
                tracing::warn!(app_id = %app_id, stream = name, error = %e, "cannot read the app's output");
                return;
            }
        }
    }
}

/// One readiness probe of the app at `addr`: a TCP connect, or a `GET` of
/// `health_path` answered 2xx.
pub async fn probe(http: &reqwest::Client, addr: SocketAddr, health_path: Option<&str>) -> bool {
    match health_path {
        None => matches!(
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
                .await,
            Ok(Ok(_))
        ),
        Some(path) => http
            .get(format!("http://{addr}{path}"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success()),
    }
}
