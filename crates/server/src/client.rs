//! A client of the control API, for the commands that inspect a running node
//! (`trellis status`, and later `routes`, `services`, `streams`…).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde_json::Value;

use crate::config::{Config, Secret};

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at the address.
    #[error("cannot reach the control API at {addr}: {reason}")]
    Unreachable {
        /// Where we tried.
        addr: SocketAddr,
        /// Why it failed.
        reason: String,
    },
    /// The node answered with an error.
    #[error("{status} from {path}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The path asked for.
        path: String,
        /// The error message from the body, or the body.
        message: String,
    },
    /// The node answered with something that is not JSON.
    #[error("unexpected response from {path}: {reason}")]
    Malformed {
        /// The path asked for.
        path: String,
        /// What was wrong.
        reason: String,
    },
}

/// Talks to one node's control API.
#[derive(Debug, Clone)]
pub struct ControlClient {
    addr: SocketAddr,
    token: Option<Secret>,
    http: reqwest::Client,
}

impl ControlClient {
    /// A client for the node at `addr`, sending `token` if given.
    pub fn new(addr: SocketAddr, token: Option<Secret>) -> Self {
        ControlClient {
            addr,
            token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    /// The address a local client should use for a node running `config`:
    /// its listen address, with a wildcard IP replaced by loopback.
    pub fn local_addr(config: &Config) -> SocketAddr {
        let listen = config.control.listen;
        let ip = match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, listen.port())
    }

    /// `GET path`, expecting a JSON body. A 503 with a JSON body (as
    /// `/readyz` sends when not ready) is returned, not treated as an error.
    pub async fn get_json(&self, path: &str) -> Result<(u16, Value), ClientError> {
        let mut request = self.http.get(format!("http://{}{path}", self.addr));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            addr: self.addr,
            reason: root_cause(&e),
        })?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| ClientError::Malformed {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let json: Result<Value, _> = serde_json::from_str(&body);
        match json {
            Ok(v) if status < 400 || status == 503 => Ok((status, v)),
            Ok(v) => Err(ClientError::Status {
                status,
                path: path.to_owned(),
                message: v["error"]["message"]
                    .as_str()
                    .map_or_else(|| v.to_string(), str::to_owned),
            }),
            Err(_) if status >= 400 => Err(ClientError::Status {
                status,
                path: path.to_owned(),
                message: body,
            }),
            Err(e) => Err(ClientError::Malformed {
                path: path.to_owned(),
                reason: format!("not JSON: {e}"),
            }),
        }
    }
}

/// reqwest's chain repeats the URL at each level; the innermost cause
/// ("Connection refused") is what a person needs.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Renders `/v1/status` for people.
pub fn render_status(addr: SocketAddr, status: &Value) -> String {
    let uptime = status["uptime_seconds"].as_f64().unwrap_or(0.0);
    let uptime = humantime::format_duration(Duration::from_secs(uptime as u64));
    let ready = if status["ready"].as_bool() == Some(true) {
        "ready"
    } else {
        "not ready"
    };
    let mut out = format!(
        "trellis {} at {addr}: {}, {ready}, up {uptime}\n",
        status["version"].as_str().unwrap_or("?"),
        status["phase"].as_str().unwrap_or("?"),
    );
    if let Some(components) = status["components"].as_object() {
        for (name, state) in components {
            let mut line = format!("  {name:<12} {}", state["state"].as_str().unwrap_or("?"));
            if let Some(reason) = state["reason"].as_str() {
                line.push_str(&format!(" ({reason})"));
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}
