//! The FHIR server's CapabilityStatement (`GET {fhir_base}metadata`) against a connector's
//! declared search parameters: which upstream parameter names the server does not list, per
//! method and resource type. A report, never a refusal: servers under-declare as well as
//! over-declare, so the host shows these as warnings on the setup.
//!
//! Compared: every `GET` method whose path is a bare resource type (a search, e.g.
//! `Observation`), each of its `query` parameters by its upstream (wire) name, with any
//! modifier (`family:exact`) or chain (`patient.identifier`) cut off. Names starting with `_`
//! (`_id`, `_count`, `_sort`, `_has:...`) are the common and result parameters every server
//! handles for every type and few list: they are not compared. Names are compared exactly
//! (`birthDate` is not `birthdate`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use switchboard_connector::{Connector, HttpVerb, ParamLocation};
use switchboard_outbound::{get_document, DocumentError};
use url::Url;

/// Largest CapabilityStatement read (Epic's R4 statement is about 1 MB).
pub const MAX_CAPABILITY_BYTES: usize = 8 * 1024 * 1024;

/// A declared search parameter the server's CapabilityStatement does not list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CapabilityWarning {
    /// The connector method declaring it.
    pub method: String,
    /// The resource type it searches.
    pub resource: String,
    /// The parameter's upstream name (without modifier).
    pub param: String,
}

/// The search parameters a server lists, by resource type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerSearchParams {
    by_type: BTreeMap<String, BTreeSet<String>>,
}

impl ServerSearchParams {
    /// Whether the server lists `param` for `resource` (false when it lists no such type).
    pub fn lists(&self, resource: &str, param: &str) -> bool {
        self.by_type
            .get(resource)
            .is_some_and(|names| names.contains(param))
    }
}

/// Why the CapabilityStatement could not be read. Messages carry the URL and the status only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} could not be reached: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} did not return a usable CapabilityStatement: {reason}")]
    Invalid { url: String, reason: String },
}

/// `{fhir_base}metadata` (the base is given a trailing `/`).
pub fn metadata_url(fhir_base: &Url) -> String {
    let mut s = fhir_base.as_str().to_owned();
    if !s.ends_with('/') {
        s.push('/');
    }
    s.push_str("metadata");
    s
}

/// The search parameters of a CapabilityStatement's server-mode `rest` entries (a statement
/// without `rest.mode` is read as a server's).
pub fn parse(doc: &Value) -> Result<ServerSearchParams, String> {
    if doc.get("resourceType").and_then(Value::as_str) != Some("CapabilityStatement") {
        return Err("not a CapabilityStatement".into());
    }
    let mut by_type: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let rests = doc.get("rest").and_then(Value::as_array);
    for rest in rests.into_iter().flatten() {
        if rest.get("mode").and_then(Value::as_str).unwrap_or("server") != "server" {
            continue;
        }
        let resources = rest.get("resource").and_then(Value::as_array);
        for r in resources.into_iter().flatten() {
            let Some(kind) = r.get("type").and_then(Value::as_str) else {
                continue;
            };
            let names = by_type.entry(kind.to_owned()).or_default();
            let params = r.get("searchParam").and_then(Value::as_array);
            for p in params.into_iter().flatten() {
                if let Some(name) = p.get("name").and_then(Value::as_str) {
                    names.insert(name.to_owned());
                }
            }
        }
    }
    Ok(ServerSearchParams { by_type })
}

/// The parameter a wire name searches: without modifier or chain.
fn base_name(wire: &str) -> &str {
    let end = wire.find([':', '.']).unwrap_or(wire.len());
    &wire[..end]
}

/// The resource type a method searches, when its path is a bare resource type.
fn searched_type(path: &str) -> Option<&str> {
    let p = path.trim_matches('/');
    let mut chars = p.chars();
    (chars.next()?.is_ascii_uppercase() && chars.all(|c| c.is_ascii_alphanumeric())).then_some(p)
}

