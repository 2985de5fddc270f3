//! One file per resource; each handler extracts (already tenant-scoped), calls one service
//! function and maps the result.

mod accounts;
mod agent_sessions;
mod api_keys;
mod callback;
mod connect;
mod connect_sessions;
mod connectors;
mod console;
mod health;
mod installs;
mod jobs;
mod mcp;
mod methods;
mod setups;
mod tenant;
mod webhooks;

use crate::ApiError;
use actix_web::http::header;
use actix_web::{web, ResponseError, Scope};
use switchboard_core::ErrorCode;

pub(crate) use health::metrics_on_dedicated_listener;

pub(crate) type Result<T> = std::result::Result<T, crate::ApiError>;

pub fn routes() -> Scope {
    web::scope("")
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(health::metrics))
        .route("/openapi.json", web::get().to(crate::openapi::openapi_json))
        .route("/connector/callback", web::get().to(callback::callback))
        .route("/connect/{token}", web::get().to(connect::page))
        .route("/connect/{token}", web::post().to(connect::submit))
        .route("/jwks/{jwks_id}.json", web::get().to(setups::jwks))
        // Any other name under /jwks/ is an unknown JWK Set (404), not an unknown route.
        .route("/jwks/{jwks_file}", web::get().to(setups::jwks_unknown))
        // The web console (issue 15): pages and the cookie session.
        .route("/console", web::get().to(console::index))
        .route("/console/", web::get().to(console::index_slash))
        .route("/console/app.js", web::get().to(console::app_js))
        .route("/console/app.css", web::get().to(console::app_css))
        .route("/console/session", web::post().to(console::sign_in))
        .route("/console/session", web::get().to(console::get_session))
        .route("/console/session", web::delete().to(console::sign_out))
        // Issue 15: the MCP server (agent-session bearer, not an API key).
        .service(
            web::resource("/mcp")
                .route(web::post().to(mcp::post))
                .default_service(web::to(mcp::method_not_allowed)),
        )
        .service(
            web::scope("/v1")
                // The hot path first: actix tries the routes in order, matching each dynamic one
                // with a regex, and no other route matches a method-call path.
                .route(
                    "/accounts/{account}/installs/{install}/methods/{method}",
                    web::post().to(methods::call_method),
                )
                .route("/tenant", web::get().to(tenant::get_tenant))
                .route("/tenant", web::patch().to(tenant::update_tenant))
                .route("/connectors", web::get().to(connectors::list_connectors))
                .route(
                    "/connectors/{connector}",
                    web::get().to(connectors::get_connector),
                )
                .route(
                    "/connectors/{connector}/setup",
                    web::put().to(setups::put_setup),
                )
                .route(
                    "/connectors/{connector}/setup",
                    web::get().to(setups::get_setup),
                )
                .route(
                    "/connectors/{connector}/setup",
                    web::delete().to(setups::delete_setup),
                )
                .route(
                    "/connectors/{connector}/setup/keys/rotate",
                    web::post().to(setups::rotate_setup_keys),
                )
                .route("/api-keys", web::post().to(api_keys::create_api_key))
                .route("/api-keys", web::get().to(api_keys::list_api_keys))
                .route("/api-keys/{id}", web::delete().to(api_keys::revoke_api_key))
                .route("/accounts", web::post().to(accounts::create_account))
                .route("/accounts", web::get().to(accounts::list_accounts))
                .route("/accounts/{account}", web::get().to(accounts::get_account))
                .route(
                    "/accounts/{account}",
                    web::delete().to(accounts::delete_account),
                )
                .route("/installs", web::get().to(installs::list_tenant_installs))
                .route("/audit", web::get().to(tenant::list_audit))
                .route(
                    "/accounts/{account}/installs",
                    web::post().to(installs::create_install),
                )
                .route(
                    "/accounts/{account}/installs",
                    web::get().to(installs::list_installs),
                )
                .route(
                    "/accounts/{account}/installs/{install}",
                    web::get().to(installs::get_install),
                )
                .route(
                    "/accounts/{account}/installs/{install}",
                    web::delete().to(installs::delete_install),
                )
                .route(
                    "/accounts/{account}/installs/{install}/authorize",
                    web::post().to(installs::authorize_install),
                )
                .route(
                    "/accounts/{account}/installs/{install}/jobs",
                    web::get().to(jobs::list_jobs),
                )
                .route(
                    "/accounts/{account}/installs/{install}/jobs/{job}",
                    web::get().to(jobs::get_job),
                )
                .route(
                    "/accounts/{account}/installs/{install}/jobs/{job}",
                    web::delete().to(jobs::cancel_job),
                )
                .route(
                    "/accounts/{account}/installs/{install}/jobs/{job}/files/{file}",
                    web::get().to(jobs::download_file),
                )
                .route("/webhooks", web::post().to(webhooks::create_webhook))
                .route("/webhooks", web::get().to(webhooks::list_webhooks))
                .route("/webhooks/{webhook}", web::get().to(webhooks::get_webhook))
                .route(
                    "/webhooks/{webhook}",
                    web::delete().to(webhooks::delete_webhook),
                )
                .route(
                    "/webhooks/{webhook}",
                    web::patch().to(webhooks::patch_webhook),
                )
                .route(
                    "/webhooks/{webhook}/deliveries",
                    web::get().to(webhooks::list_deliveries),
                )
                .route(
                    "/webhooks/{webhook}/deliveries/{event}/replay",
                    web::post().to(webhooks::replay_delivery),
                )
                // Issue 15: agent sessions (bearer access to /mcp).
                .route(
                    "/agent-sessions",
                    web::post().to(agent_sessions::create_agent_session),
                )
                .route(
                    "/agent-sessions",
                    web::get().to(agent_sessions::list_agent_sessions),
                )
                .route(
                    "/agent-sessions/{session}",
                    web::delete().to(agent_sessions::revoke_agent_session),
                )
                .route(
                    "/connect-sessions",
                    web::post().to(connect_sessions::create_connect_session),
                )
                .route(
                    "/connect-sessions/{session}",
                    web::get().to(connect_sessions::get_connect_session),
                ),
        )
}

/// Requests no route takes. A known path with an unsupported verb is 405 with `Allow`
/// (RFC 9110 §15.5.6), anything else 404. Routes carry method guards, so actix itself never
/// answers 405; the verbs come from the operation table the OpenAPI document is built from.
pub(crate) async fn not_found_route(
    req: actix_web::HttpRequest,
) -> Result<actix_web::HttpResponse> {
    if let Some(pattern) = req.match_pattern() {
        let allow: Vec<String> = crate::openapi::OPERATIONS
            .iter()
            .filter(|op| op.1 == pattern)
            .map(|op| op.0.to_ascii_uppercase())
            .collect();
        if !allow.is_empty() {
            let allow = allow.join(", ");
            let mut res = ApiError::new(
                ErrorCode::MethodNotAllowed,
                format!("this route accepts {allow}"),
            )
            .error_response();
            if let Ok(v) = header::HeaderValue::from_str(&allow) {
                res.headers_mut().insert(header::ALLOW, v);
            }
            return Ok(res);
        }
    }
    Err(ApiError::new(ErrorCode::NotFound, "no such route"))
}
