//! `GET /openapi.json`: the OpenAPI 3.1 document of the API, derived with utoipa from the Rust
//! types the handlers take and return (path ids, request and response bodies, the problem
//! body). One `#[utoipa::path]` per route below is the operation table: the 405 `Allow` header
//! is computed from it, an end-to-end test compares it with the routes, and schemathesis fuzzes
//! the running server against it (tests/it/openapi.rs).

use actix_web::{web, HttpResponse};
use serde_json::Value;
use std::sync::LazyLock;
use switchboard_core::{
    AccountId, AgentSessionId, ApiKeyId, ConnectSessionId, ConnectorId, EventId, InstallId, JobId,
    MethodId, Problem, WebhookId,
};
use switchboard_service::accounts::{AccountIn, AccountList, AccountOut};
use switchboard_service::agent_sessions::{AgentSessionCreated, AgentSessionIn, AgentSessionList};
use switchboard_service::audit::AuditList;
use switchboard_service::bulk::{JobAccepted, JobList, JobOut};
use switchboard_service::callback::CallbackIn;
use switchboard_service::connect::{ConnectSessionCreated, ConnectSessionIn, ConnectSessionOut};
use switchboard_service::installs::{
    AuthorizeIn, InstallCreated, InstallIn, InstallList, InstallOut,
};
use switchboard_service::keys::{ApiKeyCreated, ApiKeyList, TenantOut};
use switchboard_service::methods::MethodIn;
use switchboard_service::pagination::{AuditQuery, InstallsQuery, PageIn};
use switchboard_service::setups::SetupOut;
use switchboard_service::signing_keys::{RotateIn, SetupKeysOut};
use switchboard_service::webhooks::{
    DeliveryList, DeliveryOut, WebhookCreated, WebhookIn, WebhookList, WebhookOut, WebhookPatch,
};
use switchboard_service::Services;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{OpenApi, ToSchema};

use crate::bodies::{ApiKeyIn, ConsoleSignIn, SetupIn, TenantPatch};
use switchboard_service::console::SessionOut;

// Bodies the handlers build as JSON values. These types describe them; schemathesis checks
// every response against them, so they cannot silently drift.

/// `{"status": "ok"}` or `{"status": "ready"}`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Status {
    status: String,
}

/// A JWK Set (RFC 7517 §5): public keys only.
#[derive(ToSchema)]
#[allow(dead_code)]
struct JwkSet {
    #[schema(value_type = Vec<Object>)]
    keys: Vec<Value>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct MethodSummary {
    id: String,
    name: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct ConnectorSummary {
    id: String,
    name: String,
    version: String,
    auth_types: Vec<String>,
    methods: Vec<MethodSummary>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct ConnectorList {
    connectors: Vec<ConnectorSummary>,
}

/// The full public definition of a connector (never a secret default).
#[derive(ToSchema)]
#[allow(dead_code)]
struct ConnectorView {
    id: String,
    name: String,
    version: String,
    description: Option<String>,
    auth_types: Vec<String>,
    default_auth_type: Option<String>,
    #[schema(value_type = Vec<Object>)]
    settings: Vec<Value>,
    #[schema(value_type = Vec<Object>)]
    auth: Vec<Value>,
    #[schema(value_type = Vec<Object>)]
    methods: Vec<Value>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct AuthorizeUrl {
    authorize_url: String,
}

/// A method's result: the upstream status, its body (FHIR JSON), and the pages merged.
#[derive(ToSchema)]
#[allow(dead_code)]
struct MethodOut {
    status: u16,
    data: Value,
    pages: u32,
}

/// The body of a replay: nothing to set (the handler reads none; an empty object is fine).
#[derive(ToSchema)]
#[allow(dead_code)]
struct ReplayIn {}

/// One stub per route: utoipa reads the attributes, nothing calls the functions.
#[allow(dead_code)]
mod ops {
    use super::*;

    /// Liveness
    #[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Status)))]
    fn healthz() {}

    /// Readiness: database and connectors
    #[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, body = Status)))]
    fn readyz() {}

    /// Prometheus metrics
    #[utoipa::path(
        get,
        path = "/metrics",
        tag = "operations",
        responses((status = 200, body = String, content_type = "text/plain"))
    )]
    fn metrics() {}

    /// This document
    #[utoipa::path(
        get,
        path = "/openapi.json",
        tag = "operations",
        responses((status = 200, body = Object, description = "OpenAPI 3.1"))
    )]
    fn openapi() {}

