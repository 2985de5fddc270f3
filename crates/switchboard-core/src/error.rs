use serde::Serialize;
use serde_json::{Map, Value};

macro_rules! error_codes {
    ($( $variant:ident => ($code:literal, $status:literal, $title:literal) ),+ $(,)?) => {
        /// THE table of error codes. Every error the API returns has one of these `code`s; the
        /// HTTP status and title come from here and nowhere else.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode { $( $variant ),+ }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$variant ),+ ];

            pub fn code(self) -> &'static str { match self { $( Self::$variant => $code ),+ } }
            pub fn status(self) -> u16 { match self { $( Self::$variant => $status ),+ } }
            pub fn title(self) -> &'static str { match self { $( Self::$variant => $title ),+ } }
        }
    };
}

error_codes! {
    Unauthorized            => ("unauthorized", 401, "Missing or invalid API key"),
    NotFound                => ("not_found", 404, "Not found"),
    UnknownConnector        => ("unknown_connector", 404, "Unknown connector"),
    UnknownMethod           => ("unknown_method", 404, "Unknown method"),
    InvalidRequest          => ("invalid_request", 400, "Invalid request"),
    InvalidId               => ("invalid_id", 400, "Invalid identifier"),
    PayloadTooLarge         => ("payload_too_large", 413, "Request body too large"),
    UnsupportedMediaType    => ("unsupported_media_type", 415, "Unsupported media type"),
    MethodNotAllowed        => ("method_not_allowed", 405, "Method not allowed"),
    AlreadyExists           => ("already_exists", 409, "Already exists"),
    InvalidSettings         => ("invalid_settings", 422, "Invalid connector settings"),
    InvalidParams           => ("invalid_params", 422, "Invalid method parameters"),
    InvalidReturnUrl        => ("invalid_return_url", 400, "return_url is not allowed"),
    UnsupportedAuthType     => ("unsupported_auth_type", 422, "Unsupported authentication type"),
    InstallNotAuthorized    => ("install_not_authorized", 409, "Install is not authorized"),
    CredentialsRejected     => ("credentials_rejected", 422, "The provider rejected the credentials"),
    InvalidState            => ("invalid_state", 400, "Unknown, expired or already used state"),
    AuthorizationDenied     => ("authorization_denied", 400, "The user or provider denied the authorization"),
    IssuerMismatch          => ("issuer_mismatch", 400, "Authorization response issuer does not match"),
    TokenExchangeFailed     => ("token_exchange_failed", 502, "Token exchange with the provider failed"),
    SearchTooBroad          => ("search_too_broad", 422, "Search matches too many records; narrow it"),
    UpstreamNotFound        => ("upstream_not_found", 404, "The EHR has no such resource"),
    UpstreamRejected        => ("upstream_rejected", 422, "The EHR rejected the request"),
    UpstreamForbidden       => ("upstream_forbidden", 403, "The EHR refused access"),
    UpstreamError           => ("upstream_error", 502, "The EHR returned an unusable response"),
    UpstreamUnavailable     => ("upstream_unavailable", 503, "The EHR is unavailable"),
    UpstreamTimeout         => ("upstream_timeout", 504, "The EHR did not answer in time"),
    UpstreamTooLarge        => ("upstream_response_too_large", 502, "The EHR response exceeds the configured size limit"),
    UpstreamNotAllowed      => ("upstream_not_allowed", 422, "Upstream address not allowed by policy"),
    ServiceUnavailable      => ("service_unavailable", 503, "Service unavailable"),
    Internal                => ("internal_error", 500, "Internal server error"),
    RateLimited             => ("rate_limited", 429, "Too many requests"),
    QuotaExceeded           => ("quota_exceeded", 409, "Tenant quota exceeded"),
    ReturnUrlOriginNotAllowed => ("return_url_origin_not_allowed", 422, "Return URL prefix outside the origins the operator allows"),
    // Issue 11: SMART discovery, the issuer check everywhere, granted scopes.
    DiscoveryFailed         => ("discovery_failed", 422, "SMART discovery failed"),
    IssuerUnknown           => ("issuer_unknown", 422, "The authorization server's issuer is unknown"),
    InsufficientScope       => ("insufficient_scope", 403, "The install was not granted the scope this method needs"),
    // Issue 12, writes: a create that failed after it was sent (5xx / broken exchange, or a
    // timeout): never retried, the EHR may or may not hold the resource.
    WriteOutcomeUnknown     => ("write_outcome_unknown", 502, "The write may or may not have been applied"),
    WriteOutcomeUnknownTimeout => ("write_outcome_unknown_timeout", 504, "The write timed out and may or may not have been applied"),
    // Issue 12, Idempotency-Key: the key was used with another request on this install; the
    // call holding the key is still running.
    IdempotencyKeyReused    => ("idempotency_key_reused", 422, "Idempotency-Key already used with a different request"),
    IdempotencyKeyInFlight  => ("idempotency_key_in_flight", 409, "A call with this Idempotency-Key is in progress"),
    // Issue 15, the web console: a write authenticated by the session cookie without the
    // session's X-CSRF-Token or from another origin.
    CsrfRejected            => ("csrf_rejected", 403, "Cross-site request refused"),
    // Issue 15, agent sessions and /mcp: a session request naming unknown methods, a write
    // without allow_writes or an expiry out of range; an /mcp request from a browser origin
    // the operator does not allow (DNS rebinding guard of the MCP transport).
    InvalidAgentSession     => ("invalid_agent_session", 422, "Invalid agent session request"),
    OriginNotAllowed        => ("origin_not_allowed", 403, "Origin not allowed"),
    // Issue 15, hosted connect page: the single-use link was already used or has expired; the
    // connect form came without its form token (or from another origin).
    ConnectLinkUsed         => ("connect_link_used", 410, "This connect link was already used"),
    ConnectLinkExpired      => ("connect_link_expired", 410, "This connect link has expired"),
    ConnectFormRejected     => ("connect_form_rejected", 403, "The connect form could not be verified"),
    // Issue 12, Bulk Data: the export job has no files to serve (not completed yet, failed,
    // cancelled or past its retention).
    BulkJobNotReady         => ("bulk_job_not_ready", 409, "The export job has no files to serve"),
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// An RFC 9457 problem. Built from an [`ErrorCode`] plus a human `detail` and optional
/// extension members; rendered as `application/problem+json` by the HTTP layer.
/// Other members (`errors`, `retry_after`, `issues`, `hint`, `install_status`) depend on the
/// code.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    pub code: &'static str,
    #[serde(flatten)]
    #[schema(ignore)]
    pub extensions: Map<String, Value>,
}

