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
            Self::Internal(_) => ErrorCode::Internal,
            Self::DiscoveryFailed(_) => ErrorCode::DiscoveryFailed,
            Self::IssuerUnknown(_) => ErrorCode::IssuerUnknown,
            Self::InsufficientScope(_) => ErrorCode::InsufficientScope,
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