    /// Shared OAuth redirect URI
    ///
    /// A person's browser lands here: the answer is a redirect to the install's `return_url` or an
    /// HTML page, never JSON.
    #[utoipa::path(
        get,
        path = "/connector/callback",
        tag = "oauth",
        params(CallbackIn),
        responses(
            (status = 302, description = "Back to the install's return_url"),
            (status = "default", description = "Result page", body = String, content_type = "text/html")
        )
    )]
    fn connector_callback() {}

    /// The calling tenant
    #[utoipa::path(get, path = "/v1/tenant", tag = "tenant", responses((status = 200, body = TenantOut)))]
    fn get_tenant() {}

    /// The tenant's audit trail: one record per method call and administrative change
    #[utoipa::path(
        get,
        path = "/v1/audit",
        tag = "tenant",
        params(AuditQuery),
        responses((status = 200, body = AuditList))
    )]
    fn list_audit() {}

    /// Set the tenant's allowed return URL prefixes
    #[utoipa::path(
        patch,
        path = "/v1/tenant",
        tag = "tenant",
        request_body = TenantPatch,
        responses((status = 200, body = TenantOut))
    )]
    fn update_tenant() {}

    /// Connector catalogue
    #[utoipa::path(
        get,
        path = "/v1/connectors",
        tag = "connectors",
        responses((status = 200, body = ConnectorList))
    )]
    fn list_connectors() {}

    /// Full public connector definition
    #[utoipa::path(
        get,
        path = "/v1/connectors/{connector}",
        tag = "connectors",
        params(("connector" = ConnectorId, Path)),
        responses((status = 200, body = ConnectorView))
    )]
    fn get_connector() {}

    /// Create or replace the tenant's connector setup
    #[utoipa::path(
        put,
        path = "/v1/connectors/{connector}/setup",
        tag = "setups",
        params(("connector" = ConnectorId, Path)),
        request_body = SetupIn,
        responses((status = 200, body = SetupOut))
    )]
    fn put_setup() {}

    /// The tenant's connector setup, secrets masked
    #[utoipa::path(
        get,
        path = "/v1/connectors/{connector}/setup",
        tag = "setups",
        params(("connector" = ConnectorId, Path)),
        responses((status = 200, body = SetupOut))
    )]
    fn get_setup() {}

    /// Delete the connector setup
    #[utoipa::path(
        delete,
        path = "/v1/connectors/{connector}/setup",
        tag = "setups",
        params(("connector" = ConnectorId, Path)),
        responses((status = 204, description = "Deleted"))
    )]
    fn delete_setup() {}

    /// Rotate the setup's backend-services key (publish now, sign after the overlap)
    #[utoipa::path(
        post,
        path = "/v1/connectors/{connector}/setup/keys/rotate",
        tag = "setups",
        params(("connector" = ConnectorId, Path)),
        request_body(content = Option<RotateIn>, description = "Optional: the new key's alg"),
        responses((status = 200, body = SetupKeysOut))
    )]
    fn rotate_setup_keys() {}

    /// A setup's public JWK Set (no authentication; cacheable)
    #[utoipa::path(
        get,
        path = "/jwks/{jwks_id}.json",
        tag = "setups",
        params(("jwks_id" = String, Path, description = "The opaque id in the setup's jwks_url")),
        responses((status = 200, body = JwkSet))
    )]
    fn jwks() {}

    /// Create an API key (plaintext shown once)
    #[utoipa::path(
        post,
        path = "/v1/api-keys",
        tag = "api-keys",
        request_body = ApiKeyIn,
        responses((status = 201, body = ApiKeyCreated))
    )]
    fn create_api_key() {}

    /// List API keys (never the secret)
    #[utoipa::path(
        get,
        path = "/v1/api-keys",
        tag = "api-keys",
        params(PageIn),
        responses((status = 200, body = ApiKeyList))
    )]
    fn list_api_keys() {}

    /// Revoke an API key at once
    #[utoipa::path(
        delete,
        path = "/v1/api-keys/{id}",
        tag = "api-keys",
        params(("id" = ApiKeyId, Path)),
        responses((status = 204, description = "Revoked"))
    )]
    fn revoke_api_key() {}

    /// Create an account
    #[utoipa::path(
        post,
        path = "/v1/accounts",
        tag = "accounts",
        request_body = AccountIn,
        responses((status = 201, body = AccountOut))
    )]
    fn create_account() {}

    /// List accounts
    #[utoipa::path(
        get,
        path = "/v1/accounts",
        tag = "accounts",
        params(PageIn),
        responses((status = 200, body = AccountList))
    )]
    fn list_accounts() {}

    /// Get an account
    #[utoipa::path(
        get,
        path = "/v1/accounts/{account}",
        tag = "accounts",
        params(("account" = AccountId, Path)),
        responses((status = 200, body = AccountOut))
    )]
    fn get_account() {}

    /// Delete an account, its installs and their secrets
    #[utoipa::path(
        delete,
        path = "/v1/accounts/{account}",
        tag = "accounts",
        params(("account" = AccountId, Path)),
        responses((status = 204, description = "Deleted"))
    )]
    fn delete_account() {}

    /// Install a connector into an account
    #[utoipa::path(
        post,
        path = "/v1/accounts/{account}/installs",
        tag = "installs",
        params(("account" = AccountId, Path)),
        request_body = InstallIn,
        responses((status = 201, body = InstallCreated))
    )]
    fn create_install() {}

    /// List an account's installs
    #[utoipa::path(
        get,
        path = "/v1/accounts/{account}/installs",
        tag = "installs",
        params(("account" = AccountId, Path), PageIn),
        responses((status = 200, body = InstallList))
    )]
    fn list_installs() {}

    /// The tenant's installs across its accounts, by status, connector and account
    #[utoipa::path(
        get,
        path = "/v1/installs",
        tag = "installs",
        params(InstallsQuery),
        responses((status = 200, body = InstallList))
    )]
    fn list_tenant_installs() {}

    /// Get an install (never tokens)
    #[utoipa::path(
        get,
        path = "/v1/accounts/{account}/installs/{install}",
        tag = "installs",
        params(("account" = AccountId, Path), ("install" = InstallId, Path)),
        responses((status = 200, body = InstallOut))
    )]
    fn get_install() {}

    /// Revoke upstream and delete an install
    #[utoipa::path(
        delete,
        path = "/v1/accounts/{account}/installs/{install}",
        tag = "installs",
        params(("account" = AccountId, Path), ("install" = InstallId, Path)),
        responses((status = 204, description = "Deleted"))
    )]
    fn delete_install() {}

    /// A new authorize_url (re-authorise)
    #[utoipa::path(
        post,
        path = "/v1/accounts/{account}/installs/{install}/authorize",
        tag = "installs",
        params(("account" = AccountId, Path), ("install" = InstallId, Path)),
        request_body(content = Option<AuthorizeIn>, description = "Optional: a new return_url"),
        responses((status = 200, body = AuthorizeUrl))
    )]
    fn authorize_install() {}

    /// Call a connector method
    #[utoipa::path(
        post,
        path = "/v1/accounts/{account}/installs/{install}/methods/{method}",
        tag = "methods",
        params(
            ("account" = AccountId, Path),
            ("install" = InstallId, Path),
            ("method" = MethodId, Path),
            ("Idempotency-Key" = Option<String>, Header, description = "Writes only: 1 to 255 visible ASCII characters. The same key and request on the install within 24 h returns the first result (`Idempotent-Replayed: true`) without a second upstream write; another request with the key is 422 `idempotency_key_reused`; while the first call runs, 409 `idempotency_key_in_flight`.")
        ),
        request_body = MethodIn,
        responses(
            (status = 200, body = MethodOut),
            (status = 202, body = JobAccepted, description = "A `bulk_export` method: the export job was created upstream; poll it at `Location`", headers(("Location" = String, description = "The job's URL")))
        )
    )]
    fn call_method() {}

    /// The install's Bulk Data export jobs, oldest first
    #[utoipa::path(
        get,
        path = "/v1/accounts/{account}/installs/{install}/jobs",
        tag = "methods",
        params(("account" = AccountId, Path), ("install" = InstallId, Path), PageIn),
        responses((status = 200, body = JobList))
    )]
    fn list_jobs() {}

    /// A Bulk Data export job: state, progress, and its manifest once completed
    #[utoipa::path(
        get,
        path = "/v1/accounts/{account}/installs/{install}/jobs/{job}",
        tag = "methods",
        params(("account" = AccountId, Path), ("install" = InstallId, Path), ("job" = JobId, Path)),
        responses((status = 200, body = JobOut))
    )]
    fn get_job() {}

    /// Cancel a Bulk Data export job (the export is deleted upstream)
    #[utoipa::path(
        delete,
        path = "/v1/accounts/{account}/installs/{install}/jobs/{job}",
        tag = "methods",
        params(("account" = AccountId, Path), ("install" = InstallId, Path), ("job" = JobId, Path)),
        responses((status = 200, body = JobOut))
    )]
    fn cancel_job() {}

    /// One output file of a completed job, streamed from the EHR (NDJSON)
    #[utoipa::path(
        get,
        path = "/v1/accounts/{account}/installs/{install}/jobs/{job}/files/{file}",
        tag = "methods",
        params(
            ("account" = AccountId, Path),
            ("install" = InstallId, Path),
            ("job" = JobId, Path),
            ("file" = FileIndex, Path)
        ),
        responses((status = 200, content_type = "application/fhir+ndjson", body = String, description = "NDJSON, one resource per line"))
    )]
    fn download_file() {}

    /// Register a webhook endpoint (its signing secret is shown once)
    #[utoipa::path(
        post,
        path = "/v1/webhooks",
        tag = "webhooks",
        request_body = WebhookIn,
        responses((status = 201, body = WebhookCreated))
    )]
    fn create_webhook() {}

    /// List webhook endpoints (never the secret)
    #[utoipa::path(
        get,
        path = "/v1/webhooks",
        tag = "webhooks",
        params(PageIn),
        responses((status = 200, body = WebhookList))
    )]
    fn list_webhooks() {}

    /// Get a webhook endpoint
    #[utoipa::path(
        get,
        path = "/v1/webhooks/{webhook}",
        tag = "webhooks",
        params(("webhook" = WebhookId, Path)),
        responses((status = 200, body = WebhookOut))
    )]
    fn get_webhook() {}

    /// Enable or disable a webhook endpoint, or change its URL or event filter
    #[utoipa::path(
        patch,
        path = "/v1/webhooks/{webhook}",
        tag = "webhooks",
        params(("webhook" = WebhookId, Path)),
        request_body = WebhookPatch,
        responses((status = 200, body = WebhookOut))
    )]
    fn patch_webhook() {}

    /// Delete a webhook endpoint and its deliveries
    #[utoipa::path(
        delete,
        path = "/v1/webhooks/{webhook}",
        tag = "webhooks",
        params(("webhook" = WebhookId, Path)),
        responses((status = 204, description = "Deleted"))
    )]
    fn delete_webhook() {}

    /// The endpoint's deliveries (attempts, status, errors) in event order
    #[utoipa::path(
        get,
        path = "/v1/webhooks/{webhook}/deliveries",
        tag = "webhooks",
        params(("webhook" = WebhookId, Path), PageIn),
        responses((status = 200, body = DeliveryList))
    )]
    fn list_deliveries() {}

    /// Deliver one event to the endpoint again
    #[utoipa::path(
        post,
        path = "/v1/webhooks/{webhook}/deliveries/{event}/replay",
        tag = "webhooks",
        params(("webhook" = WebhookId, Path), ("event" = EventId, Path)),
        request_body(content = Option<ReplayIn>, description = "Optional: an empty object"),
        responses((status = 202, body = DeliveryOut))
    )]
    fn replay_delivery() {}

    /// The web console (HTML; its script and style sheet come from this origin only)
    #[utoipa::path(
        get,
        path = "/console",
        tag = "console",
        responses((status = 200, body = String, content_type = "text/html"))
    )]
    fn console_index() {}

    /// The console's script
    #[utoipa::path(
        get,
        path = "/console/app.js",
        tag = "console",
        responses((status = 200, body = String, content_type = "text/javascript"))
    )]
    fn console_js() {}

    /// The console's style sheet
    #[utoipa::path(
        get,
        path = "/console/app.css",
        tag = "console",
        responses((status = 200, body = String, content_type = "text/css"))
    )]
    fn console_css() {}

    /// Sign in to the console with a tenant API key: sets the HttpOnly session cookie
    /// `sb_console` and the CSRF cookie `sb_console_csrf`
    #[utoipa::path(
        post,
        path = "/console/session",
        tag = "console",
        request_body(content(
            (ConsoleSignIn = "application/json"),
            (ConsoleSignIn = "application/x-www-form-urlencoded")
        )),
        responses((status = 201, body = SessionOut))
    )]
    fn console_sign_in() {}

    /// The console session of the `sb_console` cookie
    #[utoipa::path(
        get,
        path = "/console/session",
        tag = "console",
        responses((status = 200, body = SessionOut))
    )]
    fn console_session() {}

    /// Sign out: ends the cookie's session (with its `X-CSRF-Token`) and clears the cookies
    #[utoipa::path(
        delete,
        path = "/console/session",
        tag = "console",
        responses((status = 204, description = "Signed out"))
    )]
    fn console_sign_out() {}

    /// Create an agent session: a bearer token for `/mcp` (shown once) giving an MCP client the
    /// chosen methods of one install as tools
    #[utoipa::path(
        post,
        path = "/v1/agent-sessions",
        tag = "agent-sessions",
        request_body = AgentSessionIn,
        responses((status = 201, body = AgentSessionCreated))
    )]
    fn create_agent_session() {}

    /// List agent sessions that are not revoked (never a token)
    #[utoipa::path(
        get,
        path = "/v1/agent-sessions",
        tag = "agent-sessions",
        params(PageIn),
        responses((status = 200, body = AgentSessionList))
    )]
    fn list_agent_sessions() {}

    /// Revoke an agent session: its next `/mcp` request is refused
    #[utoipa::path(
        delete,
        path = "/v1/agent-sessions/{session}",
        tag = "agent-sessions",
        params(("session" = AgentSessionId, Path)),
        responses((status = 204, description = "Revoked"))
    )]
    fn revoke_agent_session() {}
    /// Create a single-use link to the hosted connect page (`url`, shown only here)
    #[utoipa::path(
        post,
        path = "/v1/connect-sessions",
        tag = "connect",
        request_body = ConnectSessionIn,
        responses((status = 201, body = ConnectSessionCreated))
    )]
    fn create_connect_session() {}

    /// A connect session's status (pending, used, expired) and the install it created
    #[utoipa::path(
        get,
        path = "/v1/connect-sessions/{session}",
        tag = "connect",
        params(("session" = ConnectSessionId, Path)),
        responses((status = 200, body = ConnectSessionOut))
    )]
    fn get_connect_session() {}
}

