//! The connector definition as written in `connectors/*.toml`. These types ARE the format: the
//! JSON Schema in `connectors/connector.schema.json` is generated from them (schemars), and
//! every struct denies unknown keys so a typo is an error with a line number, not a silent no-op.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One connector file.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectorDef {
    /// Stable id used in API paths (`epic`, `canvas`, `medplum`): `[a-z][a-z0-9_]{0,31}`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Version of this definition (semver).
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Settings a tenant's connector setup (and, where allowed, an install) provides.
    #[serde(default)]
    pub settings: Vec<SettingDef>,
    /// Supported authentication types; an install picks one (the first is the default).
    pub auth: Vec<AuthDef>,
    /// Template of the FHIR base URL, e.g. `{{settings.endpoint}}api/FHIR/R4/`. Must render to
    /// an absolute URL; a trailing `/` is added when missing.
    pub fhir_base: String,
    /// Static headers sent on every method call (values are templates).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Methods taken from shared library files (e.g. `_fhir/us_core.toml`) and narrowed for
    /// this vendor. The loader appends them, in include order, after the file's own `methods`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<IncludeDef>,
    /// The file's own methods (included ones follow them once loaded).
    #[serde(default)]
    pub methods: Vec<MethodDef>,
    /// Outbound rate limits the vendor imposes (`[limits]`). Each replica enforces
    /// limit / `limits.replicas` of the host configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ConnectorLimits>,
    /// SMART discovery (`[discovery]`): the host reads `{fhir_base}.well-known/smart-configuration`
    /// for this connector. Endpoints and the issuer an `[[auth]]` entry leaves undeclared come
    /// from it (declared ones win); without this table every endpoint must be declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryDef>,
    /// Query parameters added to every search (methods with `paging = "fhir_bundle"`), values
    /// are templates: athenahealth's `ah-practice = "Organization/a-1.Practice-{{settings.practice_id}}"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub search_params: BTreeMap<String, String>,
}

/// `[discovery]`: how the host reads the SMART configuration of an install's FHIR base.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryDef {
    /// Headers sent with the discovery request (values are templates), e.g. Epic's
    /// `Epic-Client-ID = "{{settings.client_id}}"` (Epic can override endpoints per client).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Also read `{issuer}/.well-known/openid-configuration` when the SMART configuration names
    /// an issuer, to fill endpoints it lacks.
    #[serde(default)]
    pub openid_configuration: bool,
}

/// A connector's `[limits]`: how fast Switchboard may call the vendor. A call that would exceed
/// one waits up to `limits.outbound_queue_ms` of the host configuration, then is answered 429
/// `rate_limited` with `Retry-After`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectorLimits {
    /// Token requests (code exchange, refresh, client credentials) per minute per setup, i.e.
    /// per client registration of one tenant (athenahealth: 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_requests_per_minute: Option<u32>,
    /// Method calls per second per install (every page of a call counts as one request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
}

/// A method library: `connectors/_<name>/*.toml`, never a connector by itself (the directory
/// loader reads only the top-level `*.toml` files). Holds methods, and may include other
/// libraries.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LibraryDef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<IncludeDef>,
    #[serde(default)]
    pub methods: Vec<MethodDef>,
}

/// `[[include]]`: take named methods from a library file and narrow them.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncludeDef {
    /// Library file, relative to the including file's directory, e.g. `_fhir/us_core.toml`.
    pub library: String,
    /// Ids of the library methods to take, in this order (a vendor offers only what it supports).
    pub methods: Vec<String>,
    /// Per taken method (by id): what this vendor changes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub narrow: BTreeMap<String, NarrowDef>,
}

/// How an including connector narrows one library method.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NarrowDef {
    /// Replaces the description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Replaces the scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Replaces the minimum combinations (`[]` removes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_one_of: Option<Vec<Vec<String>>>,
    /// Params the vendor does not support (by caller name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop_params: Vec<String>,
    /// Per param (by caller name): fields replaced for this vendor.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, ParamOverride>,
    /// Top-level elements this vendor requires in a write's body, replacing the library's list
    /// (e.g. Canvas's DocumentReference extensions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_required: Option<Vec<String>>,
    /// Replaces `conditional_identifier` (e.g. `false` where the vendor does not document
    /// `If-None-Exist`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditional_identifier: Option<bool>,
}

