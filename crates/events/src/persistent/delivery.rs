//! Delivering one event to an HTTP endpoint, and retrying with exponential backoff.
//!
//! The POST is a small HTTP/1.1 exchange over a fresh connection
//! (`Connection: close`): the only thing read back is the status line, since a
//! 2xx is the acknowledgement. It is written against tokio's sockets because
//! this crate carries no HTTP client dependency; plain `http://` endpoints
//! only (a sidecar or the gateway terminates TLS in front of a service).

use std::future::Future;
use std::time::Duration;

use http::Uri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest response head read before giving up on a reply.
const MAX_HEAD: usize = 16 << 10;

/// Where events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    host: String,
    port: u16,
    path: String,
    authority: String,
}

impl Endpoint {
    /// Parses an `http://host[:port]/path` URL.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let uri: Uri = url.parse().map_err(|e| {
            format!(
                "`{}` is not a URL: {e}",
                url.chars().take(80).collect::<String>()
            )
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err("https endpoints are not supported; deliver over http to a local sidecar or gateway".into())
            }
            _ => return Err("the endpoint must be an absolute http:// URL".into()),
        }
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or("the endpoint URL has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let authority = uri
            .authority()
            .map_or_else(|| host.clone(), |a| a.as_str().to_owned());
        Ok(Endpoint {
            host,
            port,
            path,
            authority,
        })
    }
}

/// POSTs `body` and returns `Ok` on a 2xx, else a description of the failure.
pub async fn post(
    endpoint: &Endpoint,
    content_type: &str,
    headers: &[(&str, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<u16, String> {
    let exchange = async {
        let mut conn = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| format!("connect to {}: {e}", endpoint.authority))?;
        let _ = conn.set_nodelay(true);
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: trellis\r\n",
            endpoint.path,
            endpoint.authority,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        conn.write_all(head.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        conn.write_all(body)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut buf = Vec::with_capacity(512);
        let mut chunk = [0u8; 1024];
        while !buf.windows(2).any(|w| w == b"\r\n") {
            let n = conn
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read response: {e}"))?;
            if n == 0 {
                return Err("the endpoint closed the connection without a response".to_owned());
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > MAX_HEAD {
                return Err("the response status line is too long".to_owned());
            }
        }
        parse_status(&buf)
    };
    let status = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no response within {}", humantime::format_duration(timeout)))??;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(format!("the endpoint answered {status}"))
    }
}

fn parse_status(head: &[u8]) -> Result<u16, String> {
    let line = head
        .split(|b| *b == b'\n')
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .unwrap_or_default();
    let mut parts = line.split_whitespace();
    match (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => Ok(code),
        _ => Err(format!(
            "not an HTTP response: `{}`",
            line.chars().take(60).collect::<String>()
        )),
    }
}

/// Exponential backoff: `min`, `2·min`, `4·min`, … capped at `max`, for the
/// wait after failed attempt number `attempt` (from 1).
pub fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    min.saturating_mul(factor).min(max)
}

/// What came of delivering one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// Acknowledged on this attempt.
    Acked { attempts: u32 },
    /// Every attempt failed; this was the last error.
    Failed { attempts: u32, error: String },
}

/// Calls `attempt` up to `max_attempts` times, sleeping [`backoff`] between
/// failures, until one succeeds.
pub async fn with_retries<F, Fut>(
    max_attempts: u32,
    min: Duration,
    max: Duration,
    attempt: F,
) -> Delivered
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    retry_loop(max_attempts, min, max, attempt, tokio::time::sleep).await
}

/// The retry loop with its sleep injected, so the schedule is testable
/// without a clock (this crate's tokio has no `test-util`).
async fn retry_loop<F, Fut, S, SFut>(
    max_attempts: u32,
    min: Duration,
    max: Duration,
    mut attempt: F,
    mut sleep: S,
) -> Delivered
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<(), String>>,
    S: FnMut(Duration) -> SFut,
    SFut: Future<Output = ()>,
{
    let max_attempts = max_attempts.max(1);
    let mut n = 1;
    loop {
        match attempt(n).await {
            Ok(()) => return Delivered::Acked { attempts: n },
            Err(error) if n >= max_attempts => return Delivered::Failed { attempts: n, error },
            Err(_) => {
                sleep(backoff(n, min, max)).await;
                n += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_minimum_up_to_the_cap() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<u64> = (1..=6)
            .map(|a| backoff(a, min, max).as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(
            backoff(200, min, max),
            max,
            "no overflow on huge attempt counts"
        );
    }

    #[tokio::test]
    async fn retries_wait_the_backoff_between_attempts_then_give_up() {
        let attempts = std::cell::RefCell::new(Vec::new());
        let waits = std::cell::RefCell::new(Vec::new());
        let out = retry_loop(
            4,
            Duration::from_millis(100),
            Duration::from_secs(10),
            |n| {
                attempts.borrow_mut().push(n);
                async move { Err(format!("fail {n}")) }
            },
            |d| {
                waits.borrow_mut().push(d.as_millis() as u64);
                async {}
            },
        )
        .await;
        assert_eq!(
            out,
            Delivered::Failed {
                attempts: 4,
                error: "fail 4".into()
            }
        );
        assert_eq!(attempts.into_inner(), [1, 2, 3, 4]);
        assert_eq!(
            waits.into_inner(),
            [100, 200, 400],
            "no wait after the last attempt"
        );
    }

    #[tokio::test]
    async fn a_success_stops_the_retries() {
        let mut calls = 0;
        let out = retry_loop(
            5,
            Duration::from_secs(1),
            Duration::from_secs(1),
            |n| {
                calls += 1;
                async move {
                    if n == 3 {
                        Ok(())
                    } else {
                        Err("no".into())
                    }
                }
            },
            |_| async {},
        )
        .await;
        assert_eq!((out, calls), (Delivered::Acked { attempts: 3 }, 3));
    }

    #[test]
    fn endpoints_are_checked() {
        let e = Endpoint::parse("http://127.0.0.1:8080/hooks/orders?x=1").unwrap();
        assert_eq!((e.port, e.path.as_str()), (8080, "/hooks/orders?x=1"));
        assert!(Endpoint::parse("https://example.com/")
            .unwrap_err()
            .contains("https"));
        assert!(Endpoint::parse("ftp://x/").is_err());
        assert!(Endpoint::parse("not a url").is_err());
        assert!(Endpoint::parse("/relative").is_err());
    }

    #[test]
    fn status_lines_are_parsed() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Ok(204));
        assert!(parse_status(b"SSH-2.0-OpenSSH\r\n").is_err());
    }
}
