//! `GET /openapi.json`: the OpenAPI 3.1 document of the API, built with utoipa from one table of
//! operations so it cannot drift from the routes (a test compares both).

use actix_web::HttpResponse;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder,
    Required, ResponseBuilder,
};

/// (verb, path, operation id, summary, success status, has JSON body)
pub(crate) const OPERATIONS: &[(&str, &str, &str, &str, u16, bool)] = &[
    ("get", "/healthz", "healthz", "Liveness", 200, false),
    (
        "get",
        "/readyz",
        "readyz",
        "Readiness: database and connectors",
        200,
        false,
    ),
    (
        "get",
        "/metrics",
        "metrics",
        "Prometheus metrics",
        200,
        false,
    ),
    (
        "get",
        "/openapi.json",
        "openapi",
        "This document",
        200,
        false,
    ),
    (
        "get",
        "/connector/callback",
        "connector_callback",
        "Shared OAuth redirect URI",
        302,
        false,
    ),
    (
        "get",
        "/v1/tenant",
        "get_tenant",
        "The calling tenant",
        200,
        false,
    ),
    (
        "patch",
        "/v1/tenant",
        "update_tenant",
        "Set the tenant's allowed return URL prefixes",
        200,
        true,
    ),
    (
        "get",
        "/v1/connectors",
        "list_connectors",
        "Connector catalogue",
        200,
        false,
    ),
    (
        "get",
        "/v1/connectors/{connector}",
        "get_connector",
        "Full public connector definition",
        200,
        false,
    ),
    (
        "put",
        "/v1/connectors/{connector}/setup",
        "put_setup",
        "Create or replace the tenant's connector setup",
        200,
        true,
    ),
    (
        "get",
        "/v1/connectors/{connector}/setup",
        "get_setup",
        "The tenant's connector setup, secrets masked",
        200,
        false,
    ),
    (
        "delete",
        "/v1/connectors/{connector}/setup",
        "delete_setup",
        "Delete the connector setup",
        204,
        false,
    ),
    (
        "post",
        "/v1/api-keys",
        "create_api_key",
        "Create an API key (plaintext shown once)",
        201,
        true,
    ),
    (
        "get",
        "/v1/api-keys",
        "list_api_keys",
        "List API keys (never the secret)",
        200,
        false,
    ),
    (
        "delete",
        "/v1/api-keys/{id}",
        "revoke_api_key",
        "Revoke an API key at once",
        204,
        false,
    ),
    (
        "post",
        "/v1/accounts",
        "create_account",
        "Create an account",
        201,
        true,
    ),
    (
        "get",
        "/v1/accounts",
        "list_accounts",
        "List accounts",
        200,
        false,
    ),
    (
        "get",
        "/v1/accounts/{account}",
        "get_account",
        "Get an account",
        200,
        false,
    ),
    (
        "delete",
        "/v1/accounts/{account}",
        "delete_account",
        "Delete an account, its installs and their secrets",
        204,
        false,
    ),
    (
        "get",
        "/v1/installs",
        "list_tenant_installs",
        "List the tenant's installs across accounts (filter by status, connector, account)",
        200,
        false,
    ),
    (
        "post",
        "/v1/accounts/{account}/installs",
        "create_install",
        "Install a connector into an account",
        201,
        true,
    ),
    (
        "get",
        "/v1/accounts/{account}/installs",
        "list_installs",
        "List an account's installs",
        200,
        false,
    ),
    (
        "get",
        "/v1/accounts/{account}/installs/{install}",
        "get_install",
        "Get an install (never tokens)",
        200,
        false,
    ),
    (
        "delete",
        "/v1/accounts/{account}/installs/{install}",
        "delete_install",
        "Revoke upstream and delete an install",
        204,
        false,
    ),
    (
        "post",
        "/v1/accounts/{account}/installs/{install}/authorize",
        "authorize_install",
        "A new authorize_url (re-authorise)",
        200,
        true,
    ),
    (
        "post",
        "/v1/accounts/{account}/installs/{install}/methods/{method}",
        "call_method",
        "Call a connector method",
        200,
        true,
    ),
];

fn method(v: &str) -> HttpMethod {
    match v {
        "get" => HttpMethod::Get,
        "put" => HttpMethod::Put,
        "post" => HttpMethod::Post,
        "patch" => HttpMethod::Patch,
        _ => HttpMethod::Delete,
    }
}

pub(crate) fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for (verb, path, op_id, summary, status, body) in OPERATIONS {
        let mut op = OperationBuilder::new()
            .operation_id(Some(*op_id))
            .summary(Some(*summary));
        for seg in path.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                op = op.parameter(
                    ParameterBuilder::new()
                        .name(name)
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True),
                );
            }
        }
        if *body {
            op = op.request_body(Some(
                utoipa::openapi::request_body::RequestBodyBuilder::new()
                    .content("application/json", ContentBuilder::new().build())
                    .required(Some(Required::True))
                    .build(),
            ));
        }
        op = op
            .response(
                status.to_string(),
                ResponseBuilder::new().description("Success"),
            )
            .response(
                "default",
                ResponseBuilder::new()
                    .description("RFC 9457 problem with a stable `code`")
                    .content("application/problem+json", ContentBuilder::new().build()),
            );
        if path.starts_with("/v1") {
            op = op.security(utoipa::openapi::security::SecurityRequirement::new(
                "api_key",
                Vec::<String>::new(),
            ));
        }
        paths = paths.path(*path, PathItem::new(method(verb), op.build()));
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Switchboard")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some("Multi-tenant integration connector host. See API.md.")),
        )
        .paths(paths)
        .components(Some(
            ComponentsBuilder::new()
                .security_scheme(
                    "api_key",
                    SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
                )
                .build(),
        ))
        .build()
}

pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document().to_json().unwrap_or_else(|_| "{}".into()))
}
