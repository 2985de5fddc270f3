//! Runs one compiled connector method from the catalogue: parameter validation -> request
//! building -> outbound call -> paging -> error mapping. It reads only the connector's compiled
//! model ([`switchboard_connector::CompiledMethod`] / [`CompiledParam`](switchboard_connector::CompiledParam)):
//! the patterns, `require_one_of`, path template and reserved headers the loader validated are
//! the ones calls are checked and rendered with. Credentials (the bearer token) and the
//! install's rendered FHIR base and static headers ([`static_headers`]) come from the caller.

mod body;
pub mod capability;
mod error;
mod execute;
mod params;
mod request;

pub use body::{validate_body, WriteBody};
pub use error::{
    status_error, EngineError, OperationOutcomeIssue, EPIC_SEARCH_TOO_BROAD, MAX_ISSUES,
    MAX_ISSUE_TEXT,
};
pub use execute::{execute, resolve_next_link, MethodCall, MethodOutput};
pub use params::{validate_params, ParamError, ValidParams, MAX_REPEATED_VALUES, MAX_VALUE_CHARS};
pub use request::{build_request, static_headers};

#[cfg(test)]
mod tests;
