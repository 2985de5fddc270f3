//! `/mcp`: the MCP server (streamable HTTP transport, protocol revisions 2025-03-26 to
//! 2025-11-25) for agent sessions. The messages are `rmcp::model` types; the transport is this
//! actix handler, because rmcp's own streamable HTTP server is a tower service for
//! hyper/axum (see ARCHITECTURE.md, "Choices and crates"). It is stateless: every POST carries
//! one JSON-RPC message and the session's bearer token, is answered with one
//! `application/json` response (requests) or 202 (notifications and responses), and no server
//! stream is offered (GET is 405). `Mcp-Session-Id` is the agent session's id; a request
//! naming another one is 404 (the client starts over). A browser `Origin` other than
//! `server.public_url`'s or one of `mcp.allowed_origins` is 403 (the spec's DNS-rebinding
//! guard).

use super::Result;
use crate::error::ApiError;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientJsonRpcMessage, ClientRequest, ErrorCode as Rpc,
    ErrorData, Implementation, InitializeResult, JsonRpcMessage, ListToolsResult, ProtocolVersion,
    ServerCapabilities, ServerJsonRpcMessage, ServerResult, Tool, ToolAnnotations, ToolsCapability,
};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use switchboard_core::ErrorCode;
use switchboard_service::agent_sessions::{AgentCtx, AgentTool};
use switchboard_service::methods::MethodIn;
use switchboard_service::Services;

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

/// The revisions this transport speaks, newest first: the ones with an `initialize` handshake
/// and JSON responses to POST, up to the newest the TypeScript and Python SDKs ship.
fn supported() -> &'static [ProtocolVersion] {
    const NEWEST: ProtocolVersion = ProtocolVersion::V_2025_11_25;
    ProtocolVersion::known_up_to(&NEWEST)
}

pub async fn post(
    req: HttpRequest,
    s: web::Data<Services>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    check_origin(&req, &s)?;
    let agent = authenticate(&req, &s).await?;
    // The per-key token bucket (`limits.api_key_requests_per_minute`) applies to each agent
    // session as to an API key: 429 `rate_limited` with `Retry-After` past it.
    s.keys.check_rate(&agent.tenant)?;
    if let Some(v) = req.headers().get(VERSION_HEADER) {
        let known = v
            .to_str()
            .is_ok_and(|v| supported().iter().any(|p| p.as_str() == v));
        if !known {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "unsupported MCP-Protocol-Version; this server speaks {}",
                    supported()
                        .iter()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    if let Some(id) = req.headers().get(SESSION_HEADER) {
        if id.as_bytes() != agent.session_id.as_bytes() {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                "unknown Mcp-Session-Id; initialize again",
            ));
        }
    }
    let message: ClientJsonRpcMessage = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(_) => {
            let err = ServerJsonRpcMessage::Error(rmcp::model::JsonRpcError::new(
                None,
                ErrorData::parse_error("the body is not one JSON-RPC message of MCP", None),
            ));
            return Ok(HttpResponse::BadRequest().json(err));
        }
    };
    let JsonRpcMessage::Request(request) = message else {
        // Notifications (`notifications/initialized`, cancellations) and responses need no answer.
        return Ok(HttpResponse::Accepted().finish());
    };
    let initialize = matches!(request.request, ClientRequest::InitializeRequest(_));
    let reply = match dispatch(&s, &agent, request.request).await {
        Ok(mut result) => {
            // Every revision this transport speaks predates `resultType` and non-object output.
            result.strip_result_type_for_legacy_peer();
            result.strip_non_object_output_for_legacy_peer();
            ServerJsonRpcMessage::response(result, request.id)
        }
        Err(e) => ServerJsonRpcMessage::error(e, Some(request.id)),
    };
    let mut res = HttpResponse::Ok();
    res.insert_header(("Cache-Control", "no-store"));
    if initialize {
        res.insert_header((SESSION_HEADER, agent.session_id.as_str()));
    }
    Ok(res.json(reply))
}

/// GET (no server-initiated stream is offered), DELETE (sessions end by revocation or expiry,
/// not by the client) and any other verb: 405 with `Allow: POST`.
pub async fn method_not_allowed() -> HttpResponse {
    use actix_web::ResponseError;
    let mut res = ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route accepts POST (the MCP streamable HTTP transport without a server stream)",
    )
    .error_response();
    res.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
    res
}

fn check_origin(req: &HttpRequest, s: &Services) -> Result<()> {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let of = |u: &str| {
        url::Url::parse(u)
            .ok()
            .map(|u| u.origin().ascii_serialization())
    };
    let presented = origin.to_str().ok().and_then(of);
    let settings = s.settings();
    let allowed = presented.is_some_and(|p| {
        of(&settings.server.public_url).as_ref() == Some(&p)
            || settings
                .mcp
                .allowed_origins
                .iter()
                .any(|o| of(o).as_ref() == Some(&p))
    });
    if allowed {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::OriginNotAllowed,
            "this Origin may not call /mcp (server.public_url and mcp.allowed_origins may)",
        ))
    }
}

