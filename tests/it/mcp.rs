//! Agent sessions and the MCP server at `/mcp` (issue 15), end to end: sessions created, listed
//! and revoked over `/v1/agent-sessions` (422s, the token shown once and stored only as its
//! SHA-256); and `/mcp` driven by the official MCP client SDK (npm `@modelcontextprotocol/sdk`,
//! streamable HTTP, tests/mcp-client) against a Canvas install on a FakeFhir: the tools are
//! the session's methods with their schemas, get_patient and search_patients return the FHIR
//! JSON, a write tool is absent and refused on a read-only session, a validation error is a
//! tool error with its code and nothing sent upstream, and a revoked session, an expired session
//! (on a `ManualClock`), an install needing re-authorization and a deleted install are refused
//! on the next call.

use crate::methods::{install, Env, Via};
use crate::support::{assert_problem, repo_root, Backend, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::process::Stdio;
use std::time::Duration;
use switchboard_core::{now_ms, InstallStatus};
use switchboard_service::ManualClock;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

crate::both_backends! {
    agent_sessions_api => agent_sessions_are_created_listed_and_revoked;
    mcp_tools_and_calls => an_mcp_client_lists_tools_and_calls_methods;
    mcp_refusals => revoked_expired_and_deleted_are_refused_on_the_next_call;
    mcp_rate_limited => an_agent_session_has_the_per_key_rate;
}

/// One Node process of tests/mcp-client/client.mjs: an SDK `Client` over the streamable HTTP
/// transport, stepped one JSON line at a time.
struct McpClient {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl McpClient {
    async fn start(app: &TestApp, token: &str) -> McpClient {
        let dir = repo_root().join("tests/mcp-client");
        assert!(
            dir.join("node_modules/@modelcontextprotocol/sdk").exists(),
            "run `npm ci` in tests/mcp-client (scripts/test does)"
        );
        let mut child = Command::new("node")
            .arg("client.mjs")
            .arg(app.url("/mcp"))
            .arg(token)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        McpClient {
            _child: child,
            stdin,
            lines,
        }
    }

    /// Sends one step; returns `Ok(result)` or `Err(the SDK's error)`.
    async fn step(&mut self, step: Value) -> Result<Value, Value> {
        let mut line = step.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .expect("the MCP client answers")
            .unwrap()
            .expect("a line");
        let mut v: Value = serde_json::from_str(&answer).expect("JSON line");
        match v.get_mut("ok") {
            Some(ok) => Ok(ok.take()),
            None => Err(v["error"].take()),
        }
    }

    async fn connect(&mut self) -> Value {
        self.step(json!({"op": "connect"})).await.expect("connect")
    }

    async fn tools(&mut self) -> Vec<Value> {
        let r = self
            .step(json!({"op": "list_tools"}))
            .await
            .expect("tools/list");
        r["tools"].as_array().unwrap().clone()
    }

    async fn call(&mut self, name: &str, arguments: Value) -> Result<Value, Value> {
        self.step(json!({"op": "call", "name": name, "arguments": arguments}))
            .await
    }
}

/// A Canvas install (static bearer) on a FakeFhir with three patients.
async fn canvas(app: &TestApp) -> Env {
    install(app, Via::Canvas, Via::Canvas.fhir().seed_patients(3)).await
}

async fn create_session(app: &TestApp, env: &Env, extra: Value) -> Value {
    let mut body = json!({"account_id": env.account, "install_id": env.install});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (s, v) = app.post("/v1/agent-sessions", body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn names(tools: &[Value]) -> Vec<&str> {
    tools.iter().map(|t| t["name"].as_str().unwrap()).collect()
}

async fn agent_sessions_are_created_listed_and_revoked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let env = canvas(&app).await;
    let base = json!({"account_id": env.account, "install_id": env.install});
    let with = |extra: Value| {
        let mut b = base.clone();
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };

    // 422s name every bad field; nothing is stored.
    let (s, v) = app
        .post(
            "/v1/agent-sessions",
            with(json!({"methods": ["get_patient", "no_such_method", "create_observation"]})),
        )
        .await;
    assert_problem(s, &v, 422, "invalid_agent_session");
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["methods[1]", "methods[2]"], "{v}");
    assert!(v["errors"][1]["message"]
        .as_str()
        .unwrap()
        .contains("allow_writes"));
    for bad in [json!({"expires_in": 0}), json!({"expires_in": 86_401})] {
        let (s, v) = app.post("/v1/agent-sessions", with(bad)).await;
        assert_problem(s, &v, 422, "invalid_agent_session");
        assert_eq!(v["errors"][0]["field"], "expires_in", "{v}");
    }
    let (s, v) = app
        .post("/v1/agent-sessions", with(json!({"methods": []})))
        .await;
    assert_problem(s, &v, 422, "invalid_agent_session");
    // An unknown install, and another tenant's install, are 404.
    let (s, v) = app
        .post(
            "/v1/agent-sessions",
            json!({"account_id": env.account, "install_id": "ins_nope"}),
        )
        .await;
    assert_problem(s, &v, 404, "not_found");
    let (_, other_key) = app.new_tenant("Other").await;
    let (s, v) = app
        .call_as(
            &other_key,
            reqwest::Method::POST,
            "/v1/agent-sessions",
            Some(base.clone()),
        )
        .await;
    assert_problem(s, &v, 404, "not_found");
    let (s, v) = app.get("/v1/agent-sessions").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["agent_sessions"], json!([]), "{v}");

    // Created: the token once; reads by default (no write method), one hour.
    let r = app
        .http
        .post(app.url("/v1/agent-sessions"))
        .bearer_auth(&app.api_key)
        .json(&base)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ags_"), "{created}");
    assert!(token.starts_with("sba_") && token.len() > 40, "{created}");
    assert_eq!(created["allow_writes"], false);
    assert_eq!(created["connector"], "canvas");
    let methods: Vec<&str> = created["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(methods.contains(&"get_patient") && methods.contains(&"search_patients"));
    assert!(
        !methods.iter().any(|m| m.starts_with("create_")),
        "{created}"
    );
    let created_at = chrono_ms(&created["created_at"]);
    let expires_at = chrono_ms(&created["expires_at"]);
    assert_eq!(expires_at - created_at, 3_600_000, "{created}");

    // Only the hash is stored; the list never shows the token.
    let rows = {
        let id = id.clone();
        app.db(move |c| {
            use diesel::prelude::*;
            use switchboard_db::schema::agent_sessions as s;
            Ok(s::table
                .filter(s::id.eq(id))
                .select((s::token_hash, s::tenant_id, s::install_id))
                .load::<(String, String, String)>(c)?)
        })
        .await
    };
    assert_eq!(
        rows,
        [(sha256_hex(&token), app.tenant.clone(), env.install.clone())]
    );
    assert!(!app.dump_database().contains(&token[4..]));
    let (s, v) = app.get("/v1/agent-sessions").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["agent_sessions"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["agent_sessions"][0]["id"], id.as_str());
    assert_eq!(v["agent_sessions"][0]["expired"], false);
    assert!(!v.to_string().contains(&token[4..]), "{v}");
    assert!(v["agent_sessions"][0].get("token").is_none());
    let (s, v) = app.get("/v1/agent-sessions?limit=0").await;
    assert_problem(s, &v, 400, "invalid_request");

    // A write session names its writes explicitly.
    let w = create_session(
        &app,
        &env,
        json!({"methods": ["get_patient", "create_observation"], "allow_writes": true, "expires_in": 60}),
    )
    .await;
    assert_eq!(w["methods"], json!(["get_patient", "create_observation"]));
    assert_eq!(w["allow_writes"], true);
    assert_eq!(
        chrono_ms(&w["expires_at"]) - chrono_ms(&w["created_at"]),
        60_000
    );

    // The other tenant sees none of them and cannot revoke them.
    let (s, v) = app
        .call_as(&other_key, reqwest::Method::GET, "/v1/agent-sessions", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["agent_sessions"], json!([]));
    let (s, v) = app
        .call_as(
            &other_key,
            reqwest::Method::DELETE,
            &format!("/v1/agent-sessions/{id}"),
            None,
        )
        .await;
    assert_problem(s, &v, 404, "not_found");

    // /mcp takes the session token, not an API key, and only POST.
    let r = app
        .http
        .post(app.url("/mcp"))
        .bearer_auth(&app.api_key)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = app
        .http
        .post(app.url("/mcp"))
        .bearer_auth(&token)
        .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"jsonrpc": "2.0", "id": 7, "result": {}})
    );
    let r = app
        .http
        .get(app.url("/mcp"))
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers()["allow"], "POST");
    // A browser page of another origin is refused (DNS rebinding); the server's own is not.
    for (origin, want) in [
        ("https://evil.example", StatusCode::FORBIDDEN),
        (app.base.as_str(), StatusCode::OK),
    ] {
        let r = app
            .http
            .post(app.url("/mcp"))
            .bearer_auth(&token)
            .header("origin", origin)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{origin}");
    }
    let r = app
        .http
        .post(app.url("/mcp"))
        .bearer_auth(&token)
        .header("mcp-protocol-version", "1999-01-01")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = app
        .http
        .post(app.url("/mcp"))
        .bearer_auth(&token)
        .header("mcp-session-id", "ags_someone_else")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Revoked: gone from the list, a second revoke is 404, the token is refused.
    let (s, _) = app.delete(&format!("/v1/agent-sessions/{id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = app.delete(&format!("/v1/agent-sessions/{id}")).await;
    assert_problem(s, &v, 404, "not_found");
    let (_, v) = app.get("/v1/agent-sessions").await;
    assert_eq!(v["agent_sessions"].as_array().unwrap().len(), 1, "{v}");
    assert_ne!(v["agent_sessions"][0]["id"], id.as_str());
    let r = app
        .http
        .post(app.url("/mcp"))
        .bearer_auth(&token)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Both changes are in the audit trail, by the key that made them.
    app.services.audit.flush().await;
    let (_, v) = app.get("/v1/audit").await;
    let actions: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&format!("agent_session.created:{id}").as_str())
            && actions.contains(&format!("agent_session.revoked:{id}").as_str()),
        "{actions:?}"
    );
}

