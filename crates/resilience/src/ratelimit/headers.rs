//! A [`Decision`] as HTTP response headers, so a gateway can send `429`
//! with `Retry-After` and annotate every response with its quota.
//!
//! Two generations of the IETF draft (draft-ietf-httpapi-ratelimit-headers)
//! are in use, and clients read one or the other, so both are written:
//!
//! - `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (delta
//!   seconds) — the form of the early drafts that most clients parse;
//! - `RateLimit-Policy: "name";q=<limit>;w=<window seconds>` and
//!   `RateLimit: "name";r=<remaining>;t=<reset seconds>` — the structured
//!   fields of the current draft.
//!
//! `Retry-After` (delta seconds) is written only for a refused call. Every
//! duration is rounded up to whole seconds, so a client that waits as told
//! is never early.

use super::Decision;
use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use std::time::Duration;

/// `RateLimit-Limit`.
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`.
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset`.
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
/// `RateLimit-Policy` (structured field, current draft).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (structured field, current draft).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

impl Decision {
    /// Writes this decision's headers into `headers`, replacing any there.
    /// `policy` names the quota in the structured fields (e.g. `"default"`,
    /// `"per-tenant"`); characters a quoted string cannot hold become `_`.
    pub fn write_headers(&self, policy: &str, headers: &mut HeaderMap) {
        let reset = ceil_secs(self.reset_after);
        let name = sanitize(policy);
        headers.insert(RATELIMIT_LIMIT, HeaderValue::from(self.limit));
        headers.insert(RATELIMIT_REMAINING, HeaderValue::from(self.remaining));
        headers.insert(RATELIMIT_RESET, HeaderValue::from(reset));
        let fields = [
            (
                RATELIMIT_POLICY,
                format!("\"{name}\";q={};w={}", self.limit, ceil_secs(self.window)),
            ),
            (
                RATELIMIT,
                format!("\"{name}\";r={};t={reset}", self.remaining),
            ),
        ];
        for (header, value) in fields {
            // Sanitized to visible ASCII above, so this always parses.
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(header, value);
            }
        }
        if self.allowed {
            headers.remove(RETRY_AFTER);
        } else {
            headers.insert(RETRY_AFTER, HeaderValue::from(ceil_secs(self.retry_after)));
        }
    }

    /// This decision's headers in a map of their own.
    pub fn headers(&self, policy: &str) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(6);
        self.write_headers(policy, &mut headers);
        headers
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Keeps a policy name inside a structured-field string: visible ASCII
/// without `"` or `\`.
fn sanitize(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '_',
        })
        .collect();
    if cleaned.is_empty() {
        "default".to_owned()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
        h.get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn refused_decision_says_when_to_come_back() {
        let d = Decision {
            allowed: false,
            limit: 100,
            remaining: 0,
            reset_after: Duration::from_millis(59_001),
            retry_after: Duration::from_millis(600),
            window: Duration::from_secs(60),
        };
        let h = d.headers("per-key");
        assert_eq!(get(&h, "retry-after"), Some("1"));
        assert_eq!(get(&h, "ratelimit-limit"), Some("100"));
        assert_eq!(get(&h, "ratelimit-remaining"), Some("0"));
        assert_eq!(get(&h, "ratelimit-reset"), Some("60"));
        assert_eq!(get(&h, "ratelimit-policy"), Some("\"per-key\";q=100;w=60"));
        assert_eq!(get(&h, "ratelimit"), Some("\"per-key\";r=0;t=60"));
    }

    #[test]
    fn allowed_decision_has_no_retry_after_and_names_are_sanitized() {
        let d = Decision {
            allowed: true,
            limit: 10,
            remaining: 9,
            reset_after: Duration::from_secs(6),
            retry_after: Duration::ZERO,
            window: Duration::from_secs(60),
        };
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from(5));
        d.write_headers("a\"b\\c\u{e9}\n", &mut h);
        assert_eq!(get(&h, "retry-after"), None);
        assert_eq!(get(&h, "ratelimit"), Some("\"a_b_c__\";r=9;t=6"));
        assert_eq!(
            get(&d.headers(""), "ratelimit-policy"),
            Some("\"default\";q=10;w=60")
        );
    }
}