impl Problem {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            type_: format!("urn:switchboard:problem:{}", code.code()),
            title: code.title(),
            status: code.status(),
            detail: detail.into(),
            code: code.code(),
            extensions: Map::new(),
        }
    }

    /// Adds an extension member (e.g. `errors`, `retry_after`, `issues`, `hint`).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(key.to_owned(), value.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_snake_case_and_statuses_are_errors() {
        let mut seen = HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.code()), "duplicate code {}", c.code());
            assert!(c
                .code()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!(
                (400..600).contains(&c.status()),
                "{} has status {}",
                c,
                c.status()
            );
        }
    }

    /// docs/API.md is the contract users read: its table of codes must be this table.
    #[test]
    fn the_documented_code_table_is_this_table() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/API.md"),
        )
        .expect("docs/API.md");
        let table = doc
            .split("<!-- error-codes:start -->")
            .nth(1)
            .and_then(|rest| rest.split("<!-- error-codes:end -->").next())
            .expect("docs/API.md has the error-codes markers");
        let documented: Vec<(String, u16, String)> = table
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
                (
                    cells[0].trim_matches('`').to_owned(),
                    cells[1].parse().expect("a status"),
                    cells[2].to_owned(),
                )
            })
            .collect();
        let ours: Vec<(String, u16, String)> = ErrorCode::ALL
            .iter()
            .map(|c| (c.code().to_owned(), c.status(), c.title().to_owned()))
            .collect();
        assert_eq!(documented, ours);
    }

    /// A code nothing produces is dead weight in the contract: every variant is named somewhere
    /// in the workspace's production sources besides this table.
    #[test]
    fn every_code_is_used() {
        fn sources(dir: &std::path::Path, out: &mut String) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    sources(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && !path.ends_with("switchboard-core/src/error.rs")
                {
                    out.push_str(&std::fs::read_to_string(&path).unwrap());
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut text = String::new();
        for krate in std::fs::read_dir(root.join("crates")).unwrap() {
            let src = krate.unwrap().path().join("src");
            if src.is_dir() && !src.starts_with(root.join("crates/switchboard-testkit")) {
                sources(&src, &mut text);
            }
        }
        sources(&root.join("src"), &mut text);
        let unused: Vec<String> = ErrorCode::ALL
            .iter()
            .map(|c| format!("{c:?}"))
            .filter(|v| !text.contains(&format!("ErrorCode::{v}")))
            .collect();
        assert!(
            unused.is_empty(),
            "error codes nothing produces: {unused:?}"
        );
    }

    #[test]
    fn problem_renders_rfc9457_members() {
        let p = Problem::new(ErrorCode::InvalidParams, "bad").with("errors", vec!["x"]);
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["status"], 422);
        assert_eq!(v["code"], "invalid_params");
        assert_eq!(v["type"], "urn:switchboard:problem:invalid_params");
        assert_eq!(v["title"], "Invalid method parameters");
        assert_eq!(v["detail"], "bad");
        assert_eq!(v["errors"][0], "x");
    }
}