/// Fields of a library param an including connector may replace.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    #[serde(default, rename = "enum", skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A settings field.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingDef {
    /// Key used in templates as `{{settings.<key>}}` and in API bodies.
    pub key: String,
    pub label: String,
    #[serde(rename = "type", default)]
    pub kind: SettingType,
    #[serde(default)]
    pub required: bool,
    /// Secret values are encrypted at rest and masked (`{"set":true}`) in every response.
    #[serde(default)]
    pub secret: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// Whether an install may override the tenant's setup value (e.g. a per-customer endpoint).
    #[serde(default)]
    pub install_override: bool,
    /// Allowed values when `type = "enum"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<Normalizer>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SettingType {
    #[default]
    String,
    /// Absolute http(s) URL.
    Url,
    Integer,
    Boolean,
    /// One of `options`.
    Enum,
}

/// Built-in normalisers applied to a setting value before validation and storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Normalizer {
    /// Trim whitespace; strip a trailing `api/FHIR/R4` (any letter case, with or without a final
    /// `/`); ensure a trailing `/`. Turns what users paste from Epic's endpoint directory into
    /// the organisation root.
    EpicEndpoint,
    /// Trim whitespace and ensure a trailing `/`.
    TrailingSlash,
    /// Trim whitespace.
    Trim,
}

/// One authentication type.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthDef {
    /// OAuth 2.0 authorization code with PKCE S256 (always) through `/connector/callback`.
    Oauth2AuthorizationCode(AuthCodeDef),
    /// OAuth 2.0 client credentials (machine to machine).
    Oauth2ClientCredentials(ClientCredentialsDef),
    /// A static bearer token from a secret setting (e.g. Canvas sandbox dashboard token).
    StaticBearer(StaticBearerDef),
    /// SMART Backend Services: client credentials authenticated by a JWT assertion
    /// (`private_key_jwt`, RFC 7523) signed RS384 or ES384 with the setup's key, published at
    /// the setup's hosted JWKS URL.
    Oauth2BackendServices(BackendServicesDef),
}

