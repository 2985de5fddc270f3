//! SMART discovery: `{fhir_base}.well-known/smart-configuration` (SMART App Launch 2.2
//! conformance), optionally completed by the issuer's `.well-known/openid-configuration`.
//! Relative URLs in the document are resolved against the FHIR base, as SMART says. Errors name
//! the URL and the HTTP status, never the body.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use switchboard_outbound::{get_document, DocumentError};
use url::Url;

/// Largest discovery document read (Oracle Health's lists 303 scopes: ~20 KB).
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// What the host keeps of a discovery document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmartConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection_endpoint: Option<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub code_challenge_methods_supported: Vec<String>,
    #[serde(default)]
    pub grant_types_supported: Vec<String>,
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// RFC 9207 §3: the server puts `iss` in every authorization response.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}

/// Why discovery failed. Messages carry the URL and the status only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} could not be reached: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} did not return a usable discovery document: {reason}")]
    Invalid { url: String, reason: String },
}

impl DiscoveryError {
    /// The URL that failed.
    pub fn url(&self) -> &str {
        match self {
            Self::Status { url, .. }
            | Self::Unreachable { url, .. }
            | Self::Invalid { url, .. } => url,
        }
    }
}

/// `{fhir_base}.well-known/smart-configuration` (the base is given a trailing `/`).
pub fn smart_configuration_url(fhir_base: &Url) -> String {
    let mut s = fhir_base.as_str().to_owned();
    if !s.ends_with('/') {
        s.push('/');
    }
    s.push_str(".well-known/smart-configuration");
    s
}

/// Reads the SMART configuration of `fhir_base` with the connector's discovery `headers`; when
/// `openid` is set and the document names an issuer, the issuer's OpenID configuration fills
/// the endpoints the SMART document lacks (its failure is ignored: the SMART document is the
/// authority). The caller has checked the URLs against the outbound policy (`check`).
pub async fn discover(
    http: &reqwest::Client,
    fhir_base: &Url,
    headers: &[(String, String)],
    openid: bool,
    check: impl Fn(&Url) -> Result<(), String>,
) -> Result<SmartConfiguration, DiscoveryError> {
    let url = smart_configuration_url(fhir_base);
    let doc = fetch_json(http, &url, headers, &check).await?;
    let mut cfg = parse(&doc, fhir_base);
    if openid {
        if let Some(issuer) = cfg.issuer.clone() {
            let oidc_url = format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            );
            match fetch_json(http, &oidc_url, headers, &check).await {
                Ok(doc) => {
                    let base = Url::parse(&issuer).unwrap_or_else(|_| fhir_base.clone());
                    let o = parse(&doc, &base);
                    cfg.authorization_endpoint =
                        cfg.authorization_endpoint.or(o.authorization_endpoint);
                    cfg.token_endpoint = cfg.token_endpoint.or(o.token_endpoint);
                    cfg.revocation_endpoint = cfg.revocation_endpoint.or(o.revocation_endpoint);
                    cfg.introspection_endpoint =
                        cfg.introspection_endpoint.or(o.introspection_endpoint);
                    cfg.authorization_response_iss_parameter_supported |=
                        o.authorization_response_iss_parameter_supported;
                }
                Err(e) => tracing::info!(error = %e, "openid-configuration not used"),
            }
        }
    }
    Ok(cfg)
}

async fn fetch_json(
    http: &reqwest::Client,
    url: &str,
    headers: &[(String, String)],
    check: &impl Fn(&Url) -> Result<(), String>,
) -> Result<Map<String, Value>, DiscoveryError> {
    let parsed = Url::parse(url).map_err(|_| DiscoveryError::Invalid {
        url: url.to_owned(),
        reason: "not a valid URL".into(),
    })?;
    check(&parsed).map_err(|reason| DiscoveryError::Unreachable {
        url: url.to_owned(),
        reason,
    })?;
    let body = get_document(
        http,
        parsed,
        "application/json",
        headers,
        MAX_DOCUMENT_BYTES,
    )
    .await
    .map_err(|e| {
        let url = url.to_owned();
        match e {
            DocumentError::Status(status) => DiscoveryError::Status { url, status },
            DocumentError::TooLarge => DiscoveryError::Invalid {
                url,
                reason: e.to_string(),
            },
            DocumentError::Unreachable(reason) => DiscoveryError::Unreachable {
                url,
                reason: reason.into(),
            },
        }
    })?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(DiscoveryError::Invalid {
            url: url.to_owned(),
            reason: "not a JSON object".into(),
        }),
    }
}