/// The index of a file in a Bulk Data job's manifest (its outputs, then its error files), as
/// `.../jobs/{job}/files/{file}` takes it.
#[derive(ToSchema)]
#[schema(value_type = u32, example = 0)]
#[allow(dead_code)]
struct FileIndex(u32);

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchboard",
        description = "Multi-tenant integration connector host. See docs/API.md."
    ),
    paths(
        ops::healthz,
        ops::readyz,
        ops::metrics,
        ops::openapi,
        ops::connector_callback,
        ops::get_tenant,
        ops::list_audit,
        ops::update_tenant,
        ops::list_connectors,
        ops::get_connector,
        ops::put_setup,
        ops::get_setup,
        ops::delete_setup,
        ops::rotate_setup_keys,
        ops::jwks,
        ops::create_api_key,
        ops::list_api_keys,
        ops::revoke_api_key,
        ops::create_account,
        ops::list_accounts,
        ops::get_account,
        ops::delete_account,
        ops::create_install,
        ops::list_installs,
        ops::list_tenant_installs,
        ops::get_install,
        ops::delete_install,
        ops::authorize_install,
        ops::call_method,
        ops::list_jobs,
        ops::get_job,
        ops::cancel_job,
        ops::download_file,
        ops::create_webhook,
        ops::list_webhooks,
        ops::get_webhook,
        ops::delete_webhook,
        ops::patch_webhook,
        ops::list_deliveries,
        ops::replay_delivery,
        ops::console_index,
        ops::console_js,
        ops::console_css,
        ops::console_sign_in,
        ops::console_session,
        ops::console_sign_out,
        ops::create_agent_session,
        ops::list_agent_sessions,
        ops::revoke_agent_session,
        ops::create_connect_session,
        ops::get_connect_session
    ),
    components(schemas(
        Problem,
        AccountId,
        InstallId,
        ApiKeyId,
        ConnectorId,
        MethodId,
        WebhookId,
        EventId,
        AgentSessionId,
        ConnectSessionId,
        JobId,
        FileIndex
    )),
    modifiers(&Conventions)
)]
struct ApiDoc;