impl AuthDef {
    pub fn kind(&self) -> AuthKind {
        match self {
            Self::Oauth2AuthorizationCode(_) => AuthKind::Oauth2AuthorizationCode,
            Self::Oauth2ClientCredentials(_) => AuthKind::Oauth2ClientCredentials,
            Self::StaticBearer(_) => AuthKind::StaticBearer,
            Self::Oauth2BackendServices(_) => AuthKind::Oauth2BackendServices,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    Oauth2AuthorizationCode,
    Oauth2ClientCredentials,
    StaticBearer,
    Oauth2BackendServices,
}

impl AuthKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oauth2AuthorizationCode => "oauth2_authorization_code",
            Self::Oauth2ClientCredentials => "oauth2_client_credentials",
            Self::StaticBearer => "static_bearer",
            Self::Oauth2BackendServices => "oauth2_backend_services",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "oauth2_authorization_code" => Self::Oauth2AuthorizationCode,
            "oauth2_client_credentials" => Self::Oauth2ClientCredentials,
            "static_bearer" => Self::StaticBearer,
            "oauth2_backend_services" => Self::Oauth2BackendServices,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthCodeDef {
    /// Template of the authorization endpoint; absent = discovered (needs `[discovery]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorize_url: Option<String>,
    /// Template of the token endpoint; absent = discovered (needs `[discovery]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    /// Template of the client id (usually `{{settings.client_id}}`).
    pub client_id: String,
    /// Template of the client secret; absent for public clients (`client_auth = "none"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// Space-separated scopes (a template, so scopes can be a setting).
    #[serde(default)]
    pub scopes: String,
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Extra authorize parameters, e.g. SMART `aud = "{{fhir_base}}"` (values are templates).
    #[serde(default)]
    pub authorize_params: BTreeMap<String, String>,
    /// Extra token-request parameters sent with code exchange and refresh (e.g. Canvas wants
    /// `redirect_uri` on refresh): values are templates; `{{redirect_uri}}` is available.
    #[serde(default)]
    pub token_params: BTreeMap<String, String>,
    #[serde(default)]
    pub refresh: RefreshPolicy,
    /// How long a refresh token stays valid without being used (seconds), when the provider
    /// limits it: the polite background refresher refreshes an idle install ahead of this
    /// lapse (`tokens.refresh_lapse_margin_secs`). Absent: no known idle limit (an idle install
    /// is then refreshed once per `tokens.idle_check_interval_secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_idle_secs: Option<u64>,
    /// Expected RFC 9207 `iss` of authorization responses (template; absent = the discovered
    /// `issuer`). When a callback carries `iss` it must equal this, byte for byte, or the code is
    /// not redeemed; without any known issuer the code flow cannot start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// RFC 7009 revocation endpoint (template), used when an install is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientCredentialsDef {
    /// Template of the token endpoint; absent = discovered (needs `[discovery]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    pub client_id: String,
    pub client_secret: String,
    #[serde(default)]
    pub scopes: String,
    #[serde(default)]
    pub client_auth: ClientAuth,
    #[serde(default)]
    pub token_params: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StaticBearerDef {
    /// Template of the token, normally a secret setting: `{{settings.api_token}}`.
    pub token: String,
}

/// SMART Backend Services (client credentials with a signed JWT assertion). The key is the
/// setup's (generated on setup save or uploaded), never a setting; the signing algorithm is the
/// setup's (`signing_key.alg`, default RS384).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendServicesDef {
    /// Template of the token endpoint; also the assertion's `aud` unless `audience` is set.
    pub token_url: String,
    /// Template of the client id: the assertion's `iss` and `sub`.
    pub client_id: String,
    /// Space-separated scopes (a template); `scope` is sent only when not blank.
    #[serde(default)]
    pub scopes: String,
    /// Template of the assertion's `aud` when it is not the token URL (e.g. an audience the
    /// provider allow-lists for a proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Put the setup's hosted JWKS URL in the assertion header as `jku` (Epic recommends it
    /// together with `kid` when the app is registered with a JWK Set URL).
    #[serde(default)]
    pub jku: bool,
    /// Extra token-request parameters (values are templates).
    #[serde(default)]
    pub token_params: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_url: Option<String>,
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic, id and secret form-urlencoded before base64 (RFC 6749 §2.3.1).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// Public client: `client_id` in the body, no secret (PKCE protects the code).
    None,
}

/// What the provider does with refresh tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefreshPolicy {
    /// Single-use refresh tokens, a new one on every refresh (Canvas, Medplum).
    Rotating,
    /// The refresh token may be reused; a response without one keeps the stored one (Epic).
    #[default]
    Reusable,
    /// The connector never refreshes (no refresh tokens issued).
    None,
}

/// One method.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MethodDef {
    /// `[a-z][a-z0-9_]{0,63}`, unique within the connector.
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub verb: HttpVerb,
    /// Path relative to the FHIR base, with `{param}` placeholders for `in = "path"` params,
    /// e.g. `Patient/{id}`. Each placeholder is one percent-encoded segment.
    pub path: String,
    #[serde(default)]
    pub params: Vec<ParamDef>,
    /// Minimum parameter combinations: the call must supply every param of at least one set
    /// (Epic's Patient.Search rules). Empty = no constraint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require_one_of: Vec<Vec<String>>,
    /// Scope this method needs (documentation and install checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default)]
    pub paging: Paging,
    /// A write's request body: the caller sends one FHIR resource as `body` beside `params`,
    /// checked against this shape before anything is sent (POST/PUT/PATCH only; no body
    /// params then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<BodyDef>,
    /// FHIR conditional create: send `If-None-Exist: identifier=<system>|<value>` built from the
    /// body's first `identifier` (when it has one), so a resource the server already holds is
    /// not created twice. Needs `body` and verb POST.
    #[serde(default)]
    pub conditional_identifier: bool,
    /// What a call does: `call` (default: one request, its answer returned) or `bulk_export`
    /// (a FHIR Bulk Data `$export` kick-off: the host sends `Prefer: respond-async`, stores a
    /// job and polls its status URL in the background). A `bulk_export` method is a GET whose
    /// path is `$export`, `Patient/$export` or `Group/{id}/$export`, as its `level` says.
    #[serde(default, skip_serializing_if = "MethodKind::is_call")]
    pub kind: MethodKind,
    /// The export level of a `bulk_export` method (required there, refused elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<BulkLevel>,
}