/// Keeps the fields the host uses; relative endpoint URLs are resolved against `base`; endpoints
/// that are not http(s) URLs are dropped.
pub fn parse(doc: &Map<String, Value>, base: &Url) -> SmartConfiguration {
    let text = |k: &str| doc.get(k).and_then(Value::as_str).map(str::to_owned);
    let endpoint = |k: &str| {
        let raw = doc.get(k).and_then(Value::as_str)?;
        let mut b = base.clone();
        if !b.path().ends_with('/') {
            b.set_path(&format!("{}/", b.path()));
        }
        let u = b.join(raw).ok()?;
        matches!(u.scheme(), "http" | "https").then(|| u.to_string())
    };
    let list = |k: &str| -> Vec<String> {
        match doc.get(k) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        }
    };
    SmartConfiguration {
        issuer: text("issuer").filter(|s| !s.is_empty()),
        authorization_endpoint: endpoint("authorization_endpoint"),
        token_endpoint: endpoint("token_endpoint"),
        revocation_endpoint: endpoint("revocation_endpoint"),
        introspection_endpoint: endpoint("introspection_endpoint"),
        capabilities: list("capabilities"),
        code_challenge_methods_supported: list("code_challenge_methods_supported"),
        grant_types_supported: list("grant_types_supported"),
        scopes_supported: list("scopes_supported"),
        token_endpoint_auth_methods_supported: list("token_endpoint_auth_methods_supported"),
        authorization_response_iss_parameter_supported: doc
            .get("authorization_response_iss_parameter_supported")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn parses_and_resolves_relative_endpoints() {
        let base = Url::parse("https://fhir.example/r4/tenant").unwrap();
        let cfg = parse(
            &obj(json!({
                "issuer": "https://as.example",
                "authorization_endpoint": "https://as.example/authorize",
                "token_endpoint": "token",
                "revocation_endpoint": "/revoke",
                "introspection_endpoint": "javascript:alert(1)",
                "capabilities": ["launch-standalone", 5],
                "scopes_supported": "openid patient/*.rs",
                "authorization_response_iss_parameter_supported": true
            })),
            &base,
        );
        assert_eq!(cfg.issuer.as_deref(), Some("https://as.example"));
        assert_eq!(
            cfg.token_endpoint.as_deref(),
            Some("https://fhir.example/r4/tenant/token")
        );
        assert_eq!(
            cfg.revocation_endpoint.as_deref(),
            Some("https://fhir.example/revoke")
        );
        assert_eq!(cfg.introspection_endpoint, None);
        assert_eq!(cfg.capabilities, ["launch-standalone"]);
        assert_eq!(cfg.scopes_supported, ["openid", "patient/*.rs"]);
        assert!(cfg.authorization_response_iss_parameter_supported);
        assert!(!parse(&obj(json!({})), &base).authorization_response_iss_parameter_supported);
    }

    #[test]
    fn url_and_errors_name_the_url_and_status() {
        let base = Url::parse("https://fhir.example/R4/").unwrap();
        assert_eq!(
            smart_configuration_url(&base),
            "https://fhir.example/R4/.well-known/smart-configuration"
        );
        let e = DiscoveryError::Status {
            url: "https://x/.well-known/smart-configuration".into(),
            status: 503,
        };
        assert_eq!(
            e.to_string(),
            "https://x/.well-known/smart-configuration answered HTTP 503"
        );
        assert_eq!(e.url(), "https://x/.well-known/smart-configuration");
    }
}