/// The connector's declared search parameters the server does not list, sorted, each once.
pub fn unlisted_params(
    connector: &Connector,
    server: &ServerSearchParams,
) -> Vec<CapabilityWarning> {
    let mut out = BTreeSet::new();
    for m in connector.methods() {
        if m.def.verb != HttpVerb::Get {
            continue;
        }
        let Some(resource) = searched_type(&m.def.path) else {
            continue;
        };
        for p in &m.def.params {
            if p.location != ParamLocation::Query {
                continue;
            }
            let name = base_name(p.wire_name());
            if name.is_empty() || name.starts_with('_') || server.lists(resource, name) {
                continue;
            }
            out.insert(CapabilityWarning {
                method: m.def.id.clone(),
                resource: resource.to_owned(),
                param: name.to_owned(),
            });
        }
    }
    out.into_iter().collect()
}

/// Reads `{fhir_base}metadata` with `headers` (the connector's discovery headers, e.g. Epic's
/// `Epic-Client-ID`; no credentials: FHIR servers serve `metadata` without a token). The
/// caller has checked the URL against the outbound policy and gives a client that enforces it.
pub async fn read(
    http: &reqwest::Client,
    fhir_base: &Url,
    headers: &[(String, String)],
) -> Result<ServerSearchParams, CapabilityError> {
    let url = metadata_url(fhir_base);
    let invalid = |reason: &str| CapabilityError::Invalid {
        url: url.clone(),
        reason: reason.to_owned(),
    };
    let parsed = Url::parse(&url).map_err(|_| invalid("not a valid URL"))?;
    let body = get_document(
        http,
        parsed,
        "application/fhir+json",
        headers,
        MAX_CAPABILITY_BYTES,
    )
    .await
    .map_err(|e| match e {
        DocumentError::Status(status) => CapabilityError::Status {
            url: url.clone(),
            status,
        },
        DocumentError::TooLarge => invalid(&e.to_string()),
        DocumentError::Unreachable(reason) => CapabilityError::Unreachable {
            url: url.clone(),
            reason: reason.into(),
        },
    })?;
    let doc: Value = serde_json::from_slice(&body).map_err(|_| invalid("not JSON"))?;
    parse(&doc).map_err(|reason| invalid(&reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn connector() -> Connector {
        let def = switchboard_connector::load_str(
            std::path::Path::new("t.toml"),
            r#"
id = "t"
name = "T"
version = "1.0.0"
fhir_base = "https://fhir.example/"
[[settings]]
key = "api_token"
label = "API token"
secret = true
[[auth]]
type = "static_bearer"
token = "{{settings.api_token}}"
[[methods]]
id = "search_patients"
name = "S"
verb = "GET"
path = "Patient"
params = [
    { name = "birthdate", upstream_name = "birthDate", in = "query", type = "date" },
    { name = "family", in = "query" },
    { name = "family_exact", upstream_name = "family:exact", in = "query" },
    { name = "_count", in = "query", type = "integer" },
]
[[methods]]
id = "get_patient"
name = "G"
verb = "GET"
path = "Patient/{id}"
params = [{ name = "id", in = "path", required = true }]
[[methods]]
id = "search_observations"
name = "O"
verb = "GET"
path = "Observation"
params = [{ name = "patient", in = "query" }]
"#,
        )
        .unwrap();
        Connector::new(def).unwrap()
    }

    #[test]
    fn reports_declared_names_the_server_does_not_list() {
        let doc = json!({
            "resourceType": "CapabilityStatement",
            "rest": [
                { "mode": "client", "resource": [{ "type": "Observation", "searchParam": [{ "name": "patient" }] }] },
                { "mode": "server", "resource": [
                    { "type": "Patient", "searchParam": [{ "name": "birthdate" }, { "name": "family" }] }
                ] }
            ]
        });
        let server = parse(&doc).unwrap();
        let w = |m: &str, r: &str, p: &str| CapabilityWarning {
            method: m.into(),
            resource: r.into(),
            param: p.into(),
        };
        assert_eq!(
            unlisted_params(&connector(), &server),
            [
                w("search_observations", "Observation", "patient"),
                w("search_patients", "Patient", "birthDate"),
            ]
        );
        assert!(parse(&json!({"resourceType": "Bundle"})).is_err());
        assert_eq!(
            metadata_url(&Url::parse("https://fhir.example/r4").unwrap()),
            "https://fhir.example/r4/metadata"
        );
    }
}