/// What holds for every operation, added in one place: `/v1` needs the API key (bearer), and
/// every error is an RFC 9457 problem (except the callback, which answers a person in HTML).
struct Conventions;

impl utoipa::Modify for Conventions {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "api_key",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some("An API key: `Authorization: Bearer sbk_…`"))
                        .build(),
                ),
            );
        let problem = ResponseBuilder::new()
            .description("RFC 9457 problem with a stable `code`")
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build();
        for (path, item) in doc.paths.paths.iter_mut() {
            for op in operations_mut(item) {
                if path.starts_with("/v1/") {
                    op.security = Some(vec![SecurityRequirement::new(
                        "api_key",
                        Vec::<String>::new(),
                    )]);
                }
                if path != "/connector/callback" {
                    op.responses
                        .responses
                        .insert("default".into(), problem.clone().into());
                }
            }
        }
    }
}

fn operations_mut(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

pub(crate) fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Every (verb, route pattern) of the document, e.g. `("get", "/v1/accounts/{account}")`.
pub(crate) static OPERATIONS: LazyLock<Vec<(&'static str, String)>> = LazyLock::new(|| {
    let doc = document();
    let mut ops = Vec::new();
    for (path, item) in &doc.paths.paths {
        for (verb, op) in [
            ("get", &item.get),
            ("put", &item.put),
            ("post", &item.post),
            ("delete", &item.delete),
            ("patch", &item.patch),
        ] {
            if op.is_some() {
                ops.push((verb, path.clone()));
            }
        }
    }
    ops
});

