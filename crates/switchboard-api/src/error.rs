use actix_web::http::{header, StatusCode};
use actix_web::{error, HttpResponse, ResponseError};
use serde_json::json;
use switchboard_core::{ErrorCode, Problem};
use switchboard_service::ServiceError;

/// Every error the API returns. Rendered as RFC 9457 problem+json in `error_response`, the one
/// place where service errors become HTTP.
#[derive(Debug)]
pub struct ApiError(pub Problem);

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0.code, self.0.detail)
    }
}

/// Seconds a client is asked to wait on a 503 or 429 that carries no more specific hint.
const DEFAULT_RETRY_AFTER_SECS: u64 = 2;

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::from_problem(Problem::new(code, detail))
    }

    /// Every 503 and 429 tells the client when to retry (`retry_after` in the body, `Retry-After`
    /// in the header): a specific value where one is known, else a short default.
    fn from_problem(p: Problem) -> Self {
        if matches!(p.status, 429 | 503) && !p.extensions.contains_key("retry_after") {
            return Self(p.with("retry_after", DEFAULT_RETRY_AFTER_SECS));
        }
        Self(p)
    }
}

/// A cookie-authenticated write that fails the console's CSRF rule.
impl From<switchboard_service::console::CsrfError> for ApiError {
    fn from(e: switchboard_service::console::CsrfError) -> Self {
        Self::new(ErrorCode::CsrfRejected, e.to_string())
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let code = e.code();
        let problem = match e {
            ServiceError::InvalidSettings(errors) => Problem::new(
                code,
                format!("{} setting(s) are invalid", errors.len()),
            )
            .with("errors", json!(errors)),
            ServiceError::InvalidParams(errors) => Problem::new(
                code,
                format!("{} parameter(s) are invalid", errors.len()),
            )
            .with("errors", json!(errors)),
            ServiceError::InstallNotAuthorized { status, detail } => Problem::new(code, detail)
                .with("install_status", status)
                .with(
                    "hint",
                    "POST /v1/accounts/{account}/installs/{install}/authorize returns a new authorize_url",
                ),
            ServiceError::Upstream {
                detail,
                retry_after_secs,
                issues,
                ..
            } => {
                let mut p = Problem::new(code, detail);
                if let Some(s) = retry_after_secs {
                    p = p.with("retry_after", s);
                }
                if !issues.is_empty() {
                    p = p.with("issues", issues);
                }
                p
            }
            ServiceError::RefreshInProgress { retry_after_secs } => {
                let detail = ServiceError::RefreshInProgress { retry_after_secs }.to_string();
                Problem::new(code, detail).with("retry_after", retry_after_secs.max(1))
            }
            ServiceError::RateLimited {
                detail,
                retry_after_secs,
            } => Problem::new(code, detail).with("retry_after", retry_after_secs.max(1)),
            ServiceError::IdempotencyKeyInFlight { retry_after_secs } => {
                let detail = ServiceError::IdempotencyKeyInFlight { retry_after_secs }.to_string();
                Problem::new(code, detail).with("retry_after", retry_after_secs.max(1))
            }
            ServiceError::QuotaExceeded { quota, limit } => {
                Problem::new(code, ServiceError::QuotaExceeded { quota, limit }.to_string())
                    .with("quota", quota)
                    .with("limit", limit)
            }
            ServiceError::UpstreamNotAllowed(errors) => Problem::new(
                code,
                format!(
                    "{} upstream URL(s) point at an address the outbound policy refuses",
                    errors.len()
                ),
            )
            .with("errors", json!(errors)),
            ServiceError::InvalidAgentSession(errors) => Problem::new(
                code,
                format!("{} field(s) of the agent session are invalid", errors.len()),
            )
            .with("errors", json!(errors)),
            ServiceError::Internal(cause) => {
                // The cause is logged, never shown.
                tracing::error!(cause = %cause, "internal error");
                Problem::new(code, "an internal error occurred; it has been logged")
            }
            other => Problem::new(code, other.to_string()),
        };
        Self::from_problem(problem)
    }
}

/// The `Retry-After` seconds of a response: the problem's `retry_after`, or the default on a
/// 503/429 that carries none (an `ApiError` built around a bare `Problem`). Every 503 and 429
/// this API sends has the header.
fn retry_after_of(p: &Problem) -> Option<u64> {
    p.extensions
        .get("retry_after")
        .and_then(|v| v.as_u64())
        .or_else(|| matches!(p.status, 429 | 503).then_some(DEFAULT_RETRY_AFTER_SECS))
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        res.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        if let Some(s) = retry_after_of(&self.0) {
            res.insert_header((header::RETRY_AFTER, s.to_string()));
        }
        if self.0.status == 401 {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        res.body(serde_json::to_string(&self.0).unwrap_or_default())
    }
}

