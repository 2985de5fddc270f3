//! Runs one connector method: parameter validation -> request building -> outbound call ->
//! paging -> error mapping. Works on `switchboard_connector` model types only; credentials
//! (the bearer token) and rendered settings (FHIR base, static headers) come from the caller.

mod error;
mod execute;
mod params;
mod request;

pub use error::{
    extract_issues, EngineError, OperationOutcomeIssue, EPIC_SEARCH_TOO_BROAD, MAX_ISSUES,
    MAX_ISSUE_TEXT,
};
pub use execute::{execute, resolve_next_link, MethodCall, MethodOutput};
pub use params::{
    precompile_patterns, validate_params, ParamError, ValidParams, MAX_REPEATED_VALUES,
    MAX_VALUE_CHARS,
};
pub use request::build_request;

#[cfg(test)]
mod tests;