/// What calling a method does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MethodKind {
    /// One request (pages followed for searches); the answer is returned.
    #[default]
    Call,
    /// FHIR Bulk Data Access 2.0 `$export` kick-off: answered 202 with a Switchboard job.
    BulkExport,
}

impl MethodKind {
    pub fn is_call(&self) -> bool {
        *self == Self::Call
    }
}

/// FHIR Bulk Data export levels (Bulk Data Access 2.0 "Endpoint" sections).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BulkLevel {
    /// `[base]/Patient/$export`: every patient the client may see.
    Patient,
    /// `[base]/Group/{id}/$export`: the members of one Group.
    Group,
    /// `[base]/$export`: the whole server.
    System,
}

impl BulkLevel {
    /// Whether `path` (a method path template) is this level's `$export` endpoint.
    pub fn matches_path(self, path: &str) -> bool {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (self, segs.as_slice()) {
            (Self::System, ["$export"]) | (Self::Patient, ["Patient", "$export"]) => true,
            (Self::Group, ["Group", id, "$export"]) => id.starts_with('{') && id.ends_with('}'),
            _ => false,
        }
    }
}

/// The FHIR resource a write method takes as its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BodyDef {
    /// The body's `resourceType` must equal this (e.g. `Observation`).
    pub resource_type: String,
    /// Top-level elements the body must carry (present, not null, not empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpVerb {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpVerb {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
        }
    }

    /// Safe to retry on 429/503 (RFC 9110 §9.2.2).
    pub fn idempotent(self) -> bool {
        matches!(self, Self::Get | Self::Put | Self::Delete)
    }

    /// Whether a call may change data upstream (everything but GET), as the catalogue shows it.
    pub fn writes(self) -> bool {
        !matches!(self, Self::Get)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Paging {
    #[default]
    None,
    /// FHIR searchset Bundle: follow `link[relation=next]`, merge `entry` arrays.
    FhirBundle,
}

/// A typed method parameter.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamDef {
    /// Name the caller uses in `params`.
    pub name: String,
    /// Name sent upstream when it differs from the name callers use (a vendor's own spelling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_name: Option<String>,
    #[serde(rename = "in")]
    pub location: ParamLocation,
    #[serde(rename = "type", default)]
    pub kind: ParamType,
    #[serde(default)]
    pub required: bool,
    /// Allowed values.
    #[serde(default, rename = "enum", skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<String>,
    /// Regex the (string form of the) value must match in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Whether an array of values is accepted (sent as a repeated query parameter).
    #[serde(default)]
    pub repeated: bool,
    /// Inclusive bounds for `integer` params.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl ParamDef {
    pub fn wire_name(&self) -> &str {
        self.upstream_name.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParamLocation {
    Path,
    Query,
    Header,
    Body,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    #[default]
    String,
    Integer,
    Number,
    Boolean,
    /// `YYYY`, `YYYY-MM` or `YYYY-MM-DD`, optionally prefixed by a FHIR comparator (`ge`, `le`...).
    Date,
    /// FHIR token: `code`, `system|code`, `system|` or `|code`.
    Token,
    /// Any JSON value (for `in = "body"`).
    Json,
}

/// Headers the host or the HTTP client owns (lower case): a connector may not declare them as
/// static headers or header params (checked at load), and the engine refuses them again when it
/// builds a request.
pub const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "cookie",
];

/// Whether `name` (any letter case) is one of [`RESERVED_HEADERS`].
pub fn is_reserved_header(name: &str) -> bool {
    RESERVED_HEADERS
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name))
}

// Lookup helpers shared by the service, auth and engine crates, so that none of them re-implements
// "find the method / setting / auth type" with subtly different rules.

impl ConnectorDef {
    /// The setting declared under `key`.
    pub fn setting(&self, key: &str) -> Option<&SettingDef> {
        self.settings.iter().find(|s| s.key == key)
    }

    /// The auth entry of the given type.
    pub fn auth(&self, kind: AuthKind) -> Option<&AuthDef> {
        self.auth.iter().find(|a| a.kind() == kind)
    }

