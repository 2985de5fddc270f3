//! The crate's one error type and the scrubbing applied to every server-supplied string kept in it.

/// Longest `error_description` kept from a server (in characters).
pub const MAX_DESCRIPTION_CHARS: usize = 200;
/// Longest `error` code kept from a server (in characters).
const MAX_ERROR_CODE_CHARS: usize = 64;

/// Errors of the OAuth protocol layer.
///
/// No message (`Display` or `Debug`) ever contains a token, code, verifier, state, client secret
/// or a response body: only the status, the RFC 6749 §5.2 `error` code and a scrubbed, truncated
/// `error_description` are kept from a server.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The code or refresh token is invalid, expired, revoked or already used: the install needs
    /// to be authorised again.
    #[error("the authorization server rejected the grant (invalid_grant){}", describe(.description))]
    InvalidGrant { description: Option<String> },
    /// The client credentials were rejected (400 or 401 `invalid_client`).
    #[error("the authorization server rejected the client credentials (invalid_client){}", describe(.description))]
    InvalidClient { description: Option<String> },
    /// Any other RFC 6749 §5.2 error, or `http_<status>` when a 4xx came without a JSON `error`.
    #[error("the authorization server answered HTTP {status} `{error}`{}", describe(.description))]
    OAuth {
        error: String,
        description: Option<String>,
        status: u16,
    },
    /// 5xx, 429, 408, connect failure, timeout: retry later; says nothing about the grant, so an
    /// install must NOT be demoted because of it.
    #[error("temporary failure talking to the authorization server: {reason}")]
    Transient { status: Option<u16>, reason: String },
    /// A 2xx (or 3xx) answer that breaks the protocol: not JSON, no `access_token`, `token_type`
    /// other than Bearer, a redirect, an oversized body.
    #[error("the authorization server broke the protocol: {0}")]
    Protocol(String),
    /// An endpoint or redirect URI that is not an absolute http(s) URL (or has a fragment).
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// The request cannot be built from the given configuration: a missing client secret, an
    /// extra parameter that would override a protocol parameter, an empty client id.
    #[error("invalid OAuth client configuration: {0}")]
    Misconfigured(String),
    /// RFC 9207: the authorization response carried an `iss` that is not the expected issuer
    /// (or one was sent where none is expected). The code must not be redeemed.
    #[error("authorization response issuer check failed: {0}")]
    IssuerMismatch(&'static str),
}

impl AuthError {
    /// Retry later; the grant may still be good.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    /// The grant is dead (`invalid_grant`): re-authorisation is needed.
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, Self::InvalidGrant { .. })
    }

    /// The HTTP status the error came with, when it came from an HTTP answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::OAuth { status, .. } => Some(*status),
            Self::Transient { status, .. } => *status,
            _ => None,
        }
    }
}

fn describe(description: &Option<String>) -> String {
    match description {
        Some(d) if !d.is_empty() => format!(": {d}"),
        _ => String::new(),
    }
}

/// Scrubs a server's `error_description`: removes every occurrence of the secrets we sent (some
/// servers echo the rejected code or token), drops control characters, collapses the result to
/// at most [`MAX_DESCRIPTION_CHARS`] characters. Empty results become `None`.
pub(crate) fn scrub_description(raw: &str, sent_secrets: &[&str]) -> Option<String> {
    let mut text = raw.to_owned();
    for secret in sent_secrets {
        // Very short values (e.g. a 1-char test code) would redact ordinary words; real codes,
        // tokens, verifiers and secrets are far longer.
        if secret.len() >= 4 {
            text = text.replace(secret, "[REDACTED]");
        }
    }
    let cleaned: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_DESCRIPTION_CHARS)
        .collect();
    let cleaned = cleaned.trim();
    (!cleaned.is_empty()).then(|| cleaned.to_owned())
}

/// Keeps an RFC 6749 §5.2 `error` code only if it is made of the characters the RFC allows
/// (%x20-21 / %x23-5B / %x5D-7E) and is reasonably short.
pub(crate) fn scrub_error_code(raw: &str) -> Option<String> {
    let ok = !raw.is_empty()
        && raw.chars().count() <= MAX_ERROR_CODE_CHARS
        && raw
            .chars()
            .all(|c| matches!(c, '\x20'..='\x7e') && c != '"' && c != '\\');
    ok.then(|| raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn description_is_scrubbed_truncated_and_redacted() {
        let long = "x".repeat(500);
        assert_eq!(
            scrub_description(&long, &[]).unwrap().chars().count(),
            MAX_DESCRIPTION_CHARS
        );
        assert_eq!(
            scrub_description("bad\r\ncode\u{7}\ttoken", &[]).as_deref(),
            Some("badcodetoken")
        );
        assert_eq!(
            scrub_description("refresh token RT-abc123 expired", &["RT-abc123"]).as_deref(),
            Some("refresh token [REDACTED] expired")
        );
        assert_eq!(scrub_description("  \n ", &[]), None);
        // Multi-byte characters are counted as characters, never split.
        let accents = "é".repeat(300);
        assert_eq!(
            scrub_description(&accents, &[]).unwrap().chars().count(),
            200
        );
    }

    #[test]
    fn error_code_charset() {
        assert_eq!(
            scrub_error_code("invalid_grant").as_deref(),
            Some("invalid_grant")
        );
        assert_eq!(scrub_error_code("bad\"quote"), None);
        assert_eq!(scrub_error_code("new\nline"), None);
        assert_eq!(scrub_error_code(""), None);
        assert_eq!(scrub_error_code(&"a".repeat(65)), None);
    }

    #[test]
    fn display_never_shows_empty_description() {
        let e = AuthError::InvalidGrant { description: None };
        assert_eq!(
            e.to_string(),
            "the authorization server rejected the grant (invalid_grant)"
        );
        let e = AuthError::OAuth {
            error: "invalid_scope".into(),
            description: Some("nope".into()),
            status: 400,
        };
        assert_eq!(
            e.to_string(),
            "the authorization server answered HTTP 400 `invalid_scope`: nope"
        );
        assert!(AuthError::Transient {
            status: Some(503),
            reason: "x".into()
        }
        .is_transient());
        assert!(AuthError::InvalidGrant { description: None }.is_invalid_grant());
        assert!(!AuthError::Protocol("x".into()).is_transient());
    }
}
