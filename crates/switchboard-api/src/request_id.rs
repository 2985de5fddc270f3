//! The request id: taken from `X-Request-Id` when it is a sane token (1 to 128 characters of
//! `[A-Za-z0-9._-]`), otherwise generated; echoed in the response's `X-Request-Id`, recorded on
//! the request's tracing span (so every log line of the request carries it) and kept in the
//! request's extensions for handlers that need it.

use std::fmt;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const MAX_REQUEST_ID_CHARS: usize = 128;

#[derive(Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// The id of `req` (set by the request-id middleware), as the services take it.
    pub fn of(req: &actix_web::HttpRequest) -> Option<String> {
        use actix_web::HttpMessage as _;
        req.extensions()
            .get::<RequestId>()
            .map(|r| r.as_str().to_owned())
    }

    /// The caller's id when it is acceptable, else a fresh one.
    pub fn accept_or_generate(headers: &HeaderMap) -> Self {
        headers
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .and_then(Self::parse)
            .unwrap_or_else(Self::generate)
    }

    /// `Some` when `s` is 1 to [`MAX_REQUEST_ID_CHARS`] characters of `[A-Za-z0-9._-]`.
    pub fn parse(s: &str) -> Option<Self> {
        let sane = !s.is_empty()
            && s.len() <= MAX_REQUEST_ID_CHARS
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        sane.then(|| Self(s.to_owned()))
    }

    /// 128 random bits, as 32 lowercase hex digits.
    pub fn generate() -> Self {
        Self(format!("{:032x}", rand::random::<u128>()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_str(&self.0).expect("a request id is a valid header value")
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_kept_and_others_replaced() {
        assert_eq!(
            RequestId::parse("abc-DEF_1.2").map(|r| r.0),
            Some("abc-DEF_1.2".into())
        );
        assert!(RequestId::parse(&"a".repeat(128)).is_some());
        for bad in ["", "a b", "a/b", "ü", "a\"b", &"a".repeat(129)] {
            assert!(RequestId::parse(bad).is_none(), "{bad:?}");
        }
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a, b);
        assert!(RequestId::parse(a.as_str()).is_some());
        assert_eq!(a.as_str().len(), 32);
    }
}