static JSON: LazyLock<String> =
    LazyLock::new(|| document().to_json().unwrap_or_else(|_| "{}".into()));

/// The served document: [`JSON`] plus, from this server's loaded catalogue, one component
/// schema per connector method (`MethodCall.{connector}.{method}`: its params' types, enums,
/// patterns and bounds, its FHIR body for writes), referenced per connector and method under
/// the method-call operation's `x-method-bodies`. The generic `MethodIn` body stays the
/// operation's request body (the connector is the install's, not the path's), so fuzzers and
/// client generators keep one operation and clients get a typed model per method.
fn with_method_bodies(doc: &str, schemas: Vec<(String, Value)>) -> String {
    let Ok(mut doc) = serde_json::from_str::<Value>(doc) else {
        return doc.to_owned();
    };
    let mut by_connector: serde_json::Map<String, Value> = serde_json::Map::new();
    for (name, schema) in schemas {
        let mut parts = name.splitn(3, '.').skip(1);
        if let (Some(connector), Some(method)) = (parts.next(), parts.next()) {
            let refs = by_connector
                .entry(connector.to_owned())
                .or_insert_with(|| Value::Object(Default::default()));
            refs[method] = serde_json::json!({ "$ref": format!("#/components/schemas/{name}") });
        }
        doc["components"]["schemas"][name] = schema;
    }
    let op = &mut doc["paths"][METHOD_CALL_PATH]["post"];
    if op.is_object() {
        op["x-method-bodies"] = Value::Object(by_connector);
    }
    doc.to_string()
}

