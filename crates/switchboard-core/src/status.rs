use serde::{Deserialize, Serialize};

/// Lifecycle of an install (API.md "Install status").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallStatus {
    PendingAuthorization,
    Authorized,
    NeedsReauthorization,
    Error,
}

impl InstallStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingAuthorization => "pending_authorization",
            Self::Authorized => "authorized",
            Self::NeedsReauthorization => "needs_reauthorization",
            Self::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending_authorization" => Self::PendingAuthorization,
            "authorized" => Self::Authorized,
            "needs_reauthorization" => Self::NeedsReauthorization,
            "error" => Self::Error,
            _ => return None,
        })
    }
}

impl std::fmt::Display for InstallStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares with a status name (`row.status == "authorized"`).
impl PartialEq<&str> for InstallStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
