//! Deciding what an outcome means.
//!
//! A breaker needs to know whether a call failed; a retry needs to know
//! whether it may try again and how long the server asked it to wait. Both
//! ask a [`Classify`], so one definition of failure serves both, and the
//! layers themselves stay protocol-agnostic.

use std::time::Duration;

/// What one call's result means to the resilience layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// The call counts as a failure in a breaker's window.
    pub failure: bool,
    /// Trying again may succeed (a connect error, a 503, a 429).
    pub retryable: bool,
    /// The server said how long to wait before trying again (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl Outcome {
    /// A plain success.
    pub const fn success() -> Self {
        Outcome {
            failure: false,
            retryable: false,
            retry_after: None,
        }
    }

    /// A failure that may be retried.
    pub const fn failure() -> Self {
        Outcome {
            failure: true,
            retryable: true,
            retry_after: None,
        }
    }

    /// A failure that must not be retried.
    pub const fn fatal() -> Self {
        Outcome {
            failure: true,
            retryable: false,
            retry_after: None,
        }
    }

    /// The same outcome, with the server's requested wait.
    pub const fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }
}

/// Classifies the result of a call.
///
/// Implemented for closures `Fn(&Result<Res, E>) -> Outcome`, so an ad-hoc
/// rule is one line.
pub trait Classify<Res, E> {
    /// What this result means.
    fn classify(&self, result: &Result<Res, E>) -> Outcome;
}

impl<Res, E, F> Classify<Res, E> for F
where
    F: Fn(&Result<Res, E>) -> Outcome,
{
    fn classify(&self, result: &Result<Res, E>) -> Outcome {
        self(result)
    }
}

/// The default for plain futures: `Ok` succeeds, `Err` fails and may be retried.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsFail;

impl<Res, E> Classify<Res, E> for ErrorsFail {
    fn classify(&self, result: &Result<Res, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::success(),
            Err(_) => Outcome::failure(),
        }
    }
}

#[cfg(feature = "http")]
pub use self::http_classify::HttpClassifier;

#[cfg(feature = "http")]
mod http_classify {
    use super::{Classify, Outcome};
    use http::{header::RETRY_AFTER, HeaderMap, Response, StatusCode};
    use std::time::Duration;

    /// HTTP semantics: transport errors (connect, reset, timeout) and 5xx
    /// fail; 4xx are the caller's fault and do not. 502, 503, 504 and
    /// transport errors may be retried; so may 429, which is not a failure
    /// of the upstream but a request to slow down. `Retry-After` (seconds
    /// or an HTTP date) is reported so a retry honours it.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct HttpClassifier {
        /// Also retry a plain 500 (Envoy's `5xx` retry-on does; off by default
        /// because a 500 usually means the request itself is the problem).
        pub retry_500: bool,
    }

    impl<B, E> Classify<Response<B>, E> for HttpClassifier {
        fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
            let response = match result {
                Ok(response) => response,
                Err(_) => return Outcome::failure(),
            };
            let status = response.status();
            let retry_after = || retry_after(response.headers());
            if status == StatusCode::TOO_MANY_REQUESTS {
                return Outcome {
                    failure: false,
                    retryable: true,
                    retry_after: retry_after(),
                };
            }
            if status.is_server_error() {
                let retryable = matches!(
                    status,
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                ) || (self.retry_500
                    && status == StatusCode::INTERNAL_SERVER_ERROR);
                return Outcome {
                    failure: true,
                    retryable,
                    retry_after: retry_after(),
                };
            }
            Outcome::success()
        }
    }

    /// Parses `Retry-After` as delay-seconds or an HTTP date. A date in the
    /// past means "now"; garbage means the header is ignored.
    pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
        let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
        if let Ok(secs) = value.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        let when = httpdate(value)?;
        Some(
            when.duration_since(std::time::SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    }

    /// IMF-fixdate only (`Sun, 06 Nov 1994 08:49:37 GMT`), the one form
    /// RFC 9110 requires senders to use.
    fn httpdate(s: &str) -> Option<std::time::SystemTime> {
        let b = s.as_bytes();
        if b.len() != 29 || &s[25..] != " GMT" || b[3] != b',' {
            return None;
        }
        let day: u64 = s.get(5..7)?.parse().ok()?;
        let month = match s.get(8..11)? {
            "Jan" => 1,
            "Feb" => 2,
            "Mar" => 3,
            "Apr" => 4,
            "May" => 5,
            "Jun" => 6,
            "Jul" => 7,
            "Aug" => 8,
            "Sep" => 9,
            "Oct" => 10,
            "Nov" => 11,
            "Dec" => 12,
            _ => return None,
        };
        let year: i64 = s.get(12..16)?.parse().ok()?;
        let hour: u64 = s.get(17..19)?.parse().ok()?;
        let min: u64 = s.get(20..22)?.parse().ok()?;
        let sec: u64 = s.get(23..25)?.parse().ok()?;
        if !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 || year < 1970 {
            return None;
        }
        let days = days_from_civil(year, month, day as i64);
        let secs = days as u64 * 86_400 + hour * 3600 + min * 60 + sec;
        Some(std::time::UNIX_EPOCH + Duration::from_secs(secs))
    }

    /// Days since 1970-01-01 (Howard Hinnant's algorithm).
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = if y >= 0 { y } else { y - 399 } / 400;
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn response(status: u16, retry_after: Option<&str>) -> Result<Response<()>, ()> {
            let mut builder = Response::builder().status(status);
            if let Some(v) = retry_after {
                builder = builder.header(RETRY_AFTER, v);
            }
            Ok(builder.body(()).expect("valid response"))
        }

        #[test]
        fn five_hundreds_fail_four_hundreds_do_not() {
            let c = HttpClassifier::default();
            assert!(c.classify(&response(503, None)).failure);
            assert!(c.classify(&response(503, None)).retryable);
            assert!(c.classify(&response(500, None)).failure);
            assert!(!c.classify(&response(500, None)).retryable);
            assert!(!c.classify(&response(404, None)).failure);
            assert!(!c.classify(&response(404, None)).retryable);
            assert!(!c.classify(&response(200, None)).failure);
            let err: Result<Response<()>, ()> = Err(());
            assert_eq!(c.classify(&err), Outcome::failure());
        }

        #[test]
        fn too_many_requests_is_retryable_not_a_failure() {
            let o = HttpClassifier::default().classify(&response(429, Some("7")));
            assert!(!o.failure);
            assert!(o.retryable);
            assert_eq!(o.retry_after, Some(Duration::from_secs(7)));
        }

        #[test]
        fn retry_after_parses_dates_and_ignores_garbage() {
            let past = response(503, Some("Sun, 06 Nov 1994 08:49:37 GMT"));
            let o = HttpClassifier::default().classify(&past);
            assert_eq!(o.retry_after, Some(Duration::ZERO));
            for junk in [
                "soon",
                "-1",
                "Sun, 06 Nov 1994 08:49:37 UTC",
                "",
                "99999999999999999999",
            ] {
                let o = HttpClassifier::default().classify(&response(503, Some(junk)));
                assert_eq!(o.retry_after, None, "{junk:?}");
            }
            assert_eq!(days_from_civil(1970, 1, 1), 0);
            assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        }
    }
}

#[cfg(feature = "http")]
pub use self::http_classify::retry_after;