/// The generic method-call operation.
const METHOD_CALL_PATH: &str = "/v1/accounts/{account}/installs/{install}/methods/{method}";

pub async fn openapi_json(s: web::Data<Services>) -> HttpResponse {
    // Built per request (a few milliseconds; not a hot path): each server has its catalogue.
    let body = with_method_bodies(&JSON, s.connectors.method_call_schemas());
    HttpResponse::Ok()
        .content_type("application/json")
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        serde_json::from_str(&JSON).unwrap()
    }

    #[test]
    fn every_parameter_and_body_has_a_schema() {
        let doc = doc();
        let mut ops = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (verb, op) in item.as_object().unwrap() {
                ops += 1;
                let params = op["parameters"].as_array().cloned().unwrap_or_default();
                for seg in path.split('/') {
                    if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                        let p = params
                            .iter()
                            .find(|p| p["name"] == name && p["in"] == "path")
                            .unwrap_or_else(|| panic!("{verb} {path}: {name} not declared"));
                        assert_eq!(p["required"], true, "{verb} {path}: {name}");
                        assert_eq!(
                            p["schema"]["$ref"],
                            format!(
                                "#/components/schemas/{}",
                                match name {
                                    "account" => "AccountId",
                                    "install" => "InstallId",
                                    "method" => "MethodId",
                                    "connector" => "ConnectorId",
                                    "webhook" => "WebhookId",
                                    "event" => "EventId",
                                    "session" if path.starts_with("/v1/agent-sessions") => {
                                        "AgentSessionId"
                                    }
                                    "session" => "ConnectSessionId",
                                    "job" => "JobId",
                                    "file" => "FileIndex",
                                    _ => "ApiKeyId",
                                }
                            ),
                            "{verb} {path}: {name}"
                        );
                    }
                }
                for p in &params {
                    assert!(p["schema"].is_object(), "{verb} {path}: {p}");
                }
                if ["post", "put", "patch"].contains(&verb.as_str()) {
                    let schema = &op["requestBody"]["content"]["application/json"]["schema"];
                    // An optional body is `oneOf: [null, $ref]`.
                    let optional = schema["oneOf"][1]["$ref"].is_string();
                    assert!(
                        schema["$ref"].is_string() || optional,
                        "{verb} {path}: request body without schema: {}",
                        op["requestBody"]
                    );
                }
                for (status, resp) in op["responses"].as_object().unwrap() {
                    if ["204", "302"].contains(&status.as_str()) {
                        continue;
                    }
                    let content = resp["content"].as_object().unwrap_or_else(|| {
                        panic!("{verb} {path} {status}: response without content")
                    });
                    for (ct, media) in content {
                        assert!(
                            media["schema"].is_object(),
                            "{verb} {path} {status} {ct}: no schema"
                        );
                    }
                }
                if path != "/connector/callback" {
                    assert_eq!(
                        op["responses"]["default"]["content"]["application/problem+json"]["schema"]
                            ["$ref"],
                        "#/components/schemas/Problem",
                        "{verb} {path}"
                    );
                }
                assert_eq!(
                    op["security"][0]["api_key"].is_array(),
                    path.starts_with("/v1/"),
                    "{verb} {path}"
                );
            }
        }
        assert_eq!(ops, 51);
        assert_eq!(OPERATIONS.len(), 51);
        let id = &doc["components"]["schemas"]["AccountId"];
        assert_eq!(id["pattern"], switchboard_core::ids::EXTERNAL_ID_PATTERN);
        assert_eq!(
            doc["components"]["securitySchemes"]["api_key"]["scheme"],
            "bearer"
        );
    }

    /// docs/API.md is the contract users read: its endpoint table names exactly the operations of
    /// this document.
    #[test]
    fn the_documented_endpoints_are_the_operations() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/API.md"),
        )
        .expect("docs/API.md");
        let table = text
            .split("## Endpoints")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("docs/API.md has an Endpoints section");
        let mut documented = std::collections::BTreeSet::new();
        for line in table.lines().filter(|l| l.starts_with("| `")) {
            let first_cell = line.trim_start_matches('|').split('|').next().unwrap();
            for token in first_cell.split('`').skip(1).step_by(2) {
                let (verb, path) = token.split_once(' ').expect("`VERB /path`");
                documented.insert(format!("{} {path}", verb.to_lowercase()));
            }
        }
        let doc = doc();
        let mut served = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for verb in item.as_object().unwrap().keys() {
                served.insert(format!("{verb} {path}"));
            }
        }
        assert_eq!(documented, served);
    }

    #[test]
    fn list_endpoints_declare_limit_and_cursor() {
        let doc = doc();
        for path in [
            "/v1/accounts",
            "/v1/api-keys",
            "/v1/accounts/{account}/installs",
            "/v1/installs",
            "/v1/audit",
            "/v1/webhooks",
            "/v1/webhooks/{webhook}/deliveries",
            "/v1/agent-sessions",
            "/v1/accounts/{account}/installs/{install}/jobs",
        ] {
            let params = doc["paths"][path]["get"]["parameters"].as_array().unwrap();
            let limit = params.iter().find(|p| p["name"] == "limit").unwrap();
            assert_eq!(limit["in"], "query");
            assert_eq!(limit["schema"]["minimum"], 1);
            assert_eq!(limit["schema"]["maximum"], 500);
            assert!(params.iter().any(|p| p["name"] == "cursor"));
        }
    }
}