pub(crate) fn json_config(limit: usize) -> actix_web::web::JsonConfig {
    actix_web::web::JsonConfig::default()
        .limit(limit)
        .error_handler(|err, _req| {
            let e = match &err {
                error::JsonPayloadError::OverflowKnownLength { .. }
                | error::JsonPayloadError::Overflow { .. } => ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "the request body exceeds server.max_body_bytes",
                ),
                error::JsonPayloadError::ContentType => ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    "send the body as application/json",
                ),
                error::JsonPayloadError::Deserialize(d) => ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("the JSON body is invalid: {}", sanitize(&d.to_string())),
                ),
                _ => ApiError::new(
                    ErrorCode::InvalidRequest,
                    "the request body could not be read",
                ),
            };
            error::InternalError::from_response(err, e.error_response()).into()
        })
}

pub(crate) fn query_config() -> actix_web::web::QueryConfig {
    actix_web::web::QueryConfig::default().error_handler(|err, _req| {
        // serde names the parameter and what it expects; `sanitize` drops the value sent.
        let e = ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "the query string is invalid: {}",
                sanitize(&err.to_string())
            ),
        );
        error::InternalError::from_response(err, e.error_response()).into()
    })
}

pub(crate) fn path_config() -> actix_web::web::PathConfig {
    actix_web::web::PathConfig::default().error_handler(|err, _req| {
        // Every path parameter is an id: the only way a segment fails is the id rules.
        let e = ApiError::new(
            ErrorCode::InvalidId,
            switchboard_core::InvalidId.to_string(),
        );
        error::InternalError::from_response(err, e.error_response()).into()
    })
}

/// serde messages name fields (in backticks) and types, but also quote the offending string
/// value (`invalid type: string "...", expected a map`), which may be a secret pasted into the
/// wrong field: quoted values are replaced by `"…"`, control characters dropped, length capped.
fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(200));
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '"' {
            // Skip to the closing quote of the Debug-escaped value.
            let mut escaped = false;
            for v in chars.by_ref() {
                match (escaped, v) {
                    (false, '\\') => escaped = true,
                    (false, '"') => break,
                    _ => escaped = false,
                }
            }
            out.push_str("\"…\"");
        } else if c == '`' && VALUE_KINDS.iter().any(|k| out.ends_with(k)) {
            // serde renders non-string values (`integer `200001``) in backticks; field names
            // also use backticks but never follow these words.
            for v in chars.by_ref() {
                if v == '`' {
                    break;
                }
            }
            out.push_str("`…`");
        } else if !c.is_control() {
            out.push(c);
        }
    }
    out.chars().take(200).collect()
}

/// Words serde puts before a backtick-quoted VALUE (as opposed to a field name).
const VALUE_KINDS: &[&str] = &[
    "integer ",
    "floating point ",
    "boolean ",
    "character ",
    "variant ",
];

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn sanitize_drops_quoted_values_and_keeps_field_names() {
        assert_eq!(
            sanitize(r#"invalid type: string "s3cr\"et", expected a map at line 1 column 9"#),
            r#"invalid type: string "…", expected a map at line 1 column 9"#
        );
        assert_eq!(
            sanitize("unknown field `colour`, expected `name`"),
            "unknown field `colour`, expected `name`"
        );
        assert_eq!(
            sanitize("invalid type: integer `200001`, expected a string"),
            "invalid type: integer `…`, expected a string"
        );
        assert_eq!(
            sanitize("invalid type: floating point `1.5`, expected u32"),
            "invalid type: floating point `…`, expected u32"
        );
        assert_eq!(
            sanitize("unknown variant `secretish`, expected `a` or `b`"),
            "unknown variant `…`, expected `a` or `b`"
        );
        assert_eq!(sanitize("a\nb"), "ab");
        assert_eq!(sanitize(&"x".repeat(500)).len(), 200);
    }

    /// Every path that produces a 503 (or a 429) answers with `Retry-After`: each service error
    /// that maps to 503, and an `ApiError` built around a bare problem.
    #[test]
    fn every_503_carries_retry_after() {
        use super::ApiError;
        use actix_web::ResponseError;
        use switchboard_core::{ErrorCode, Problem};
        use switchboard_service::ServiceError;
        let cases: Vec<(ApiError, &str)> = vec![
            (
                ServiceError::Unavailable("the database is unavailable".into()).into(),
                "2",
            ),
            (
                ServiceError::RefreshInProgress {
                    retry_after_secs: 1,
                }
                .into(),
                "1",
            ),
            (
                ServiceError::RefreshInProgress {
                    retry_after_secs: 0,
                }
                .into(),
                "1",
            ),
            (
                ServiceError::Upstream {
                    code: ErrorCode::UpstreamUnavailable,
                    detail: "the EHR is unavailable".into(),
                    retry_after_secs: None,
                    issues: vec![],
                }
                .into(),
                "2",
            ),
            (
                ServiceError::Upstream {
                    code: ErrorCode::UpstreamUnavailable,
                    detail: "the EHR is unavailable".into(),
                    retry_after_secs: Some(120),
                    issues: vec![],
                }
                .into(),
                "120",
            ),
            (
                ApiError::new(ErrorCode::ServiceUnavailable, "not ready"),
                "2",
            ),
            (
                ApiError(Problem::new(ErrorCode::ServiceUnavailable, "bare")),
                "2",
            ),
        ];
        for (e, want) in cases {
            let res = e.error_response();
            assert_eq!(res.status().as_u16(), 503, "{e}");
            let got = res
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap());
            assert_eq!(got, Some(want), "{e}");
        }
    }
}
