//! What can go wrong running a method, and the mapping of upstream statuses and FHIR
//! `OperationOutcome`s onto it. No variant carries an upstream body: only the issues extracted
//! from an OperationOutcome, with free text bounded and cleaned.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use switchboard_outbound::{parse_retry_after, OutboundError};

/// Epic: "Additional data may exist" — the search matched more than Epic will return (100).
pub const EPIC_SEARCH_TOO_BROAD: &str = "4127";
/// Most issues kept from one OperationOutcome.
pub const MAX_ISSUES: usize = 20;
/// Longest `diagnostics` / `details_text` kept (characters).
pub const MAX_ISSUE_TEXT: usize = 300;
const MAX_ISSUE_CODE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// 401: the access token was refused. The service refreshes once and retries.
    #[error("the EHR rejected the access token")]
    Unauthorized,
    #[error("the EHR refused access")]
    Forbidden { issues: Vec<OperationOutcomeIssue> },
    #[error("the EHR found no such resource")]
    NotFound { issues: Vec<OperationOutcomeIssue> },
    /// Epic 4127: too many matches; the caller must narrow the search.
    #[error("the search matches too many records")]
    SearchTooBroad {
        status: u16,
        issues: Vec<OperationOutcomeIssue>,
    },
    /// Other 4xx (400, 409, 410, 422...).
    #[error("the EHR rejected the request with status {status}")]
    Rejected {
        status: u16,
        issues: Vec<OperationOutcomeIssue>,
    },
    /// 429/503, after the retries the method's verb allows.
    #[error("the EHR is unavailable (status {status})")]
    Unavailable {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Other 5xx, and 3xx (redirects are never followed; Epic answers a merged patient with
    /// 4107 plus a redirect).
    #[error("the EHR answered status {status}")]
    UpstreamStatus {
        status: u16,
        issues: Vec<OperationOutcomeIssue>,
    },
    /// A success status whose body is not JSON (the body is not kept).
    #[error("the EHR answered status {status} with a body that is not JSON")]
    UpstreamNotJson { status: u16 },
    /// A page reached through a `next` link is not a Bundle.
    #[error("page {page} of the EHR's search result is not a Bundle")]
    UpstreamInvalidPage { page: u32 },
    /// A Bundle `next` link outside the FHIR base (other origin or path): not followed, so
    /// the bearer token never leaves the FHIR server.
    #[error("the EHR's next-page link points outside the FHIR base")]
    ForeignNextLink,
    #[error("the EHR did not answer in time")]
    Timeout,
    /// A non-idempotent call (a create) failed after it was sent (5xx, timeout, broken
    /// exchange): the EHR may or may not have applied it. Never retried.
    #[error("the outcome of the write is unknown")]
    WriteOutcomeUnknown { timed_out: bool },
    #[error("the EHR response exceeds {limit} bytes")]
    TooLarge { limit: usize },
    /// The upstream address is refused by the outbound policy.
    #[error("upstream address not allowed")]
    NotAllowed(#[source] OutboundError),
    #[error("could not connect to the EHR")]
    Connect(#[source] OutboundError),
    #[error("the request to the EHR failed")]
    Transport(#[source] OutboundError),
    /// The method definition cannot be turned into a request (the loader should have caught
    /// it). The message names definition items, never values.
    #[error("invalid method definition: {0}")]
    Definition(String),
    /// The access token contains bytes not allowed in a header.
    #[error("the access token is not a valid header value")]
    InvalidBearer,
}

impl EngineError {
    /// The issues of the upstream OperationOutcome, when the error carries them.
    pub fn issues(&self) -> &[OperationOutcomeIssue] {
        match self {
            Self::Forbidden { issues }
            | Self::NotFound { issues }
            | Self::SearchTooBroad { issues, .. }
            | Self::Rejected { issues, .. }
            | Self::UpstreamStatus { issues, .. } => issues,
            _ => &[],
        }
    }

    /// The EHR's HTTP status, when the error is its answer (for the audit trail); `None` when
    /// no status was received (timeout, connection, policy) or the answer's status is not known
    /// here (a size limit hit while reading, a later page that is not a Bundle).
    pub fn upstream_status(&self) -> Option<u16> {
        match self {
            Self::Unauthorized => Some(401),
            Self::Forbidden { .. } => Some(403),
            Self::NotFound { .. } => Some(404),
            Self::SearchTooBroad { status, .. }
            | Self::Rejected { status, .. }
            | Self::Unavailable { status, .. }
            | Self::UpstreamStatus { status, .. }
            | Self::UpstreamNotJson { status } => Some(*status),
            _ => None,
        }
    }
}

impl From<OutboundError> for EngineError {
    fn from(e: OutboundError) -> Self {
        match e {
            OutboundError::NotAllowed { .. } => Self::NotAllowed(e),
            OutboundError::Timeout { .. } => Self::Timeout,
            OutboundError::TooLarge { limit, .. } => Self::TooLarge { limit },
            OutboundError::RetriesExhausted {
                status,
                retry_after,
            } => Self::Unavailable {
                status,
                retry_after,
            },
            OutboundError::Connect { .. } => Self::Connect(e),
            _ => Self::Transport(e),
        }
    }
}

/// One `OperationOutcome.issue`, reduced to what describes the error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperationOutcomeIssue {
    pub severity: String,
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<String>,
    /// First `details.coding[].code` (Epic's numeric codes: 4100, 4127...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details_text: Option<String>,
}

#[derive(Deserialize)]
struct OutcomeView {
    #[serde(rename = "resourceType")]
    resource_type: String,
    #[serde(default)]
    issue: Vec<IssueView>,
}

#[derive(Deserialize)]
struct IssueView {
    severity: Option<String>,
    code: Option<String>,
    diagnostics: Option<String>,
    details: Option<ConceptView>,
}

#[derive(Deserialize)]
struct ConceptView {
    #[serde(default)]
    coding: Vec<CodingView>,
    text: Option<String>,
}

#[derive(Deserialize)]
struct CodingView {
    code: Option<String>,
}

/// An OperationOutcome's issues, and whether any carries Epic's 4127.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub issues: Vec<OperationOutcomeIssue>,
    pub search_too_broad: bool,
}

/// Extracts the issues of an OperationOutcome body; anything else (not JSON, another
/// resource, unexpected shapes) yields no issues.
pub(crate) fn parse_outcome(body: &[u8]) -> Outcome {
    let Ok(view) = serde_json::from_slice::<OutcomeView>(body) else {
        return Outcome::default();
    };
    if view.resource_type != "OperationOutcome" {
        return Outcome::default();
    }
    let search_too_broad = view.issue.iter().any(|i| {
        i.details.as_ref().is_some_and(|d| {
            d.coding
                .iter()
                .any(|c| c.code.as_deref() == Some(EPIC_SEARCH_TOO_BROAD))
        })
    });
    let issues = view
        .issue
        .into_iter()
        .take(MAX_ISSUES)
        .map(|i| {
            let (details_code, details_text) = match i.details {
                Some(d) => (d.coding.into_iter().find_map(|c| c.code), d.text),
                None => (None, None),
            };
            OperationOutcomeIssue {
                severity: clean(i.severity.as_deref().unwrap_or(""), MAX_ISSUE_CODE),
                code: clean(i.code.as_deref().unwrap_or(""), MAX_ISSUE_CODE),
                diagnostics: i.diagnostics.map(|t| clean(&t, MAX_ISSUE_TEXT)),
                details_code: details_code.map(|t| clean(&t, MAX_ISSUE_CODE)),
                details_text: details_text.map(|t| clean(&t, MAX_ISSUE_TEXT)),
            }
        })
        .collect();
    Outcome {
        issues,
        search_too_broad,
    }
}

/// Drops control characters and keeps at most `max` characters.
fn clean(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// Maps a non-2xx upstream answer.
pub fn status_error(status: u16, headers: &HeaderMap, body: &[u8]) -> EngineError {
    match status {
        401 => EngineError::Unauthorized,
        429 | 503 => EngineError::Unavailable {
            status,
            retry_after: parse_retry_after(headers),
        },
        _ => {
            let outcome = parse_outcome(body);
            let issues = outcome.issues;
            match status {
                403 => EngineError::Forbidden { issues },
                404 => EngineError::NotFound { issues },
                400..=499 if outcome.search_too_broad => {
                    EngineError::SearchTooBroad { status, issues }
                }
                400..=499 => EngineError::Rejected { status, issues },
                _ => EngineError::UpstreamStatus { status, issues },
            }
        }
    }
}