    /// The setting keys the FHIR base template uses (what locates the server).
    pub fn fhir_base_settings(&self) -> Vec<&str> {
        match crate::template::Template::parse(&self.fhir_base) {
            Ok(t) => {
                let mut keys: Vec<&str> = Vec::new();
                for k in t.setting_keys() {
                    if let Some(s) = self.setting(k) {
                        if !keys.contains(&s.key.as_str()) {
                            keys.push(s.key.as_str());
                        }
                    }
                }
                keys
            }
            Err(_) => Vec::new(),
        }
    }

    /// The default auth type: the first one declared (the loader rejects files without any).
    pub fn default_auth(&self) -> Option<&AuthDef> {
        self.auth.first()
    }
}

impl AuthDef {
    /// Whether this entry leaves an endpoint to discovery (an undeclared issuer alone does not:
    /// it is looked up when the code flow starts, and its absence is reported there).
    pub fn needs_discovery(&self) -> bool {
        match self {
            Self::Oauth2AuthorizationCode(a) => a.authorize_url.is_none() || a.token_url.is_none(),
            Self::Oauth2ClientCredentials(c) => c.token_url.is_none(),
            Self::Oauth2BackendServices(_) | Self::StaticBearer(_) => false,
        }
    }

    /// Template of the token endpoint (`None` for a static bearer token or a discovered one).
    pub fn token_url(&self) -> Option<&str> {
        match self {
            Self::Oauth2AuthorizationCode(a) => a.token_url.as_deref(),
            Self::Oauth2ClientCredentials(c) => c.token_url.as_deref(),
            Self::Oauth2BackendServices(b) => Some(&b.token_url),
            Self::StaticBearer(_) => None,
        }
    }

    /// Template of the scopes requested (empty for a static bearer token).
    pub fn scopes(&self) -> &str {
        match self {
            Self::Oauth2AuthorizationCode(a) => &a.scopes,
            Self::Oauth2ClientCredentials(c) => &c.scopes,
            Self::Oauth2BackendServices(b) => &b.scopes,
            Self::StaticBearer(_) => "",
        }
    }

    /// Every template of this entry with its field name (for validation and for computing which
    /// settings the auth type needs).
    pub fn templates(&self) -> Vec<(String, &str)> {
        let mut out: Vec<(String, &str)> = Vec::new();
        match self {
            Self::Oauth2AuthorizationCode(a) => {
                if let Some(u) = &a.authorize_url {
                    out.push(("authorize_url".into(), u));
                }
                if let Some(u) = &a.token_url {
                    out.push(("token_url".into(), u));
                }
                out.push(("client_id".into(), &a.client_id));
                if let Some(s) = &a.client_secret {
                    out.push(("client_secret".into(), s));
                }
                out.push(("scopes".into(), &a.scopes));
                for (k, v) in &a.authorize_params {
                    out.push((format!("authorize_params.{k}"), v));
                }
                for (k, v) in &a.token_params {
                    out.push((format!("token_params.{k}"), v));
                }
                if let Some(s) = &a.issuer {
                    out.push(("issuer".into(), s));
                }
                if let Some(s) = &a.revocation_url {
                    out.push(("revocation_url".into(), s));
                }
            }
            Self::Oauth2ClientCredentials(c) => {
                if let Some(u) = &c.token_url {
                    out.push(("token_url".into(), u));
                }
                out.push(("client_id".into(), &c.client_id));
                out.push(("client_secret".into(), &c.client_secret));
                out.push(("scopes".into(), &c.scopes));
                for (k, v) in &c.token_params {
                    out.push((format!("token_params.{k}"), v));
                }
                if let Some(s) = &c.revocation_url {
                    out.push(("revocation_url".into(), s));
                }
            }
            Self::StaticBearer(b) => out.push(("token".into(), &b.token)),
            Self::Oauth2BackendServices(b) => {
                out.push(("token_url".into(), &b.token_url));
                out.push(("client_id".into(), &b.client_id));
                out.push(("scopes".into(), &b.scopes));
                if let Some(s) = &b.audience {
                    out.push(("audience".into(), s));
                }
                for (k, v) in &b.token_params {
                    out.push((format!("token_params.{k}"), v));
                }
                if let Some(s) = &b.revocation_url {
                    out.push(("revocation_url".into(), s));
                }
            }
        }
        out
    }
}

impl MethodDef {
    /// The parameter the caller names `name`.
    pub fn param(&self, name: &str) -> Option<&ParamDef> {
        self.params.iter().find(|p| p.name == name)
    }
}
