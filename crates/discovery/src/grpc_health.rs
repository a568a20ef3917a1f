//! The gRPC health-checking protocol (`grpc.health.v1.Health/Check`), the
//! check Kubernetes, Envoy and Consul run against gRPC servers.
//!
//! Written against hyper's HTTP/2 client rather than tonic: the protocol is
//! one unary call whose request and response are each a single small
//! protobuf field, so a generated client would bring tonic, prost and their
//! build step into the registry for some thirty lines of framing. The
//! parsing is bounded: a response larger than [`MAX_RESPONSE`] or framed
//! wrongly is a failed check with a message saying why, never a panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::health::ProbeResult;
use crate::model::Status;

const PATH: &str = "/grpc.health.v1.Health/Check";
/// A health response is a few bytes; anything beyond this is not one.
const MAX_RESPONSE: usize = 16 * 1024;

/// `HealthCheckResponse.ServingStatus`.
const SERVING: u64 = 1;

/// Asks the server at `authority` about `service` ("" for the whole server).
pub(crate) async fn probe(authority: &str, service: &str) -> ProbeResult {
    match check(authority, service).await {
        Ok(()) => ProbeResult {
            status: Status::Passing,
            output: format!("gRPC health {}: SERVING", shown(service)),
        },
        Err(why) => ProbeResult {
            status: Status::Critical,
            output: format!("gRPC health {}: {why}", shown(service)),
        },
    }
}

fn shown(service: &str) -> &str {
    if service.is_empty() {
        "(server)"
    } else {
        service
    }
}

async fn check(authority: &str, service: &str) -> Result<(), String> {
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let result = async {
        let request = http::Request::post(format!("http://{authority}{PATH}"))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header(http::header::USER_AGENT, "trellis-registry-check")
            .body(Full::new(request_message(service)))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("HTTP status {}", response.status()));
        }
        // A trailers-only response carries grpc-status in the headers.
        let head_status = grpc_status(response.headers());
        let collected = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("reading the response: {e}"))?;
        let trailer_status = collected.trailers().and_then(grpc_status);
        match head_status.or(trailer_status) {
            Some((0, _)) => {}
            Some((code, message)) => {
                return Err(format!("grpc-status {code} {message}")
                    .trim_end()
                    .to_owned())
            }
            None => return Err("no grpc-status in the response".to_owned()),
        }
        let status = serving_status(collected.to_bytes())?;
        if status == SERVING {
            Ok(())
        } else {
            Err(status_name(status).to_owned())
        }
    }
    .await;
    conn.abort();
    result
}

/// A length-prefixed `HealthCheckRequest { service }`.
fn request_message(service: &str) -> Bytes {
    let mut proto = BytesMut::new();
    if !service.is_empty() {
        proto.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut proto, service.len() as u64);
        proto.put_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(5 + proto.len());
    framed.put_u8(0); // not compressed
    framed.put_u32(proto.len() as u32);
    framed.put_slice(&proto);
    framed.freeze()
}

fn grpc_status(headers: &http::HeaderMap) -> Option<(u32, String)> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Some((code, message))
}

/// Reads `HealthCheckResponse.status` (field 1, a varint) from one
/// length-prefixed message; unknown fields are skipped as protobuf requires.
fn serving_status(mut body: Bytes) -> Result<u64, String> {
    if body.remaining() < 5 {
        return Err("response has no message".to_owned());
    }
    if body.get_u8() != 0 {
        return Err("compressed response not supported".to_owned());
    }
    let len = body.get_u32() as usize;
    if len > body.remaining() {
        return Err(format!("message of {len} bytes is truncated"));
    }
    let mut msg = body.split_to(len);
    // proto3: an absent status field means UNKNOWN (0).
    let mut status = 0;
    while msg.has_remaining() {
        let key = varint(&mut msg)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = varint(&mut msg)?,
            (_, 0) => {
                varint(&mut msg)?;
            }
            (_, 1) => skip(&mut msg, 8)?,
            (_, 2) => {
                let n = varint(&mut msg)?;
                skip(&mut msg, usize::try_from(n).map_err(|_| "field too long")?)?;
            }
            (_, 5) => skip(&mut msg, 4)?,
            (field, wire) => return Err(format!("bad protobuf: field {field} wire type {wire}")),
        }
    }
    Ok(status)
}

fn varint(buf: &mut Bytes) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return Err("bad protobuf: truncated varint".to_owned());
        }
        let byte = buf.get_u8();
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("bad protobuf: varint too long".to_owned())
}

fn skip(buf: &mut Bytes, n: usize) -> Result<(), String> {
    if buf.remaining() < n {
        return Err("bad protobuf: truncated field".to_owned());
    }
    buf.advance(n);
    Ok(())
}

fn put_varint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

fn status_name(status: u64) -> &'static str {
    match status {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "unrecognised status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(proto: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(0);
        b.put_u32(proto.len() as u32);
        b.put_slice(proto);
        b.freeze()
    }

    #[test]
    fn request_names_the_service() {
        assert_eq!(&request_message("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &request_message("ab")[..],
            &[0, 0, 0, 0, 4, 0x0a, 2, b'a', b'b']
        );
    }

    #[test]
    fn reads_the_status_and_skips_unknown_fields() {
        assert_eq!(serving_status(framed(&[0x08, 1])), Ok(1));
        assert_eq!(serving_status(framed(&[0x08, 2])), Ok(2));
        assert_eq!(serving_status(framed(&[])), Ok(0));
        // An unknown string field 2, then the status.
        assert_eq!(
            serving_status(framed(&[0x12, 2, b'x', b'y', 0x08, 1])),
            Ok(1)
        );
    }

    #[test]
    fn hostile_responses_are_errors_not_panics() {
        let cases: Vec<Bytes> = vec![
            Bytes::new(),
            Bytes::from_static(&[0, 0, 0]),
            Bytes::from_static(&[1, 0, 0, 0, 0]),
            Bytes::from_static(&[0, 0xff, 0xff, 0xff, 0xff, 0x08]),
            framed(&[0x08]),
            framed(&[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ]),
            framed(&[0x12, 0x7f, 1]),
            framed(&[0x0b]),
            framed(&[0x09, 1, 2]),
        ];
        for body in cases {
            assert!(serving_status(body.clone()).is_err(), "{body:?}");
        }
    }
}