/// Epoch milliseconds of an RFC 3339 string the API returned.
fn chrono_ms(v: &Value) -> i64 {
    let s = v.as_str().expect("a timestamp");
    switchboard_core::rfc3339_to_ms(s).unwrap_or_else(|| panic!("not RFC 3339: {s}"))
}

async fn an_mcp_client_lists_tools_and_calls_methods(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let env = canvas(&app).await;
    let session = create_session(&app, &env, json!({})).await;
    let id = session["id"].as_str().unwrap();
    let mut mcp = McpClient::start(&app, session["token"].as_str().unwrap()).await;

    let hello = mcp.connect().await;
    assert_eq!(hello["server"]["name"], "switchboard", "{hello}");
    assert!(hello["capabilities"]["tools"].is_object(), "{hello}");
    assert_eq!(hello["sessionId"], id, "{hello}");
    assert_eq!(hello["protocolVersion"], "2025-11-25", "{hello}");

    // The tools are exactly the session's methods: every read, no write.
    let tools = mcp.tools().await;
    let listed = names(&tools);
    assert_eq!(
        listed,
        session["methods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect::<Vec<_>>()
    );
    assert!(listed.contains(&"get_patient") && listed.contains(&"search_patients"));
    assert!(
        !listed.iter().any(|n| n.starts_with("create_")),
        "{listed:?}"
    );
    let get = tools.iter().find(|t| t["name"] == "get_patient").unwrap();
    assert_eq!(get["inputSchema"]["type"], "object", "{get}");
    assert_eq!(get["inputSchema"]["properties"]["id"]["type"], "string");
    assert_eq!(get["inputSchema"]["required"], json!(["id"]));
    assert!(get["description"]
        .as_str()
        .unwrap()
        .contains("Read one Patient by id."));
    assert_eq!(get["annotations"]["readOnlyHint"], true, "{get}");
    let search = tools
        .iter()
        .find(|t| t["name"] == "search_patients")
        .unwrap();
    assert_eq!(
        search["inputSchema"]["properties"]["max_pages"]["type"],
        "integer"
    );

    // get_patient: the Patient as structured content and as text.
    let before = env.fhir.request_count();
    let r = mcp
        .call("get_patient", json!({"id": "pat-0001"}))
        .await
        .expect("tools/call");
    assert_ne!(r["isError"], true, "{r}");
    assert_eq!(r["structuredContent"]["resourceType"], "Patient", "{r}");
    assert_eq!(r["structuredContent"]["id"], "pat-0001");
    assert_eq!(
        r["structuredContent"],
        env.fhir.patient("pat-0001").unwrap()
    );
    let text: Value = serde_json::from_str(r["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(text, r["structuredContent"]);
    assert_eq!(env.fhir.request_count(), before + 1);
    assert_eq!(env.fhir.last_request().unwrap().path(), "/Patient/pat-0001");

    // search_patients: the searchset Bundle.
    let r = mcp
        .call("search_patients", json!({}))
        .await
        .expect("tools/call");
    assert_ne!(r["isError"], true, "{r}");
    assert_eq!(r["structuredContent"]["resourceType"], "Bundle", "{r}");
    let ids: Vec<&str> = r["structuredContent"]["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["pat-0001", "pat-0002", "pat-0003"]);

    // A validation error is a tool error with the problem's code; nothing is sent upstream.
    let before = env.fhir.request_count();
    let r = mcp
        .call("get_patient", json!({"id": "not/an id"}))
        .await
        .expect("a tool result");
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(r["structuredContent"]["code"], "invalid_params", "{r}");
    assert_eq!(r["structuredContent"]["status"], 422);
    assert_eq!(r["structuredContent"]["errors"][0]["field"], "id", "{r}");
    assert!(!r.to_string().contains("not/an id"), "{r}");
    assert_eq!(env.fhir.request_count(), before);

    // The write tool is not offered, and calling it anyway is refused before anything is sent.
    let e = mcp
        .call(
            "create_observation",
            json!({"body": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/pat-0001"}}}),
        )
        .await
        .expect_err("refused");
    assert_eq!(e["code"], -32602, "{e}");
    assert_eq!(env.fhir.create_requests("Observation"), 0);
    assert_eq!(env.fhir.request_count(), before);

    // The audit trail names the session the calls came through.
    app.services.audit.flush().await;
    let (_, v) = app.get("/v1/audit?method=get_patient").await;
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{v}");
    for e in events {
        assert_eq!(e["api_key_id"], id, "{e}");
        assert_eq!(e["install_id"], env.install.as_str());
    }
    assert_eq!(events[0]["status"], 200);
    assert_eq!(events[1]["code"], "invalid_params");

    // A write session lists its write tool with the write annotations.
    let w = create_session(
        &app,
        &env,
        json!({"methods": ["get_patient", "create_observation"], "allow_writes": true}),
    )
    .await;
    let mut writer = McpClient::start(&app, w["token"].as_str().unwrap()).await;
    writer.connect().await;
    let tools = writer.tools().await;
    assert_eq!(names(&tools), ["get_patient", "create_observation"]);
    let create = &tools[1];
    assert_eq!(create["annotations"]["readOnlyHint"], false, "{create}");
    assert_eq!(create["annotations"]["destructiveHint"], false, "{create}");
    assert_eq!(
        create["inputSchema"]["properties"]["body"]["properties"]["resourceType"]["const"],
        "Observation"
    );
    mcp.step(json!({"op": "close"})).await.unwrap();
    writer.step(json!({"op": "close"})).await.unwrap();
}

async fn revoked_expired_and_deleted_are_refused_on_the_next_call(backend: Backend) {
    let clock = ManualClock::new(now_ms());
    // No prepared-install cache: a status another replica wrote is seen on the next call (the
    // token keeper drops this replica's entry itself when it changes the status).
    let app = TestApp::spawn_with_clock(backend, clock.clone(), |s| {
        s.tokens.install_cache_ttl_ms = 0
    })
    .await;
    let env = canvas(&app).await;
    let get = json!({"id": "pat-0002"});

    // Revoked: the next call is refused (HTTP 401 to the SDK), nothing sent upstream.
    let s = create_session(&app, &env, json!({})).await;
    let mut mcp = McpClient::start(&app, s["token"].as_str().unwrap()).await;
    mcp.connect().await;
    let r = mcp.call("get_patient", get.clone()).await.expect("call");
    assert_eq!(r["structuredContent"]["id"], "pat-0002", "{r}");
    let (st, _) = app
        .delete(&format!("/v1/agent-sessions/{}", s["id"].as_str().unwrap()))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let before = env.fhir.request_count();
    let e = mcp
        .call("get_patient", get.clone())
        .await
        .expect_err("revoked");
    assert_eq!(e["code"], 401, "{e}");
    assert_eq!(env.fhir.request_count(), before);

    // Expired (the service's clock moves past expires_at): refused the same way.
    let s = create_session(&app, &env, json!({"expires_in": 60})).await;
    let mut mcp = McpClient::start(&app, s["token"].as_str().unwrap()).await;
    mcp.connect().await;
    clock.advance(Duration::from_secs(59));
    let r = mcp.call("get_patient", get.clone()).await.expect("call");
    assert_ne!(r["isError"], true, "{r}");
    clock.advance(Duration::from_secs(1));
    let e = mcp
        .call("get_patient", get.clone())
        .await
        .expect_err("expired");
    assert_eq!(e["code"], 401, "{e}");
    let (_, v) = app.get("/v1/agent-sessions").await;
    let listed = v["agent_sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == s["id"])
        .cloned()
        .unwrap();
    assert_eq!(listed["expired"], true, "{listed}");

    // Needing re-authorization: the next tool call is a tool error naming the status.
    let s = create_session(&app, &env, json!({})).await;
    let mut mcp = McpClient::start(&app, s["token"].as_str().unwrap()).await;
    mcp.connect().await;
    let r = mcp.call("get_patient", get.clone()).await.expect("call");
    assert_ne!(r["isError"], true, "{r}");
    let set = |status: InstallStatus| {
        let id = env.install.clone();
        app.db(move |c| switchboard_db::repo::installs::set_status(c, &id, status, None, now_ms()))
    };
    assert!(set(InstallStatus::NeedsReauthorization).await);
    let before = env.fhir.request_count();
    let r = mcp
        .call("get_patient", get.clone())
        .await
        .expect("a tool result");
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(
        r["structuredContent"]["code"], "install_not_authorized",
        "{r}"
    );
    assert_eq!(
        r["structuredContent"]["install_status"], "needs_reauthorization",
        "{r}"
    );
    assert_eq!(env.fhir.request_count(), before);
    assert!(set(InstallStatus::Authorized).await);

    // Deleted install: the next tool call is a tool error (not_found), nothing sent upstream.
    let s = create_session(&app, &env, json!({})).await;
    let mut mcp = McpClient::start(&app, s["token"].as_str().unwrap()).await;
    mcp.connect().await;
    let r = mcp.call("get_patient", get.clone()).await.expect("call");
    assert_ne!(r["isError"], true, "{r}");
    let (st, _) = app
        .delete(&format!(
            "/v1/accounts/{}/installs/{}",
            env.account, env.install
        ))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let before = env.fhir.request_count();
    let r = mcp
        .call("get_patient", get.clone())
        .await
        .expect("a tool result");
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(r["structuredContent"]["code"], "not_found", "{r}");
    assert_eq!(env.fhir.request_count(), before);
}

/// Each agent session has the per-key token bucket of an API key: past the burst, `/mcp`
/// answers 429 `rate_limited` with `Retry-After` and sends nothing upstream; another session
/// of the same install is not affected.
async fn an_agent_session_has_the_per_key_rate(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        // The burst covers the test's own setup calls with the API key (its own bucket).
        s.limits.api_key_requests_per_minute = 1;
        s.limits.api_key_burst = 30;
    })
    .await;
    let env = canvas(&app).await;
    let first = create_session(&app, &env, json!({})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let ping = |token: String| {
        let app = &app;
        async move {
            app.http
                .post(app.url("/mcp"))
                .bearer_auth(token)
                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
                .send()
                .await
                .unwrap()
        }
    };
    for _ in 0..30 {
        assert_eq!(ping(first.clone()).await.status(), StatusCode::OK);
    }
    let upstream_before = env.fhir.requests().len();
    let r = ping(first.clone()).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "rate_limited", "{v}");
    assert_eq!(env.fhir.requests().len(), upstream_before);
    // A second session of the same install has a bucket of its own.
    let second = create_session(&app, &env, json!({})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(ping(second).await.status(), StatusCode::OK);
}
