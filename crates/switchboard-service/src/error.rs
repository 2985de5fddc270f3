use serde::Serialize;
use switchboard_core::ErrorCode;

/// A field-level problem in a request body (settings or method params).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What a service call can fail with. Each variant names its client-facing kind; the HTTP layer
/// turns it into problem+json through `switchboard_core::ErrorCode` in one place. Messages are
/// written for API callers and never contain secrets, tokens or upstream bodies.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    NotFound(String),
    #[error("connector '{0}' does not exist")]
    UnknownConnector(String),
    #[error("method '{0}' does not exist on this connector")]
    UnknownMethod(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("settings are invalid")]
    InvalidSettings(Vec<FieldError>),
    #[error("parameters are invalid")]
    InvalidParams(Vec<FieldError>),
    #[error("{0}")]
    InvalidReturnUrl(String),
    #[error("{0}")]
    UnsupportedAuthType(String),
    #[error("install is {status}: {detail}")]
    InstallNotAuthorized {
        status: &'static str,
        detail: String,
    },
    #[error("{0}")]
    CredentialsRejected(String),
    #[error("{0}")]
    TokenExchangeFailed(String),
    #[error("{detail}")]
    Upstream {
        code: ErrorCode,
        detail: String,
        retry_after_secs: Option<u64>,
        issues: Vec<serde_json::Value>,
    },
    #[error("{0}")]
    Unavailable(String),
    /// Another process holds the install's refresh lease past the wait: 503 with this
    /// `Retry-After` (its refresh normally ends soon; a dead holder's lease is reclaimed once its
    /// heartbeat is stale).
    #[error("a token refresh for this install is in progress in another process; retry shortly")]
    RefreshInProgress { retry_after_secs: u64 },
    /// Discovery was needed and failed: the message names the URL and the status.
    #[error("{0}")]
    DiscoveryFailed(String),
    /// An authorization-code install cannot start: no issuer is declared or discovered. The
    /// message names the setting to fix.
    #[error("{0}")]
    IssuerUnknown(String),
    /// The install's granted scopes do not cover the method's declared scope (named).
    #[error("{0}")]
    InsufficientScope(String),
    /// Anything else: logged with its cause, shown to the caller as a generic 500.
    #[error("internal error: {0}")]
    Internal(String),
    /// A rate (per API key, or a connector-declared outbound limit) is exhausted.
    #[error("{detail}")]
    RateLimited {
        detail: String,
        /// Seconds until a retry can succeed (at least 1).
        retry_after_secs: u64,
    },
    /// A per-tenant quota (`limits.max_*_per_tenant`) is reached; nothing was written.
    #[error("the tenant already has the most {quota} allowed ({limit}); delete some first or ask the operator to raise limits.max_{quota}_per_tenant")]
    QuotaExceeded { quota: &'static str, limit: u64 },
    /// A tenant return-URL prefix outside `security.tenant_return_url_origins` and
    /// `security.allowed_return_urls`.
    #[error("{0}")]
    ReturnUrlOriginNotAllowed(String),
    /// The Idempotency-Key was first used with another method or body on this install.
    #[error("this Idempotency-Key was already used on this install with a different method or body; use a new key for a new request")]
    IdempotencyKeyReused,
    /// The call that claimed this Idempotency-Key has not finished: retry after the delay.
    #[error("a call with this Idempotency-Key is still in progress; retry after the delay to get its result")]
    IdempotencyKeyInFlight { retry_after_secs: u64 },
    /// A Bulk Data job's files were asked for while it has none to serve (its state says why).
    #[error("{0}")]
    BulkJobNotReady(String),
    /// Settings whose URLs (as given, or rendered) the outbound address policy refuses.
    #[error("an upstream URL is refused by the outbound policy")]
    UpstreamNotAllowed(Vec<FieldError>),
    /// An agent session request naming unknown methods, a write without `allow_writes`, or an
    /// expiry out of range; one entry per bad field.
    #[error("the agent session request is invalid")]
    InvalidAgentSession(Vec<FieldError>),
    /// A connect link whose form was already submitted (single use).
    #[error("this connect link was already used")]
    ConnectLinkUsed,
    /// A connect link past its `expires_at`.
    #[error("this connect link has expired")]
    ConnectLinkExpired,
}

impl ServiceError {
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }

    /// The client-facing code of this error (the table lives in `switchboard_core`).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::UnknownConnector(_) => ErrorCode::UnknownConnector,
            Self::UnknownMethod(_) => ErrorCode::UnknownMethod,
            Self::InvalidRequest(_) => ErrorCode::InvalidRequest,
            Self::AlreadyExists(_) => ErrorCode::AlreadyExists,
            Self::InvalidSettings(_) => ErrorCode::InvalidSettings,
            Self::InvalidParams(_) => ErrorCode::InvalidParams,
            Self::InvalidReturnUrl(_) => ErrorCode::InvalidReturnUrl,
            Self::UnsupportedAuthType(_) => ErrorCode::UnsupportedAuthType,
            Self::InstallNotAuthorized { .. } => ErrorCode::InstallNotAuthorized,
            Self::CredentialsRejected(_) => ErrorCode::CredentialsRejected,
            Self::TokenExchangeFailed(_) => ErrorCode::TokenExchangeFailed,
            Self::Upstream { code, .. } => *code,
            Self::Unavailable(_) => ErrorCode::ServiceUnavailable,
            Self::RefreshInProgress { .. } => ErrorCode::ServiceUnavailable,
            Self::Internal(_) => ErrorCode::Internal,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::QuotaExceeded { .. } => ErrorCode::QuotaExceeded,
            Self::UpstreamNotAllowed(_) => ErrorCode::UpstreamNotAllowed,
            Self::ReturnUrlOriginNotAllowed(_) => ErrorCode::ReturnUrlOriginNotAllowed,
            Self::DiscoveryFailed(_) => ErrorCode::DiscoveryFailed,
            Self::IssuerUnknown(_) => ErrorCode::IssuerUnknown,
            Self::InsufficientScope(_) => ErrorCode::InsufficientScope,
            Self::IdempotencyKeyReused => ErrorCode::IdempotencyKeyReused,
            Self::IdempotencyKeyInFlight { .. } => ErrorCode::IdempotencyKeyInFlight,
            Self::InvalidAgentSession(_) => ErrorCode::InvalidAgentSession,
            Self::ConnectLinkUsed => ErrorCode::ConnectLinkUsed,
            Self::ConnectLinkExpired => ErrorCode::ConnectLinkExpired,
            Self::BulkJobNotReady(_) => ErrorCode::BulkJobNotReady,
        }
    }
}

impl From<switchboard_db::DbError> for ServiceError {
    fn from(e: switchboard_db::DbError) -> Self {
        match e {
            switchboard_db::DbError::NotFound => Self::NotFound("not found".into()),
            switchboard_db::DbError::Conflict => Self::AlreadyExists("already exists".into()),
            switchboard_db::DbError::Pool(cause) => {
                // The cause may name the host; it is logged, the caller gets a retryable 503.
                tracing::warn!(cause = %cause, "database unavailable");
                Self::Unavailable("the database is unavailable; retry shortly".into())
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<switchboard_crypto::CryptoError> for ServiceError {
    fn from(e: switchboard_crypto::CryptoError) -> Self {
        Self::Internal(e.to_string())
    }
}
