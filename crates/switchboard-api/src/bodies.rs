//! Request bodies the handlers take that belong to no service (the service ones live beside
//! their service): read by the handlers and described by the OpenAPI document.

use serde::Deserialize;
use serde_json::{Map, Value};

/// `POST /v1/api-keys`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyIn {
    /// 1 to 200 printable characters, not only spaces.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub(crate) name: String,
}

/// `PUT /v1/connectors/{connector}/setup`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"settings": {"api_token": "example-token", "fhir_base_url": "https://fhir.example.com/"}}))]
pub struct SetupIn {
    #[schema(value_type = Object)]
    pub(crate) settings: Map<String, Value>,
    /// Connectors with `oauth2_backend_services`: the algorithm of the generated key, or the
    /// tenant's own private key.
    #[serde(default)]
    pub(crate) signing_key: Option<switchboard_service::signing_keys::SigningKeyIn>,
}

/// `PATCH /v1/tenant`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantPatch {
    pub(crate) allowed_return_urls: Vec<String>,
}

/// `POST /console/session`: the tenant API key to sign in with (JSON or an HTML form).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSignIn {
    /// A tenant API key (`sbk_…`).
    #[schema(min_length = 1, max_length = 200)]
    pub(crate) api_key: String,
}
