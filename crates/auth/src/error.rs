//! Why a request was refused, and the `401` a client gets for it: a
//! `WWW-Authenticate` challenge and an RFC 9457 problem-details body with a
//! stable `code`. The client learns which of four codes applies and nothing
//! more; the precise [`AuthError`] goes to the log.

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::Full;

/// The precise reason a request was refused. Only its [`FailureCode`]
/// reaches the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Neither a token nor an API key was presented.
    #[error("no credentials presented")]
    MissingCredentials,
    /// Not three base64url parts with a JSON header, or too long.
    #[error("malformed token")]
    MalformedToken,
    /// `alg: none`.
    #[error("unsigned token (alg: none)")]
    UnsignedToken,
    /// The token's algorithm is unknown or not in the allow-list.
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    /// No configured key fits the token's `kid` and algorithm.
    #[error("no key matches the token's kid and algorithm")]
    NoMatchingKey,
    /// No fitting key verified the signature.
    #[error("signature does not verify")]
    BadSignature,
    /// `exp` is past, beyond the leeway.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future, beyond the leeway.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not an accepted issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` names none of the accepted audiences.
    #[error("wrong audience")]
    WrongAudience,
    /// A required claim is absent.
    #[error("missing claim {0:?}")]
    MissingClaim(String),
    /// A claim has the wrong type (e.g. a string `exp`).
    #[error("invalid claim {0:?}")]
    InvalidClaim(String),
    /// The API key matches no configured hash.
    #[error("unknown API key")]
    UnknownApiKey,
}

/// The stable error codes clients see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureCode {
    /// `missing_credentials`
    MissingCredentials,
    /// `invalid_token`
    InvalidToken,
    /// `token_expired`
    TokenExpired,
    /// `invalid_api_key`
    InvalidApiKey,
}

impl FailureCode {
    /// The code as it appears in the problem body.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::MissingCredentials => "missing_credentials",
            FailureCode::InvalidToken => "invalid_token",
            FailureCode::TokenExpired => "token_expired",
            FailureCode::InvalidApiKey => "invalid_api_key",
        }
    }

    fn detail(self) -> &'static str {
        match self {
            FailureCode::MissingCredentials => "This resource requires authentication.",
            FailureCode::InvalidToken => "The bearer token is not valid.",
            FailureCode::TokenExpired => "The bearer token has expired.",
            FailureCode::InvalidApiKey => "The API key is not valid.",
        }
    }
}

impl AuthError {
    /// What the client is told.
    pub fn code(&self) -> FailureCode {
        match self {
            AuthError::MissingCredentials => FailureCode::MissingCredentials,
            AuthError::Expired => FailureCode::TokenExpired,
            AuthError::UnknownApiKey => FailureCode::InvalidApiKey,
            _ => FailureCode::InvalidToken,
        }
    }

    fn is_token_error(&self) -> bool {
        !matches!(
            self,
            AuthError::MissingCredentials | AuthError::UnknownApiKey
        )
    }
}

/// Which schemes a route accepts, for the `WWW-Authenticate` challenges.
#[derive(Debug, Clone)]
pub(crate) struct Challenge {
    pub realm: String,
    pub bearer: bool,
    /// The API key header name, when API keys are accepted.
    pub api_key_header: Option<String>,
}

impl Challenge {
    /// The `401` for `error`. Its body is built from fixed strings only, so
    /// nothing from the request can be reflected back.
    pub(crate) fn response(&self, error: &AuthError) -> Response<Full<Bytes>> {
        let code = error.code();
        let body = serde_json::json!({
            "type": "about:blank",
            "title": "Unauthorized",
            "status": 401,
            "detail": code.detail(),
            "code": code.as_str(),
        });
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.bearer {
            // RFC 6750 §3.1: no error attribute when no credentials were sent.
            let value = match error {
                e if e.is_token_error() => {
                    let description = match code {
                        FailureCode::TokenExpired => "The token has expired",
                        _ => "The token is not valid",
                    };
                    format!(
                        "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{description}\"",
                        self.realm
                    )
                }
                _ => format!("Bearer realm=\"{}\"", self.realm),
            };
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.append(WWW_AUTHENTICATE, value);
            }
        }
        if let Some(header) = &self.api_key_header {
            if let Ok(value) = HeaderValue::from_str(&format!(
                "ApiKey realm=\"{}\", header=\"{header}\"",
                self.realm
            )) {
                headers.append(WWW_AUTHENTICATE, value);
            }
        }
        response
    }
}