async fn authenticate(req: &HttpRequest, s: &Services) -> Result<AgentCtx> {
    let unauthorized = || {
        ApiError::new(
            ErrorCode::Unauthorized,
            "send Authorization: Bearer <agent session token>; the session may be revoked or expired",
        )
    };
    let token = crate::extract::bearer_token(req).ok_or_else(unauthorized)?;
    let request_id = crate::request_id::RequestId::of(req);
    match s.agent_sessions.authenticate(token).await? {
        Some(agent) => Ok(agent.with_request_id(request_id)),
        None => Err(unauthorized()),
    }
}

async fn dispatch(
    s: &Services,
    agent: &AgentCtx,
    request: ClientRequest,
) -> std::result::Result<ServerResult, ErrorData> {
    match request {
        ClientRequest::InitializeRequest(r) => {
            // The client's revision when this server speaks it, else the newest it speaks (the
            // client then decides whether to go on).
            let asked = r.params.protocol_version;
            let version = if supported().contains(&asked) {
                asked
            } else {
                ProtocolVersion::V_2025_11_25
            };
            let mut capabilities = ServerCapabilities::default();
            capabilities.tools = Some(ToolsCapability::default());
            Ok(ServerResult::InitializeResult(
                InitializeResult::new(capabilities)
                    .with_protocol_version(version)
                    .with_server_info(Implementation::new(
                        "switchboard",
                        env!("CARGO_PKG_VERSION"),
                    ))
                    .with_instructions(format!(
                        "Tools are the methods of one {} install (FHIR R4); each returns the EHR's FHIR JSON as structured content.",
                        agent.connector_id
                    )),
            ))
        }
        ClientRequest::PingRequest(_) => Ok(ServerResult::empty(())),
        ClientRequest::ListToolsRequest(_) => Ok(ServerResult::ListToolsResult(
            ListToolsResult::with_all_items(
                s.agent_sessions.tools(agent).iter().map(tool).collect(),
            ),
        )),
        ClientRequest::CallToolRequest(r) => call_tool(s, agent, r.params)
            .await
            .map(ServerResult::CallToolResult),
        other => Err(ErrorData::new(
            Rpc::METHOD_NOT_FOUND,
            format!(
                "{} is not offered by this server (tools only)",
                other.method()
            ),
            None,
        )),
    }
}

fn tool(t: &AgentTool) -> Tool {
    let schema = match &t.input_schema {
        Value::Object(o) => o.clone(),
        _ => Map::new(),
    };
    let annotations = if t.writes {
        ToolAnnotations::new().read_only(false).destructive(false)
    } else {
        ToolAnnotations::new().read_only(true)
    };
    Tool::new(t.name.clone(), t.description.clone(), Arc::new(schema)).annotate(annotations)
}

/// Runs the tool's method through the one method path (validation, token, paging, audit). The
/// result is the EHR's FHIR JSON; a failure is a tool error carrying the problem's code.
async fn call_tool(
    s: &Services,
    agent: &AgentCtx,
    params: CallToolRequestParams,
) -> std::result::Result<CallToolResult, ErrorData> {
    let tools = s.agent_sessions.tools(agent);
    let Some(t) = tools.iter().find(|t| t.name == params.name) else {
        return Err(ErrorData::invalid_params(
            "no such tool in this agent session (tools/list names them)",
            None,
        ));
    };
    let mut args = params.arguments.unwrap_or_default();
    let body = if t.has_body {
        args.remove("body")
    } else {
        None
    };
    let max_pages = if t.paged {
        args.remove("max_pages")
    } else {
        None
    };
    let input: MethodIn = match serde_json::from_value(
        json!({ "params": Value::Object(args), "max_pages": max_pages, "body": body }),
    ) {
        Ok(i) => i,
        Err(_) => {
            return Ok(CallToolResult::structured_error(json!({
                "code": ErrorCode::InvalidParams.code(),
                "status": ErrorCode::InvalidParams.status(),
                "detail": "max_pages must be a positive integer and body an object",
            })))
        }
    };
    let call = s
        .methods
        .call_method(
            &agent.tenant,
            &agent.account_id,
            &agent.install_id,
            &t.method,
            input,
            None,
        )
        .await;
    Ok(match call {
        Ok(reply) => {
            let data = serde_json::from_slice::<Value>(&reply.body)
                .ok()
                .and_then(|mut v| v.get_mut("data").map(Value::take))
                .unwrap_or(Value::Null);
            CallToolResult::structured(data)
        }
        Err(e) => {
            let problem = ApiError::from(e).0;
            let mut out = Map::new();
            out.insert("code".into(), json!(problem.code));
            out.insert("status".into(), json!(problem.status));
            out.insert("detail".into(), json!(problem.detail));
            for key in ["errors", "issues", "retry_after", "install_status"] {
                if let Some(v) = problem.extensions.get(key) {
                    out.insert(key.into(), v.clone());
                }
            }
            CallToolResult::structured_error(Value::Object(out))
        }
    })
}
