//! The foundation end to end: API keys, authentication, tenant isolation, the connector
//! catalogue, connector setups (secrets sealed at rest), accounts, installs (static bearer and
//! the start of an authorization-code flow), input validation that changes nothing, the
//! operational endpoints, and the operator CLI run as the real binary.

use crate::support::{Backend, TestApp};
use diesel::prelude::*;
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use switchboard_core::ErrorCode;
use switchboard_db::schema;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A response as the client sees it.
struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
    json: Value,
}

impl Resp {
    fn content_type(&self) -> &str {
        self.headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends a raw request: `auth` is the whole Authorization header value (None: no header),
/// `content_type` is sent verbatim when given.
async fn send_raw(
    app: &TestApp,
    method: Method,
    path: &str,
    auth: Option<&str>,
    content_type: Option<&str>,
    body: Option<Vec<u8>>,
) -> Resp {
    let mut req = app.http.request(method, app.url(path));
    if let Some(a) = auth {
        req = req.header(AUTHORIZATION, a);
    }
    if let Some(ct) = content_type {
        req = req.header(CONTENT_TYPE, ct);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let res = req.send().await.expect("request");
    let status = res.status();
    let headers = res.headers().clone();
    let text = res.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        text,
        json,
    }
}

/// A JSON request with `key` as the bearer API key.
async fn req_as(app: &TestApp, key: &str, method: Method, path: &str, body: Option<Value>) -> Resp {
    let auth = format!("Bearer {key}");
    let (ct, body) = match body {
        Some(b) => (Some("application/json"), Some(b.to_string().into_bytes())),
        None => (None, None),
    };
    send_raw(app, method, path, Some(&auth), ct, body).await
}

/// A JSON request with the app's first API key.
async fn req(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> Resp {
    req_as(app, &app.api_key, method, path, body).await
}

/// Asserts an RFC 9457 problem: the status, the `code`, the `application/problem+json` content
/// type, the members `type`, `title`, `status`, `detail`, `code`, and that the code, its status
/// and its title come from THE error table (`switchboard_core::ErrorCode`).
fn problem(r: &Resp, want_status: u16, want_code: &str) {
    assert_eq!(
        r.status.as_u16(),
        want_status,
        "unexpected status; body: {}",
        r.text
    );
    assert_eq!(
        r.content_type(),
        "application/problem+json",
        "error bodies are problem+json; body: {}",
        r.text
    );
    let b = &r.json;
    assert_eq!(b["code"], want_code, "unexpected code; body: {}", r.text);
    assert_eq!(b["status"], want_status, "{}", r.text);
    for member in ["type", "title", "detail", "code"] {
        assert!(
            b[member].as_str().is_some_and(|s| !s.is_empty()),
            "problem member `{member}` missing or empty: {}",
            r.text
        );
    }
    let entry = ErrorCode::ALL
        .iter()
        .find(|c| c.code() == want_code)
        .unwrap_or_else(|| panic!("code `{want_code}` is not in switchboard_core::ErrorCode::ALL"));
    assert_eq!(
        entry.status(),
        want_status,
        "status of `{want_code}` per the table"
    );
    assert_eq!(
        b["title"],
        entry.title(),
        "title of `{want_code}` per the table"
    );
}

/// The `field` names of a problem's `errors` list.
fn error_fields(r: &Resp) -> BTreeSet<String> {
    r.json["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("problem has no errors list: {}", r.text))
        .iter()
        .map(|e| e["field"].as_str().expect("errors[].field").to_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The last 24 characters of an API key: a piece of its random secret part (alone, without the
/// public id, so a store that split the key would still be caught).
fn secret_tail(key: &str) -> &str {
    assert!(key.len() > 60, "unexpectedly short key");
    &key[key.len() - 24..]
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// A value no test or fixture could contain by chance.
fn distinctive(label: &str) -> String {
    format!("{label}-{}", switchboard_core::random_token(12))
}

/// Everything a request could change: row counts per table, every setup's stored settings and
/// every tenant's allowed return URLs.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    counts: [i64; 6],
    setups: Vec<(String, String, String)>,
    tenants: Vec<(String, String)>,
}

async fn snapshot(app: &TestApp) -> Snapshot {
    app.db(|conn| {
        let counts = [
            schema::tenants::table.count().get_result::<i64>(conn)?,
            schema::api_keys::table.count().get_result::<i64>(conn)?,
            schema::connector_setups::table
                .count()
                .get_result::<i64>(conn)?,
            schema::accounts::table.count().get_result::<i64>(conn)?,
            schema::installs::table.count().get_result::<i64>(conn)?,
            schema::oauth_states::table
                .count()
                .get_result::<i64>(conn)?,
        ];
        let mut setups: Vec<(String, String, String)> =
            switchboard_db::repo::setups::list_all(conn)?
                .into_iter()
                .map(|s| (s.tenant_id, s.connector_id, s.settings))
                .collect();
        setups.sort();
        let mut tenants: Vec<(String, String)> = switchboard_db::repo::tenants::list_all(conn)?
            .into_iter()
            .map(|t| (t.id, t.allowed_return_urls))
            .collect();
        tenants.sort();
        Ok(Snapshot {
            counts,
            setups,
            tenants,
        })
    })
    .await
}

async fn install_row(app: &TestApp, id: &str) -> Option<switchboard_db::Install> {
    let id = id.to_owned();
    app.db(move |conn| switchboard_db::repo::installs::find_by_id(conn, &id))
        .await
}

async fn oauth_states_of(app: &TestApp, install_id: &str) -> i64 {
    let id = install_id.to_owned();
    app.db(move |conn| {
        Ok(schema::oauth_states::table
            .filter(schema::oauth_states::install_id.eq(id))
            .count()
            .get_result::<i64>(conn)?)
    })
    .await
}

/// Sets up Canvas for static bearer installs (a tenant-wide `api_token`; installs may override
/// it) with a loopback FHIR base where nothing listens.
async fn canvas_bearer_setup(app: &TestApp, token: &str) {
    let r = req(
        app,
        Method::PUT,
        "/v1/connectors/canvas/setup",
        Some(json!({"settings": {"api_token": token, "fhir_base_url": "http://127.0.0.1:9/"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

async fn create_bearer_install(app: &TestApp, key: &str, account: &str) -> Value {
    let r = req_as(
        app,
        key,
        Method::POST,
        &format!("/v1/accounts/{account}/installs"),
        Some(json!({"connector": "canvas", "auth_type": "static_bearer"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.json
}

// ---------------------------------------------------------------------------------------------
// 1. API keys and authentication
// ---------------------------------------------------------------------------------------------

async fn api_keys_lifecycle(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    // Create: 201 with the plaintext once, never cached.
    let r = req(
        &app,
        Method::POST,
        "/v1/api-keys",
        Some(json!({"name": "workflow-prod"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        r.headers.get("cache-control").map(|v| v.to_str().unwrap()),
        Some("no-store")
    );
    let created = r.json.clone();
    let obj = created.as_object().unwrap();
    for k in ["id", "name", "prefix", "created_at", "api_key"] {
        assert!(obj[k].is_string(), "{k} missing: {created}");
    }
    let key_id = created["id"].as_str().unwrap().to_owned();
    let key = created["api_key"].as_str().unwrap().to_owned();
    let prefix = created["prefix"].as_str().unwrap().to_owned();
    assert!(key_id.starts_with("key_"), "{key_id}");
    assert_eq!(created["name"], "workflow-prod");
    assert!(
        key.starts_with(&prefix) && key.len() > prefix.len() + 20,
        "{created}"
    );
    assert_ne!(key, app.api_key);

    // The new key works and belongs to the same tenant.
    let acc = req_as(
        &app,
        &key,
        Method::POST,
        "/v1/accounts",
        Some(json!({"id": "made-with-new-key", "name": "N"})),
    )
    .await;
    assert_eq!(acc.status, StatusCode::CREATED, "{}", acc.text);
    let r = req(&app, Method::GET, "/v1/accounts/made-with-new-key", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // A third key, never used yet: last_used_at is null until its first use.
    let r = req(
        &app,
        Method::POST,
        "/v1/api-keys",
        Some(json!({"name": "unused"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let unused_id = r.json["id"].as_str().unwrap().to_owned();
    let unused_key = r.json["api_key"].as_str().unwrap().to_owned();

    // List: every key with its public fields and never a secret.
    let r = req(&app, Method::GET, "/v1/api-keys", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let list = r.json["api_keys"].as_array().unwrap().clone();
    assert_eq!(list.len(), 3, "{}", r.text);
    for k in &list {
        let o = k.as_object().unwrap();
        for f in ["id", "name", "prefix", "created_at", "last_used_at"] {
            assert!(o.contains_key(f), "{f} missing in {k}");
        }
        assert!(
            !o.contains_key("api_key") && !o.contains_key("key_hash"),
            "{k}"
        );
    }
    for secret in [&app.api_key, &key, &unused_key] {
        assert!(
            !r.text.contains(secret.as_str()),
            "a plaintext key is listed"
        );
        let tail = secret_tail(secret);
        assert!(!r.text.contains(tail), "a key's secret part is listed");
        assert!(
            !r.text.contains(&sha256_hex(secret)),
            "a key hash is listed"
        );
    }
    let by_id = |id: &str| list.iter().find(|k| k["id"] == id).cloned().unwrap();
    assert_eq!(by_id(&key_id)["name"], "workflow-prod");
    assert_eq!(by_id(&key_id)["prefix"], prefix.as_str());
    assert!(
        by_id(&key_id)["last_used_at"].is_string(),
        "used key shows last use"
    );
    assert!(
        by_id(&unused_id)["last_used_at"].is_null(),
        "unused key has no last use"
    );
    let names: BTreeSet<String> = list
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, set(&["initial", "unused", "workflow-prod"]));

    // last_used_at is set by the first use.
    let r = req_as(&app, &unused_key, Method::GET, "/v1/accounts", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = req(&app, Method::GET, "/v1/api-keys", None).await;
    let now_used = r.json["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == unused_id.as_str())
        .unwrap()
        .clone();
    assert!(now_used["last_used_at"].is_string(), "{now_used}");

    // Storage: only the SHA-256 of the whole key; the plaintext is nowhere in the database.
    let (kid, tenant) = (key_id.clone(), app.tenant.clone());
    let row = app
        .db(move |conn| switchboard_db::repo::api_keys::find(conn, &tenant, &kid))
        .await
        .expect("key row");
    assert_eq!(row.key_hash, sha256_hex(&key));
    assert!(row.last_used_at.is_some());
    let dump = app.dump_database();
    assert!(
        dump.contains(&row.key_hash) && dump.contains(&prefix),
        "the dump is not the database (hash or prefix missing)"
    );
    for secret in [&app.api_key, &key, &unused_key] {
        assert!(!dump.contains(secret.as_str()), "plaintext API key stored");
        assert!(!dump.contains(secret_tail(secret)));
    }

    // Revoke: 204, then the key is refused at once.
    let r = req(
        &app,
        Method::DELETE,
        &format!("/v1/api-keys/{key_id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = req_as(&app, &key, Method::GET, "/v1/accounts", None).await;
    problem(&r, 401, "unauthorized");
    let r = req(&app, Method::GET, "/v1/api-keys", None).await;
    let ids: Vec<&str> = r.json["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert!(!ids.contains(&key_id.as_str()), "revoked key still listed");
    assert_eq!(ids.len(), 2);
    let (kid, tenant) = (key_id.clone(), app.tenant.clone());
    let row = app
        .db(move |conn| switchboard_db::repo::api_keys::find(conn, &tenant, &kid))
        .await
        .expect("revoked key row kept for audit");
    assert!(row.revoked_at.is_some());
    // Revoking again, or an unknown key: 404.
    let r = req(
        &app,
        Method::DELETE,
        &format!("/v1/api-keys/{key_id}"),
        None,
    )
    .await;
    problem(&r, 404, "not_found");
    let r = req(&app, Method::DELETE, "/v1/api-keys/key_doesnotexist", None).await;
    problem(&r, 404, "not_found");
    // The other keys keep working.
    let r = req_as(&app, &unused_key, Method::GET, "/v1/api-keys", None).await;
    assert_eq!(r.status, StatusCode::OK);
    // A key name is required.
    let r = req(
        &app,
        Method::POST,
        "/v1/api-keys",
        Some(json!({"name": "  "})),
    )
    .await;
    problem(&r, 400, "invalid_request");
}

async fn authentication_failures(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let unknown_key = format!(
        "sbk_{}_{}",
        switchboard_core::random_token(16),
        switchboard_core::random_token(32)
    );
    let tampered = format!("{}x", app.api_key);
    let basic = "Basic dXNlcjpwYXNz".to_string();
    let no_scheme = app.api_key.clone();
    let bare = "Bearer".to_string();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing header", None),
        ("basic scheme", Some(basic)),
        ("no scheme", Some(no_scheme)),
        ("scheme only", Some(bare)),
        ("empty token", Some("Bearer  ".into())),
        ("not a key", Some("Bearer hello".into())),
        ("unknown key", Some(format!("Bearer {unknown_key}"))),
        ("tampered key", Some(format!("Bearer {tampered}"))),
    ];
    for path in ["/v1/accounts", "/v1/connectors", "/v1/api-keys"] {
        for (what, auth) in &cases {
            let r = send_raw(&app, Method::GET, path, auth.as_deref(), None, None).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{what} on {path}: {}",
                r.text
            );
            problem(&r, 401, "unauthorized");
            assert_eq!(
                r.headers
                    .get("www-authenticate")
                    .map(|v| v.to_str().unwrap()),
                Some("Bearer"),
                "{what}"
            );
        }
    }
    // A failed authentication creates nothing.
    let before = snapshot(&app).await;
    let r = send_raw(
        &app,
        Method::POST,
        "/v1/accounts",
        Some(&format!("Bearer {unknown_key}")),
        Some("application/json"),
        Some(br#"{"id":"nope","name":"Nope"}"#.to_vec()),
    )
    .await;
    problem(&r, 401, "unauthorized");
    assert_eq!(snapshot(&app).await, before);
    // The scheme is case-insensitive (RFC 9110): the real key works with "bearer".
    let r = send_raw(
        &app,
        Method::GET,
        "/v1/accounts",
        Some(&format!("bearer {}", app.api_key)),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

// ---------------------------------------------------------------------------------------------
// 2. Tenant isolation
// ---------------------------------------------------------------------------------------------

async fn tenant_isolation(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let a = app.api_key.clone();
    let (tenant_b, b) = app.new_tenant("Tenant B").await;
    assert_ne!(tenant_b, app.tenant);

    // Tenant A: an account with a static bearer install, a setup, an extra key.
    canvas_bearer_setup(&app, &distinctive("tok-a")).await;
    app.create_account("shared-name").await;
    let a_install = create_bearer_install(&app, &a, "shared-name").await;
    let a_ins = a_install["id"].as_str().unwrap().to_owned();
    let r = req(
        &app,
        Method::POST,
        "/v1/api-keys",
        Some(json!({"name": "a-extra"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let a_key_id = r.json["id"].as_str().unwrap().to_owned();
    let a_key = r.json["api_key"].as_str().unwrap().to_owned();

    // Tenant B names A's things: 404 every time, never 403, and nothing changes.
    let before = snapshot(&app).await;
    let probes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/v1/accounts/shared-name".into(), None),
        (Method::DELETE, "/v1/accounts/shared-name".into(), None),
        (
            Method::GET,
            "/v1/accounts/shared-name/installs".into(),
            None,
        ),
        (
            Method::POST,
            "/v1/accounts/shared-name/installs".into(),
            Some(json!({"connector": "canvas", "auth_type": "static_bearer"})),
        ),
        (
            Method::GET,
            format!("/v1/accounts/shared-name/installs/{a_ins}"),
            None,
        ),
        (
            Method::DELETE,
            format!("/v1/accounts/shared-name/installs/{a_ins}"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/accounts/shared-name/installs/{a_ins}/authorize"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/accounts/shared-name/installs/{a_ins}/methods/get_patient"),
            Some(json!({"params": {"id": "x"}})),
        ),
        (Method::GET, "/v1/connectors/canvas/setup".into(), None),
        (Method::DELETE, "/v1/connectors/canvas/setup".into(), None),
        (Method::DELETE, format!("/v1/api-keys/{a_key_id}"), None),
    ];
    for (m, path, body) in &probes {
        let r = req_as(&app, &b, m.clone(), path, body.clone()).await;
        assert_ne!(r.status, StatusCode::FORBIDDEN, "{m} {path}");
        problem(&r, 404, "not_found");
    }
    assert_eq!(
        snapshot(&app).await,
        before,
        "tenant B changed tenant A's data"
    );
    // A's things are intact.
    let r = req(
        &app,
        Method::GET,
        &format!("/v1/accounts/shared-name/installs/{a_ins}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = req_as(&app, &a_key, Method::GET, "/v1/accounts", None).await;
    assert_eq!(r.status, StatusCode::OK, "A's key was revoked by B");
    let r = req(&app, Method::GET, "/v1/connectors/canvas/setup", None).await;
    assert_eq!(r.status, StatusCode::OK);

    // Ids are per tenant: B may use the same account id; its install is invisible to A.
    let r = req_as(
        &app,
        &b,
        Method::POST,
        "/v1/accounts",
        Some(json!({"id": "shared-name", "name": "B's own"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = req_as(
        &app,
        &b,
        Method::POST,
        "/v1/accounts",
        Some(json!({"name": "B two"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let b_acc2 = r.json["id"].as_str().unwrap().to_owned();
    let r = req_as(
        &app,
        &b,
        Method::PUT,
        "/v1/connectors/canvas/setup",
        Some(json!({"settings": {"api_token": "tok-b", "fhir_base_url": "http://127.0.0.1:9/"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let b_install = create_bearer_install(&app, &b, "shared-name").await;
    let b_ins = b_install["id"].as_str().unwrap().to_owned();
    let r = req(
        &app,
        Method::GET,
        &format!("/v1/accounts/shared-name/installs/{b_ins}"),
        None,
    )
    .await;
    problem(&r, 404, "not_found");
    let r = req(&app, Method::GET, &format!("/v1/accounts/{b_acc2}"), None).await;
    problem(&r, 404, "not_found");

    // Lists are disjoint.
    let ids = |v: &Value, key: &str| -> BTreeSet<String> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let la = req(&app, Method::GET, "/v1/accounts", None).await;
    let lb = req_as(&app, &b, Method::GET, "/v1/accounts", None).await;
    assert_eq!(ids(&la.json, "accounts"), set(&["shared-name"]));
    assert_eq!(
        ids(&lb.json, "accounts"),
        set(&["shared-name", b_acc2.as_str()])
    );
    assert_eq!(
        la.json["accounts"][0]["name"], "Account shared-name",
        "A sees its own account"
    );
    let ia = req(&app, Method::GET, "/v1/accounts/shared-name/installs", None).await;
    let ib = req_as(
        &app,
        &b,
        Method::GET,
        "/v1/accounts/shared-name/installs",
        None,
    )
    .await;
    assert_eq!(ids(&ia.json, "installs"), set(&[a_ins.as_str()]));
    assert_eq!(ids(&ib.json, "installs"), set(&[b_ins.as_str()]));
    let ka = req(&app, Method::GET, "/v1/api-keys", None).await;
    let kb = req_as(&app, &b, Method::GET, "/v1/api-keys", None).await;
    let (ka, kb) = (ids(&ka.json, "api_keys"), ids(&kb.json, "api_keys"));
    assert_eq!(ka.len(), 2);
    assert_eq!(kb.len(), 1);
    assert!(ka.is_disjoint(&kb));
    // Each tenant sees its own setup values.
    let r = req_as(&app, &b, Method::GET, "/v1/connectors/canvas/setup", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["settings"]["api_token"], json!({"set": true}));

    // Deleting B's same-named account leaves A's alone.
    let r = req_as(&app, &b, Method::DELETE, "/v1/accounts/shared-name", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(install_row(&app, &b_ins).await.is_none());
    assert!(install_row(&app, &a_ins).await.is_some());
    let r = req(&app, Method::GET, "/v1/accounts/shared-name", None).await;
    assert_eq!(r.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// 3. Connector catalogue
// ---------------------------------------------------------------------------------------------

async fn connector_catalogue(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = req(&app, Method::GET, "/v1/connectors", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let list = r.json["connectors"].as_array().unwrap();
    let ids: Vec<&str> = list.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["canvas", "epic", "medplum"]);
    for c in list {
        let keys: BTreeSet<String> = c.as_object().unwrap().keys().cloned().collect();
        for k in ["id", "name", "version", "auth_types", "methods"] {
            assert!(keys.contains(k), "{k} missing in {c}");
        }
        assert!(c["name"].as_str().is_some_and(|s| !s.is_empty()));
        assert_eq!(c["version"], "1.0.0");
        let methods: Vec<(&str, &str)> = c["methods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["id"].as_str().unwrap(), m["name"].as_str().unwrap()))
            .collect();
        assert_eq!(
            methods,
            [
                ("get_patient", "Get Patient"),
                ("search_patients", "Search Patients")
            ],
            "{c}"
        );
        // The summary is a summary: no settings or templates.
        assert!(
            c.get("settings").is_none() && c.get("auth").is_none(),
            "{c}"
        );
    }
    let auth = |id: &str| list.iter().find(|c| c["id"] == id).unwrap()["auth_types"].clone();
    assert_eq!(auth("epic"), json!(["oauth2_authorization_code"]));
    assert_eq!(
        auth("canvas"),
        json!([
            "oauth2_authorization_code",
            "oauth2_client_credentials",
            "static_bearer"
        ])
    );
    assert_eq!(
        auth("medplum"),
        json!(["oauth2_authorization_code", "oauth2_client_credentials"])
    );
    assert_eq!(list[1]["name"], "Epic");

    // The full definition: settings fields and method parameter schemas.
    let r = req(&app, Method::GET, "/v1/connectors/epic", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let epic = &r.json;
    assert_eq!(epic["id"], "epic");
    let settings = epic["settings"].as_array().unwrap();
    let keys: Vec<&str> = settings
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["endpoint", "client_id", "client_secret", "scopes"]);
    let field = |k: &str| settings.iter().find(|s| s["key"] == k).unwrap();
    assert_eq!(field("endpoint")["type"], "url");
    assert_eq!(field("endpoint")["required"], true);
    assert_eq!(field("endpoint")["install_override"], true);
    assert!(field("endpoint")["label"].is_string());
    assert_eq!(field("client_secret")["secret"], true);
    assert_eq!(field("client_secret")["install_override"], false);
    assert!(field("client_secret").get("default").is_none());
    assert_eq!(field("client_id")["required"], true);
    let methods = epic["methods"].as_array().unwrap();
    let get = methods.iter().find(|m| m["id"] == "get_patient").unwrap();
    assert_eq!(get["verb"], "GET");
    let id_param = &get["params"][0];
    assert_eq!(id_param["name"], "id");
    assert_eq!(id_param["in"], "path");
    assert_eq!(id_param["required"], true);
    assert!(id_param["pattern"].is_string());
    let search = methods
        .iter()
        .find(|m| m["id"] == "search_patients")
        .unwrap();
    let params = search["params"].as_array().unwrap();
    assert!(params.len() >= 10, "{search}");
    for p in params {
        assert!(
            p["name"].is_string() && p["in"] == "query" && p["type"].is_string(),
            "{p}"
        );
        assert!(
            p["required"].is_boolean() && p["repeated"].is_boolean(),
            "{p}"
        );
    }
    let gender = params.iter().find(|p| p["name"] == "gender").unwrap();
    assert_eq!(
        gender["enum"],
        json!(["male", "female", "other", "unknown"])
    );
    let birthdate = params.iter().find(|p| p["name"] == "birthdate").unwrap();
    assert_eq!(birthdate["type"], "date");
    assert!(search["require_one_of"].is_array());
    let r = req(&app, Method::GET, "/v1/connectors/canvas", None).await;
    let count = r.json["methods"][1]["params"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "_count")
        .unwrap()
        .clone();
    assert_eq!(
        (count["minimum"].clone(), count["maximum"].clone()),
        (json!(1), json!(100))
    );

    // Unknown connectors.
    for (m, path) in [
        (Method::GET, "/v1/connectors/nope"),
        (Method::GET, "/v1/connectors/nope/setup"),
        (Method::DELETE, "/v1/connectors/nope/setup"),
    ] {
        let r = req(&app, m, path, None).await;
        problem(&r, 404, "unknown_connector");
    }
    let before = snapshot(&app).await;
    let r = req(
        &app,
        Method::PUT,
        "/v1/connectors/nope/setup",
        Some(json!({"settings": {"endpoint": "https://x.example/"}})),
    )
    .await;
    problem(&r, 404, "unknown_connector");
    assert_eq!(snapshot(&app).await, before);
}

// ---------------------------------------------------------------------------------------------
// 4. Connector setups
// ---------------------------------------------------------------------------------------------

async fn connector_setup_lifecycle(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let secret = distinctive("epic-secret");
    let r = req(&app, Method::GET, "/v1/connectors/epic/setup", None).await;
    problem(&r, 404, "not_found");

    let r = req(
        &app,
        Method::PUT,
        "/v1/connectors/epic/setup",
        Some(json!({"settings": {
            "endpoint": "https://x.example/FHIRProxy/api/FHIR/R4",
            "client_id": "epic-client-1",
            "client_secret": secret,
        }})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(!r.text.contains(&secret), "secret echoed");
    assert_eq!(r.json["connector"], "epic");
    let s = &r.json["settings"];
    assert_eq!(
        s["endpoint"], "https://x.example/FHIRProxy/",
        "normaliser applied"
    );
    assert_eq!(s["client_id"], "epic-client-1");
    assert_eq!(s["client_secret"], json!({"set": true}));

    let r = req(&app, Method::GET, "/v1/connectors/epic/setup", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(!r.text.contains(&secret), "secret shown");
    assert_eq!(
        r.json["settings"]["endpoint"],
        "https://x.example/FHIRProxy/"
    );
    assert_eq!(r.json["settings"]["client_id"], "epic-client-1");
    assert_eq!(r.json["settings"]["client_secret"], json!({"set": true}));

    // Storage: the normalised endpoint in clear, the secret sealed as {"enc": ...}.
    let tenant = app.tenant.clone();
    let row = app
        .db(move |conn| switchboard_db::repo::setups::find(conn, &tenant, "epic"))
        .await
        .expect("setup row");
    let stored: Value = serde_json::from_str(&row.settings).unwrap();
    assert_eq!(stored["endpoint"], "https://x.example/FHIRProxy/");
    assert!(stored["client_secret"]["enc"].is_string(), "{stored}");
    assert!(!row.settings.contains(&secret));

    // Invalid settings are rejected as a whole, listing the fields, and change nothing.
    let before = snapshot(&app).await;
    let r = req(
        &app,
        Method::PUT,
        "/v1/connectors/epic/setup",
        Some(json!({"settings": {
            "endpoint": "https://y.example/",
            "client_id": "other",
            "client_secret": "other-secret",
            "colour": "blue",
        }})),
    )
    .await;
    problem(&r, 422, "invalid_settings");
    assert_eq!(error_fields(&r), set(&["colour"]));
    assert!(!r.text.contains("other-secret"));
    for bad in [
        "not a url",
        "ftp://x.example/",
        "https://user:pw@x.example/",
        "",
    ] {
        let r = req(
            &app,
            Method::PUT,
            "/v1/connectors/epic/setup",
            Some(json!({"settings": {"endpoint": bad, "client_id": "c", "client_secret": "s"}})),
        )
        .await;
        problem(&r, 422, "invalid_settings");
        assert!(error_fields(&r).contains("endpoint"), "{bad}: {}", r.text);
    }
    let r = req(
        &app,
        Method::PUT,
        "/v1/connectors/epic/setup",
        Some(json!({"settings": {"endpoint": 42, "client_id": ["x"]}})),
    )
    .await;
    problem(&r, 422, "invalid_settings");
    assert_eq!(error_fields(&r), set(&["client_id", "endpoint"]));
    assert_eq!(
        snapshot(&app).await,
        before,
        "a rejected setup changed the database"
    );
    let r = req(&app, Method::GET, "/v1/connectors/epic/setup", None).await;
    assert_eq!(r.json["settings"]["client_id"], "epic-client-1");

    // Delete: 204, then 404, and the row is gone.
    let r = req(&app, Method::DELETE, "/v1/connectors/epic/setup", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(r.text.is_empty());
    let r = req(&app, Method::GET, "/v1/connectors/epic/setup", None).await;
    problem(&r, 404, "not_found");
    let r = req(&app, Method::DELETE, "/v1/connectors/epic/setup", None).await;
    problem(&r, 404, "not_found");
    let tenant = app.tenant.clone();
    let row = app
        .db(move |conn| switchboard_db::repo::setups::find(conn, &tenant, "epic"))
        .await;
    assert!(row.is_none());
}

/// The "done when" of the issue: no setup secret and no install token in plaintext at rest.
async fn secrets_sealed_at_rest(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let epic_secret = distinctive("epic-client-secret");
    let epic_client = distinctive("epic-client-id");
    let canvas_token = distinctive("canvas-api-token");
    let r = req(
        &app,
        Method::PUT,
        "/v1/connectors/epic/setup",
        Some(json!({"settings": {
            "endpoint": "http://127.0.0.1:9/",
            "client_id": epic_client,
            "client_secret": epic_secret,
        }})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    canvas_bearer_setup(&app, &canvas_token).await;
    app.create_account("acme").await;
    let bearer = create_bearer_install(&app, &app.api_key, "acme").await;
    assert_eq!(bearer["status"], "authorized");
    let r = req(
        &app,
        Method::POST,
        "/v1/accounts/acme/installs",
        Some(json!({"connector": "epic"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let epic_ins = r.json["id"].as_str().unwrap().to_owned();
    let bearer_ins = bearer["id"].as_str().unwrap().to_owned();

    // No API answer shows them.
    for path in [
        "/v1/connectors/epic/setup".to_string(),
        "/v1/connectors/canvas/setup".to_string(),
        "/v1/accounts/acme/installs".to_string(),
        format!("/v1/accounts/acme/installs/{bearer_ins}"),
        format!("/v1/accounts/acme/installs/{epic_ins}"),
    ] {
        let r = req(&app, Method::GET, &path, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
        assert!(
            !r.text.contains(&epic_secret) && !r.text.contains(&canvas_token),
            "{path}"
        );
    }

    // Every byte of the database: the non-secret client id is there in clear (so the dump is
    // real), the secret and the token are not.
    let dump = app.dump_database();
    assert!(
        dump.contains(&epic_client),
        "dump does not show the stored setup"
    );
    assert!(dump.contains(&bearer_ins), "dump does not show the install");
    assert!(
        !dump.contains(&epic_secret),
        "Epic client secret stored in plaintext"
    );
    assert!(
        !dump.contains(&canvas_token),
        "Canvas API token stored in plaintext"
    );

    // The install still resolves its token from the sealed setup (a call reaches the FHIR
    // base: nothing listens on port 9, so the failure is an upstream one, not a settings one).
    let r = req(
        &app,
        Method::POST,
        &format!("/v1/accounts/acme/installs/{bearer_ins}/methods/get_patient"),
        Some(json!({"params": {"id": "abc"}})),
    )
    .await;
    assert!(r.status.is_server_error(), "{}", r.text);
    assert!(
        ["upstream_unavailable", "upstream_error", "upstream_timeout"]
            .contains(&r.json["code"].as_str().unwrap_or("")),
        "{}",
        r.text
    );
    assert!(!r.text.contains(&canvas_token));
}

// ---------------------------------------------------------------------------------------------
// 5. Accounts
// ---------------------------------------------------------------------------------------------

async fn accounts_lifecycle(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = req(
        &app,
        Method::POST,
        "/v1/accounts",
        Some(json!({"id": "acme-clinic", "name": "Acme Clinic"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["id"], "acme-clinic");
    assert_eq!(r.json["name"], "Acme Clinic");
    assert!(r.json["created_at"].is_string());

    let r = req(
        &app,
        Method::POST,
        "/v1/accounts",
        Some(json!({"name": "Generated"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let generated = r.json["id"].as_str().unwrap().to_owned();
    assert!(
        generated.starts_with("acc_") && generated.len() > 10,
        "{generated}"
    );
    assert!(switchboard_core::valid_external_id(&generated));

    // Duplicate id: 409, the original untouched.
    let r = req(
        &app,
        Method::POST,
        "/v1/accounts",
        Some(json!({"id": "acme-clinic", "name": "Impostor"})),
    )
    .await;
    problem(&r, 409, "already_exists");
    let r = req(&app, Method::GET, "/v1/accounts/acme-clinic", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["name"], "Acme Clinic");
    assert_eq!(r.json["id"], "acme-clinic");

    // The longest allowed id and every allowed character class.
    let longest = format!("A.b_c-9{}", "x".repeat(57));
    assert_eq!(longest.len(), 64);
    let r = req(
        &app,
        Method::POST,
        "/v1/accounts",
        Some(json!({"id": longest, "name": "L"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    let r = req(&app, Method::GET, "/v1/accounts", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let ids: BTreeSet<String> = r.json["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        set(&["acme-clinic", generated.as_str(), longest.as_str()])
    );

    // Invalid ids and names on create: 400 invalid_request, nothing created.
    let before = snapshot(&app).await;
    let too_long = "a".repeat(65);
    for bad in ["a b", "../x", too_long.as_str(), "", ".hidden", "é", "a/b"] {
        let r = req(
            &app,
            Method::POST,
            "/v1/accounts",
            Some(json!({"id": bad, "name": "X"})),
        )
        .await;
        problem(&r, 400, "invalid_request");
    }
    for bad in [
        json!(""),
        json!("   "),
        json!("x".repeat(201)),
        json!("a\nb"),
    ] {
        let r = req(
            &app,
            Method::POST,
            "/v1/accounts",
            Some(json!({"id": "fine", "name": bad})),
        )
        .await;
        problem(&r, 400, "invalid_request");
    }
    let r = req(
        &app,
        Method::POST,
        "/v1/accounts",
        Some(json!({"id": "fine"})),
    )
    .await;
    problem(&r, 400, "invalid_request");
    assert_eq!(snapshot(&app).await, before);

    // Delete: its installs go with it (and their rows).
    canvas_bearer_setup(&app, &distinctive("tok")).await;
    let ins = create_bearer_install(&app, &app.api_key, "acme-clinic").await;
    let ins_id = ins["id"].as_str().unwrap().to_owned();
    let r = req(
        &app,
        Method::POST,
        "/v1/accounts/acme-clinic/installs",
        Some(json!({"connector": "canvas", "auth_type": "static_bearer"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let ins2_id = r.json["id"].as_str().unwrap().to_owned();
    let other = create_bearer_install(&app, &app.api_key, &generated).await;
    let other_id = other["id"].as_str().unwrap().to_owned();

    let r = req(&app, Method::DELETE, "/v1/accounts/acme-clinic", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(r.text.is_empty());
    let r = req(&app, Method::GET, "/v1/accounts/acme-clinic", None).await;
    problem(&r, 404, "not_found");
    let r = req(&app, Method::GET, "/v1/accounts/acme-clinic/installs", None).await;
    problem(&r, 404, "not_found");
    let r = req(&app, Method::DELETE, "/v1/accounts/acme-clinic", None).await;
    problem(&r, 404, "not_found");
    assert!(
        install_row(&app, &ins_id).await.is_none(),
        "install row survived"
    );
    assert!(
        install_row(&app, &ins2_id).await.is_none(),
        "install row survived"
    );
    assert!(
        install_row(&app, &other_id).await.is_some(),
        "another account's install went"
    );
    let tenant = app.tenant.clone();
    let (acc_row, left) = app
        .db(move |conn| {
            Ok((
                switchboard_db::repo::accounts::find(conn, &tenant, "acme-clinic")?,
                switchboard_db::repo::installs::list(conn, &tenant, "acme-clinic")?,
            ))
        })
        .await;
    assert!(acc_row.is_none() && left.is_empty());
    // The id can be taken again, with no installs.
    app.create_account("acme-clinic").await;
    let r = req(&app, Method::GET, "/v1/accounts/acme-clinic/installs", None).await;
    assert_eq!(r.json["installs"], json!([]));
}

async fn invalid_ids_in_paths(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_account("ok").await;
    let too_long = "a".repeat(65);
    let before = snapshot(&app).await;
    for bad in ["a%20b", "..%2Fx", too_long.as_str(), ".x", "%C3%A9"] {
        let cases: Vec<(Method, String, Option<Value>)> = vec![
            (Method::GET, format!("/v1/accounts/{bad}"), None),
            (Method::DELETE, format!("/v1/accounts/{bad}"), None),
            (Method::GET, format!("/v1/accounts/{bad}/installs"), None),
            (
                Method::POST,
                format!("/v1/accounts/{bad}/installs"),
                Some(json!({"connector": "canvas"})),
            ),
            (Method::GET, format!("/v1/accounts/ok/installs/{bad}"), None),
            (
                Method::DELETE,
                format!("/v1/accounts/ok/installs/{bad}"),
                None,
            ),
            (Method::DELETE, format!("/v1/api-keys/{bad}"), None),
            (Method::GET, format!("/v1/connectors/{bad}"), None),
            (Method::GET, format!("/v1/connectors/{bad}/setup"), None),
        ];
        for (m, path, body) in cases {
            let r = req(&app, m.clone(), &path, body).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{m} {path}: {}", r.text);
            problem(&r, 400, "invalid_id");
        }
    }
    assert_eq!(snapshot(&app).await, before);
    // Unknown but well-formed ids are 404, not 400.
    let r = req(&app, Method::GET, "/v1/accounts/ok/installs/ins_nope", None).await;
    problem(&r, 404, "not_found");
    let r = req(&app, Method::GET, "/v1/accounts/nope", None).await;
    problem(&r, 404, "not_found");
}

// ---------------------------------------------------------------------------------------------
// 6. Installs
// ---------------------------------------------------------------------------------------------

async fn static_bearer_install_lifecycle(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = distinctive("canvas-token");
    canvas_bearer_setup(&app, &token).await;
    app.create_account("clinic").await;

    let r = req(
        &app,
        Method::POST,
        "/v1/accounts/clinic/installs",
        Some(json!({
            "connector": "canvas",
            "auth_type": "static_bearer",
            "settings": {"fhir_base_url": "http://127.0.0.1:9/fumage-clinic"},
        })),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(!r.text.contains(&token), "token in the create response");
    let ins = r.json.clone();
    let id = ins["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ins_"), "{id}");
    assert_eq!(ins["connector"], "canvas");
    assert_eq!(ins["status"], "authorized");
    assert_eq!(ins["auth_type"], "static_bearer");
    assert!(ins.get("authorize_url").is_none_or(Value::is_null), "{ins}");
    // The override is normalised (trailing slash) and shown; the token is not an override.
    assert_eq!(
        ins["settings"],
        json!({"fhir_base_url": "http://127.0.0.1:9/fumage-clinic/"})
    );

    let r = req(
        &app,
        Method::GET,
        &format!("/v1/accounts/clinic/installs/{id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(!r.text.contains(&token));
    for k in [
        "id",
        "connector",
        "status",
        "scopes",
        "expires_at",
        "context",
    ] {
        assert!(
            r.json.as_object().unwrap().contains_key(k),
            "{k} missing: {}",
            r.text
        );
    }
    assert_eq!(r.json["id"], id.as_str());
    assert_eq!(r.json["status"], "authorized");
    for k in ["access_token", "refresh_token", "token", "api_token"] {
        assert!(r.json.get(k).is_none(), "{k} shown: {}", r.text);
    }

    let r = req(&app, Method::GET, "/v1/accounts/clinic/installs", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let list = r.json["installs"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["status"], "authorized");
    assert!(!r.text.contains(&token));

    let row = install_row(&app, &id).await.expect("install row");
    assert_eq!(row.status, "authorized");
    assert_eq!(row.account_id, "clinic");
    assert_eq!(row.tenant_id, app.tenant);

    let r = req(
        &app,
        Method::DELETE,
        &format!("/v1/accounts/clinic/installs/{id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(
        install_row(&app, &id).await.is_none(),
        "row survived the delete"
    );
    let r = req(
        &app,
        Method::GET,
        &format!("/v1/accounts/clinic/installs/{id}"),
        None,
    )
    .await;
    problem(&r, 404, "not_found");
    let r = req(
        &app,
        Method::DELETE,
        &format!("/v1/accounts/clinic/installs/{id}"),
        None,
    )
    .await;
    problem(&r, 404, "not_found");
    let r = req(&app, Method::GET, "/v1/accounts/clinic/installs", None).await;
    assert_eq!(r.json["installs"], json!([]));
}

async fn auth_code_install_starts_authorization(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = req(
        &app,
        Method::PUT,
        "/v1/connectors/epic/setup",
        Some(json!({"settings": {
            "endpoint": "http://127.0.0.1:9/interconnect/",
            "client_id": "epic-app",
            "client_secret": "s3cret-value",
        }})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.create_account("hospital").await;

    let r = req(
        &app,
        Method::POST,
        "/v1/accounts/hospital/installs",
        Some(json!({"connector": "epic", "return_url": "https://console.example/done"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["status"], "pending_authorization");
    assert_eq!(r.json["connector"], "epic");
    assert!(!r.text.contains("s3cret-value"));
    let id = r.json["id"].as_str().unwrap().to_owned();
    let url = url::Url::parse(r.json["authorize_url"].as_str().expect("authorize_url")).unwrap();
    assert_eq!(
        format!("{}://{}{}", url.scheme(), url.authority(), url.path()),
        "http://127.0.0.1:9/interconnect/oauth2/authorize"
    );
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "epic-app");
    assert_eq!(
        q["redirect_uri"],
        format!("{}/connector/callback", app.base)
    );
    assert_eq!(q["aud"], "http://127.0.0.1:9/interconnect/api/FHIR/R4/");
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(
        q["state"].len() >= 32 && q["code_challenge"].len() >= 43,
        "{url}"
    );
    assert!(!q.contains_key("client_secret"));
    assert!(q["scope"].contains("user/Patient.read"));

    // The state is stored hashed, never in clear.
    assert_eq!(oauth_states_of(&app, &id).await, 1);
    let dump = app.dump_database();
    assert!(
        !dump.contains(q["state"].as_str()),
        "state stored in plaintext"
    );
    let row = install_row(&app, &id).await.unwrap();
    assert_eq!(row.status, "pending_authorization");
    assert_eq!(
        row.return_url.as_deref(),
        Some("https://console.example/done")
    );
    assert!(row.access_token.is_none());

    let r = req(
        &app,
        Method::GET,
        &format!("/v1/accounts/hospital/installs/{id}"),
        None,
    )
    .await;
    assert_eq!(r.json["status"], "pending_authorization");
    assert!(r.json["expires_at"].is_null() && r.json["scopes"].is_null());

    // A per-install endpoint override (pasted from the directory) moves the authorize URL.
    let r = req(
        &app,
        Method::POST,
        "/v1/accounts/hospital/installs",
        Some(json!({"connector": "epic", "settings": {"endpoint": "http://127.0.0.1:9/Org2/API/FHIR/R4/"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["settings"]["endpoint"], "http://127.0.0.1:9/Org2/");
    let url2 = r.json["authorize_url"].as_str().unwrap();
    assert!(
        url2.starts_with("http://127.0.0.1:9/Org2/oauth2/authorize?"),
        "{url2}"
    );

    // Deleting the install drops its pending authorization.
    let r = req(
        &app,
        Method::DELETE,
        &format!("/v1/accounts/hospital/installs/{id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(oauth_states_of(&app, &id).await, 0);
    assert!(install_row(&app, &id).await.is_none());
}

async fn install_validation(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_account("clinic").await;
    let path = "/v1/accounts/clinic/installs";

    // Missing required settings (no setup yet): 422 listing each of them.
    let before = snapshot(&app).await;
    let r = req(&app, Method::POST, path, Some(json!({"connector": "epic"}))).await;
    problem(&r, 422, "invalid_settings");
    assert_eq!(error_fields(&r), set(&["client_id", "client_secret"]));
    let r = req(
        &app,
        Method::POST,
        path,
        Some(json!({"connector": "canvas", "auth_type": "static_bearer"})),
    )
    .await;
    problem(&r, 422, "invalid_settings");
    assert_eq!(error_fields(&r), set(&["api_token", "fhir_base_url"]));
    let r = req(
        &app,
        Method::POST,
        path,
        Some(json!({"connector": "canvas", "auth_type": "static_bearer", "settings": {"fhir_base_url": "http://127.0.0.1:9/"}})),
    )
    .await;
    problem(&r, 422, "invalid_settings");
    assert_eq!(error_fields(&r), set(&["api_token"]));
    assert_eq!(snapshot(&app).await, before);

    let r = req(
        &app,
        Method::PUT,
        "/v1/connectors/epic/setup",
        Some(json!({"settings": {"endpoint": "http://127.0.0.1:9/", "client_id": "c", "client_secret": "s"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    canvas_bearer_setup(&app, "tok").await;
    let before = snapshot(&app).await;

    let cases: Vec<(Value, u16, &str, Option<BTreeSet<String>>)> = vec![
        (json!({"connector": "nope"}), 404, "unknown_connector", None),
        (
            json!({"connector": "epic", "auth_type": "static_bearer"}),
            422,
            "unsupported_auth_type",
            None,
        ),
        (
            json!({"connector": "epic", "auth_type": "oauth2_client_credentials"}),
            422,
            "unsupported_auth_type",
            None,
        ),
        (
            json!({"connector": "canvas", "auth_type": "magic"}),
            422,
            "unsupported_auth_type",
            None,
        ),
        // client_id and client_secret belong to the setup.
        (
            json!({"connector": "canvas", "auth_type": "static_bearer", "settings": {"client_secret": "override-secret"}}),
            422,
            "invalid_settings",
            Some(set(&["client_secret"])),
        ),
        (
            json!({"connector": "epic", "settings": {"client_secret": "x", "client_id": "y"}}),
            422,
            "invalid_settings",
            Some(set(&["client_id", "client_secret"])),
        ),
        (
            json!({"connector": "epic", "settings": {"endpoint": "not a url", "colour": "x"}}),
            422,
            "invalid_settings",
            Some(set(&["colour", "endpoint"])),
        ),
        (
            json!({"connector": "epic", "return_url": "https://evil.example/steal"}),
            400,
            "invalid_return_url",
            None,
        ),
        // A look-alike host is not the allowed prefix.
        (
            json!({"connector": "epic", "return_url": "https://console.example.evil.com/"}),
            400,
            "invalid_return_url",
            None,
        ),
        (
            json!({"connector": "epic", "return_url": "javascript:alert(1)"}),
            400,
            "invalid_return_url",
            None,
        ),
        (
            json!({"connector": "epic", "return_url": "https://partner.example/app/done"}),
            400,
            "invalid_return_url",
            None,
        ),
    ];
    for (body, status, code, fields) in &cases {
        let r = req(&app, Method::POST, path, Some(body.clone())).await;
        problem(&r, *status, code);
        if let Some(f) = fields {
            assert_eq!(&error_fields(&r), f, "{body}");
        }
        assert!(!r.text.contains("override-tok"));
    }
    assert_eq!(
        snapshot(&app).await,
        before,
        "a rejected install changed the database"
    );
    let r = req(&app, Method::GET, "/v1/accounts/clinic/installs", None).await;
    assert_eq!(r.json["installs"], json!([]));

    // A tenant-level prefix admits the URL; an invalid prefix is refused.
    let r = req(
        &app,
        Method::PATCH,
        "/v1/tenant",
        Some(json!({"allowed_return_urls": ["not a url"]})),
    )
    .await;
    problem(&r, 400, "invalid_return_url");
    let r = req(
        &app,
        Method::PATCH,
        "/v1/tenant",
        Some(json!({"allowed_return_urls": ["https://partner.example/app/"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.json["allowed_return_urls"],
        json!(["https://partner.example/app/"])
    );
    let r = req(&app, Method::GET, "/v1/tenant", None).await;
    assert_eq!(
        r.json["allowed_return_urls"],
        json!(["https://partner.example/app/"])
    );
    let r = req(
        &app,
        Method::POST,
        path,
        Some(json!({"connector": "epic", "return_url": "https://partner.example/app/done"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["return_url"], "https://partner.example/app/done");
    // Still only on the prefix; the global prefix keeps working too.
    let r = req(
        &app,
        Method::POST,
        path,
        Some(json!({"connector": "epic", "return_url": "https://partner.example/other"})),
    )
    .await;
    problem(&r, 400, "invalid_return_url");
    let r = req(
        &app,
        Method::POST,
        path,
        Some(json!({"connector": "epic", "return_url": "https://console.example/x"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // Another tenant does not get this tenant's prefixes.
    let (_, b) = app.new_tenant("B").await;
    let r = req_as(
        &app,
        &b,
        Method::POST,
        "/v1/accounts",
        Some(json!({"id": "b1", "name": "B1"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = req_as(
        &app,
        &b,
        Method::PUT,
        "/v1/connectors/epic/setup",
        Some(json!({"settings": {"endpoint": "http://127.0.0.1:9/", "client_id": "c", "client_secret": "s"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = req_as(
        &app,
        &b,
        Method::POST,
        "/v1/accounts/b1/installs",
        Some(json!({"connector": "epic", "return_url": "https://partner.example/app/done"})),
    )
    .await;
    problem(&r, 400, "invalid_return_url");
    // An unknown account: 404.
    let r = req(
        &app,
        Method::POST,
        "/v1/accounts/ghost/installs",
        Some(json!({"connector": "epic"})),
    )
    .await;
    problem(&r, 404, "not_found");
}

// ---------------------------------------------------------------------------------------------
// 7. Bad input changes nothing
// ---------------------------------------------------------------------------------------------

async fn bad_input_changes_nothing(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| s.server.max_body_bytes = 1024).await;
    app.create_account("clinic").await;
    canvas_bearer_setup(&app, "tok").await;
    let auth = format!("Bearer {}", app.api_key);

    // (verb, path, a valid body, the same body with an unknown field)
    let endpoints: Vec<(Method, &str, Value, Value)> = vec![
        (
            Method::POST,
            "/v1/accounts",
            json!({"id": "new-acc", "name": "New"}),
            json!({"id": "new-acc", "name": "New", "colour": "x"}),
        ),
        (
            Method::POST,
            "/v1/api-keys",
            json!({"name": "k"}),
            json!({"name": "k", "scope": "admin"}),
        ),
        (
            Method::PUT,
            "/v1/connectors/canvas/setup",
            json!({"settings": {"api_token": "t2", "fhir_base_url": "http://127.0.0.1:9/x/"}}),
            json!({"settings": {"api_token": "t2"}, "tenant": "other"}),
        ),
        (
            Method::POST,
            "/v1/accounts/clinic/installs",
            json!({"connector": "canvas", "auth_type": "static_bearer"}),
            json!({"connector": "canvas", "auth_type": "static_bearer", "status": "authorized"}),
        ),
        (
            Method::PATCH,
            "/v1/tenant",
            json!({"allowed_return_urls": ["https://x.example/"]}),
            json!({"allowed_return_urls": ["https://x.example/"], "name": "renamed"}),
        ),
    ];
    for (m, path, valid, unknown_field) in &endpoints {
        let valid_text = valid.to_string();
        // Padding with whitespace keeps the JSON valid: only the size is wrong.
        let oversize = format!(
            "{}{}",
            &valid_text[..valid_text.len() - 1],
            " ".repeat(1100) + "}"
        );
        assert!(serde_json::from_str::<Value>(&oversize).is_ok());
        let malformed = valid_text[..valid_text.len() - 2].to_string();
        let cases: Vec<(&str, Option<&str>, String, u16, &str)> = vec![
            (
                "malformed JSON",
                Some("application/json"),
                malformed,
                400,
                "invalid_request",
            ),
            (
                "not an object",
                Some("application/json"),
                "[1,2]".into(),
                400,
                "invalid_request",
            ),
            (
                "empty body",
                Some("application/json"),
                String::new(),
                400,
                "invalid_request",
            ),
            (
                "unknown field",
                Some("application/json"),
                unknown_field.to_string(),
                400,
                "invalid_request",
            ),
            (
                "oversize",
                Some("application/json"),
                oversize,
                413,
                "payload_too_large",
            ),
            (
                "text/plain",
                Some("text/plain"),
                valid_text.clone(),
                415,
                "unsupported_media_type",
            ),
            (
                "form",
                Some("application/x-www-form-urlencoded"),
                valid_text.clone(),
                415,
                "unsupported_media_type",
            ),
            (
                "no content type",
                None,
                valid_text.clone(),
                415,
                "unsupported_media_type",
            ),
        ];
        for (what, ct, body, status, code) in cases {
            let before = snapshot(&app).await;
            let r = send_raw(
                &app,
                m.clone(),
                path,
                Some(&auth),
                ct,
                Some(body.into_bytes()),
            )
            .await;
            assert_eq!(
                r.status.as_u16(),
                status,
                "{what} on {m} {path}: {}",
                r.text
            );
            problem(&r, status, code);
            assert_eq!(
                snapshot(&app).await,
                before,
                "{what} on {m} {path} changed the database"
            );
        }
        // Control: the valid body is accepted (so the cases above failed for their reason).
        let r = send_raw(
            &app,
            m.clone(),
            path,
            Some(&auth),
            Some("application/json"),
            Some(valid_text.clone().into_bytes()),
        )
        .await;
        assert!(
            r.status.is_success(),
            "valid body refused on {m} {path}: {}",
            r.text
        );
    }
    // A body of the wrong shape is refused without echoing its values (a console pasting a
    // secret into the wrong field must not get it back in an error body it may log).
    let leak = distinctive("pasted-secret");
    for (m, path, body) in [
        (
            Method::PUT,
            "/v1/connectors/canvas/setup",
            json!({"settings": leak}),
        ),
        (
            Method::POST,
            "/v1/accounts/clinic/installs",
            json!({"connector": "canvas", "settings": leak}),
        ),
        (
            Method::POST,
            "/v1/accounts/clinic/installs",
            json!({"connector": ["canvas", leak]}),
        ),
        (Method::POST, "/v1/api-keys", json!({"name": {"k": leak}})),
        (
            Method::POST,
            "/v1/accounts",
            json!({"id": "x", "name": ["a", leak]}),
        ),
        (
            Method::PATCH,
            "/v1/tenant",
            json!({"allowed_return_urls": leak}),
        ),
        (
            Method::PUT,
            "/v1/connectors/canvas/setup",
            json!({"settings": {}, "secret": leak}),
        ),
        (
            Method::PUT,
            "/v1/connectors/canvas/setup",
            json!({"settings": format!("with \"quotes\" {leak}")}),
        ),
    ] {
        let before = snapshot(&app).await;
        let r = req(&app, m.clone(), path, Some(body.clone())).await;
        problem(&r, 400, "invalid_request");
        assert!(
            !r.text.contains(&leak),
            "{m} {path} echoes a value: {}",
            r.text
        );
        assert_eq!(snapshot(&app).await, before);
    }

    // A body exactly at the limit is accepted.
    let base = json!({"id": "at-limit", "name": "L"}).to_string();
    let at_limit = format!(
        "{}{}}}",
        &base[..base.len() - 1],
        " ".repeat(1024 - base.len())
    );
    assert_eq!(at_limit.len(), 1024);
    let r = send_raw(
        &app,
        Method::POST,
        "/v1/accounts",
        Some(&auth),
        Some("application/json"),
        Some(at_limit.into_bytes()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    // Unknown routes and verbs are problems too.
    let r = req(&app, Method::GET, "/v1/nope", None).await;
    problem(&r, 404, "not_found");
    // A known route with a verb it does not take: 405 naming the verbs it does take, before
    // any authentication or body handling, and nothing changes.
    let before = snapshot(&app).await;
    for (m, path, allowed) in [
        (Method::PUT, "/v1/accounts", set(&["GET", "POST"])),
        (
            Method::PATCH,
            "/v1/accounts/clinic",
            set(&["DELETE", "GET"]),
        ),
        (
            Method::POST,
            "/v1/connectors/epic/setup",
            set(&["DELETE", "GET", "PUT"]),
        ),
        (Method::DELETE, "/v1/tenant", set(&["GET", "PATCH"])),
        (Method::POST, "/healthz", set(&["GET"])),
    ] {
        let r = req(&app, m.clone(), path, Some(json!({"id": "x", "name": "x"}))).await;
        problem(&r, 405, "method_not_allowed");
        let allow: BTreeSet<String> = r
            .headers
            .get("allow")
            .unwrap_or_else(|| panic!("405 without Allow on {m} {path}"))
            .to_str()
            .unwrap()
            .split(',')
            .map(|v| v.trim().to_owned())
            .collect();
        assert_eq!(allow, allowed, "{m} {path}");
    }
    assert_eq!(snapshot(&app).await, before);
    let r = req(&app, Method::PUT, "/v1/accounts/clinic/nothing-here", None).await;
    problem(&r, 404, "not_found");

    // A body without Content-Length that grows past the limit is cut off too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b' '; 200])).collect();
    let r = app
        .http
        .post(app.url("/v1/accounts"))
        .bearer_auth(&app.api_key)
        .header(CONTENT_TYPE, "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let ct = r.headers().get(CONTENT_TYPE).cloned();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(ct.unwrap(), "application/problem+json");
    assert_eq!(body["code"], "payload_too_large");
    assert_eq!(snapshot(&app).await, before);
}

// ---------------------------------------------------------------------------------------------
// 8. Operational endpoints
// ---------------------------------------------------------------------------------------------

/// Every route of API.md (verb, path template).
const API_MD_ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/connectors"),
    ("get", "/v1/connectors/{connector}"),
    ("put", "/v1/connectors/{connector}/setup"),
    ("get", "/v1/connectors/{connector}/setup"),
    ("delete", "/v1/connectors/{connector}/setup"),
    ("post", "/v1/api-keys"),
    ("get", "/v1/api-keys"),
    ("delete", "/v1/api-keys/{id}"),
    ("post", "/v1/accounts"),
    ("get", "/v1/accounts"),
    ("get", "/v1/accounts/{account}"),
    ("delete", "/v1/accounts/{account}"),
    ("post", "/v1/accounts/{account}/installs"),
    ("get", "/v1/accounts/{account}/installs"),
    ("get", "/v1/accounts/{account}/installs/{install}"),
    (
        "post",
        "/v1/accounts/{account}/installs/{install}/authorize",
    ),
    ("delete", "/v1/accounts/{account}/installs/{install}"),
    (
        "post",
        "/v1/accounts/{account}/installs/{install}/methods/{method}",
    ),
    ("get", "/connector/callback"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

async fn operational_endpoints(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for path in ["/healthz", "/readyz"] {
        let r = send_raw(&app, Method::GET, path, None, None, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
    }

    // Traffic with ids and secrets in paths and headers.
    let token = distinctive("metrics-token");
    canvas_bearer_setup(&app, &token).await;
    app.create_account("metrics-probe-account").await;
    let ins = create_bearer_install(&app, &app.api_key, "metrics-probe-account").await;
    let ins_id = ins["id"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        let r = req(
            &app,
            Method::GET,
            "/v1/accounts/metrics-probe-account",
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = req(
        &app,
        Method::GET,
        &format!("/v1/accounts/metrics-probe-account/installs/{ins_id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = req(
        &app,
        Method::GET,
        "/no-such-route/unmatched-secret-segment",
        None,
    )
    .await;
    problem(&r, 404, "not_found");
    let r = send_raw(
        &app,
        Method::GET,
        "/v1/accounts",
        Some("Bearer sbk_wrong_key"),
        None,
        None,
    )
    .await;
    problem(&r, 401, "unauthorized");

    let r = send_raw(&app, Method::GET, "/metrics", None, None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.content_type().starts_with("text/plain"),
        "{}",
        r.content_type()
    );
    let text = &r.text;
    assert!(text.contains("switchboard_http_requests_total"), "{text}");
    let series = |route: &str, method: &str, status: u16| -> Option<u64> {
        let prefix = format!(
            "switchboard_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().parse().unwrap())
    };
    assert_eq!(
        series("/v1/accounts/{account}", "GET", 200),
        Some(2),
        "{text}"
    );
    assert_eq!(
        series("/v1/accounts/{account}/installs/{install}", "GET", 200),
        Some(1),
        "{text}"
    );
    assert!(series("/v1/accounts", "GET", 401).is_some(), "{text}");
    for secret in [
        "metrics-probe-account",
        ins_id.as_str(),
        app.tenant.as_str(),
        app.api_key.as_str(),
        token.as_str(),
        "unmatched-secret-segment",
        "sbk_",
    ] {
        assert!(!text.contains(secret), "metrics expose `{secret}`:\n{text}");
    }
    // Every label value is a route template, a method or a status.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let labels = line
            .split_once('{')
            .and_then(|(_, rest)| rest.rsplit_once('}'))
            .map(|(l, _)| l)
            .unwrap_or_else(|| panic!("unlabelled series: {line}"));
        for pair in labels.split("\",") {
            let (k, v) = pair.split_once("=\"").unwrap();
            let v = v.trim_end_matches('"');
            match k {
                "route" => assert!(
                    v == "unmatched"
                        || API_MD_ROUTES.iter().any(|(_, p)| *p == v)
                        || v == "/v1/tenant",
                    "route label `{v}` is not a route template"
                ),
                "method" => {
                    assert!(["GET", "POST", "PUT", "PATCH", "DELETE", "OTHER"].contains(&v))
                }
                "status" => assert!(v.parse::<u16>().is_ok()),
                other => panic!("unexpected label {other} in {line}"),
            }
        }
    }

    // The OpenAPI document covers every route of API.md.
    let r = send_raw(&app, Method::GET, "/openapi.json", None, None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.content_type().starts_with("application/json"));
    let doc = &r.json;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    for (verb, path) in API_MD_ROUTES {
        let op = &doc["paths"][path][verb];
        assert!(op.is_object(), "{verb} {path} missing from /openapi.json");
        // Every path template parameter is declared.
        for seg in path.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let declared = op["parameters"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["name"] == name && p["in"] == "path"));
                assert!(
                    declared,
                    "{verb} {path}: path parameter {name} not declared"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Every error code met is in the table
// ---------------------------------------------------------------------------------------------

/// Hits one case of every client error of the foundation and checks that each `code` is in
/// `switchboard_core::ErrorCode::ALL` with the table's status and title (via `problem`).
async fn error_codes_come_from_the_table(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| s.server.max_body_bytes = 512).await;
    app.create_account("acc").await;
    let auth = format!("Bearer {}", app.api_key);
    let mut seen = BTreeSet::new();
    let mut check = |r: Resp, status: u16, code: &'static str| {
        problem(&r, status, code);
        seen.insert(code);
    };
    check(
        send_raw(&app, Method::GET, "/v1/accounts", None, None, None).await,
        401,
        "unauthorized",
    );
    check(
        req(&app, Method::GET, "/v1/accounts/none", None).await,
        404,
        "not_found",
    );
    check(
        req(&app, Method::GET, "/v1/connectors/none", None).await,
        404,
        "unknown_connector",
    );
    check(
        req(&app, Method::GET, "/v1/accounts/a%20b", None).await,
        400,
        "invalid_id",
    );
    check(
        req(
            &app,
            Method::POST,
            "/v1/accounts",
            Some(json!({"id": "a b", "name": "x"})),
        )
        .await,
        400,
        "invalid_request",
    );
    check(
        send_raw(
            &app,
            Method::POST,
            "/v1/accounts",
            Some(&auth),
            Some("application/json"),
            Some(vec![b' '; 600]),
        )
        .await,
        413,
        "payload_too_large",
    );
    check(
        send_raw(
            &app,
            Method::POST,
            "/v1/accounts",
            Some(&auth),
            Some("text/plain"),
            Some(b"{}".to_vec()),
        )
        .await,
        415,
        "unsupported_media_type",
    );
    check(
        req(
            &app,
            Method::POST,
            "/v1/accounts",
            Some(json!({"id": "acc", "name": "x"})),
        )
        .await,
        409,
        "already_exists",
    );
    check(
        req(
            &app,
            Method::PUT,
            "/v1/connectors/epic/setup",
            Some(json!({"settings": {"x": "y"}})),
        )
        .await,
        422,
        "invalid_settings",
    );
    check(
        req(
            &app,
            Method::POST,
            "/v1/accounts/acc/installs",
            Some(json!({"connector": "epic", "auth_type": "static_bearer"})),
        )
        .await,
        422,
        "unsupported_auth_type",
    );
    check(
        req(
            &app,
            Method::POST,
            "/v1/accounts/acc/installs",
            Some(json!({"connector": "epic", "return_url": "https://elsewhere.example/"})),
        )
        .await,
        400,
        "invalid_return_url",
    );
    assert_eq!(seen.len(), 11);
    let table: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.code()).collect();
    assert!(
        seen.iter().all(|c| table.contains(c)),
        "{seen:?} vs {table:?}"
    );
}

crate::both_backends! {
    api_keys_create_list_revoke => api_keys_lifecycle;
    authentication_failures_are_401 => authentication_failures;
    tenants_are_isolated => tenant_isolation;
    connector_catalogue_lists_and_describes => connector_catalogue;
    connector_setup_masks_normalises_and_deletes => connector_setup_lifecycle;
    secrets_are_sealed_at_rest => secrets_sealed_at_rest;
    accounts_create_list_get_delete => accounts_lifecycle;
    invalid_path_ids_are_400 => invalid_ids_in_paths;
    static_bearer_install_lifecycle => static_bearer_install_lifecycle;
    auth_code_install_starts_authorization => auth_code_install_starts_authorization;
    install_creation_is_validated => install_validation;
    bad_input_changes_nothing => bad_input_changes_nothing;
    operational_endpoints => operational_endpoints;
    error_codes_come_from_the_table => error_codes_come_from_the_table;
}

// ---------------------------------------------------------------------------------------------
// 9. The operator CLI (the real binary)
// ---------------------------------------------------------------------------------------------
//
// Single-backend (SQLite) on purpose: these tests exercise the binary's command-line surface
// (argument parsing, configuration from SWITCHBOARD__* variables, stdout/exit-code contracts,
// key-file creation); the storage code under them is the same `Services` the HTTP tests run on
// both backends, and a PostgreSQL variant would only re-run that.

fn cli(dir: &Path, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("SWITCHBOARD_ENV")
        .env_remove("RUST_LOG")
        .env(
            "SWITCHBOARD__DATABASE__URL",
            format!("sqlite://{}", dir.join("switchboard.db").display()),
        )
        .env(
            "SWITCHBOARD__SECRETS__KEY_FILE",
            dir.join("keys/secret.key"),
        )
        .env("SWITCHBOARD__CONNECTORS__DIR", dir.join("connectors"));
    cmd
}

fn copy_connectors(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(crate::support::repo_root().join("connectors")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[actix_web::test]
async fn cli_tenant_create_and_migrate() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    copy_connectors(&dir.path().join("connectors"));

    let out = cli(dir.path(), &["migrate"]).output().unwrap();
    assert!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("switchboard.db").exists());

    let out = cli(dir.path(), &["tenant", "create", "Acme"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "tenant create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stdout: {stdout:?}");
    let created: Value = serde_json::from_str(lines[0]).expect("a JSON line");
    let obj = created.as_object().unwrap();
    assert_eq!(
        obj.keys().cloned().collect::<BTreeSet<_>>(),
        set(&["api_key", "tenant"])
    );
    let tenant = created["tenant"].as_str().unwrap().to_owned();
    let key = created["api_key"].as_str().unwrap().to_owned();
    assert!(tenant.starts_with("ten_"), "{tenant}");
    assert!(key.starts_with("sbk_"), "{key}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(&key), "the key is logged");

    let key_file = dir.path().join("keys/secret.key");
    let mode = std::fs::metadata(&key_file)
        .expect("key file created")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "key file mode {:o}", mode & 0o777);

    // An invalid name fails without printing a key.
    let out = cli(dir.path(), &["tenant", "create", "  "])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Migrating again is a no-op that succeeds.
    let out = cli(dir.path(), &["migrate"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The printed key authenticates as the printed tenant against that database, and only its
    // hash is stored.
    let db_url = format!("sqlite://{}", dir.path().join("switchboard.db").display());
    let mut settings = crate::support::test_settings(&db_url, dir.path(), 1);
    settings.secrets.key_file = key_file;
    let services = switchboard_service::Services::build(settings).expect("services");
    let ctx = services
        .keys
        .authenticate(&key)
        .await
        .expect("authenticate")
        .expect("the printed key is valid");
    assert_eq!(ctx.tenant_id(), tenant);
    let db_bytes = std::fs::read(dir.path().join("switchboard.db")).unwrap();
    let mut all = String::from_utf8_lossy(&db_bytes).into_owned();
    if let Ok(wal) = std::fs::read(dir.path().join("switchboard.db-wal")) {
        all.push_str(&String::from_utf8_lossy(&wal));
    }
    assert!(all.contains(&tenant), "the tenant is stored");
    assert!(!all.contains(&key), "the plaintext key is stored");
}

#[test]
fn cli_connectors_validate() {
    let dir = tempfile::tempdir().unwrap();
    let root = crate::support::repo_root();

    // The shipped connectors are valid.
    let out = cli(dir.path(), &["connectors", "validate", "connectors"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The broken fixture: exit 1 and exactly the documented `file:line: message` lines.
    let fixture = "crates/switchboard-connector/tests/fixtures/broken";
    let out = cli(dir.path(), &["connectors", "validate", fixture])
        .current_dir(&root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let got: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    for line in &got {
        let mut parts = line.splitn(3, ':');
        let (file, lineno, msg) = (parts.next().unwrap(), parts.next(), parts.next());
        assert!(file.ends_with(".toml"), "not file:line: message: {line}");
        assert!(
            lineno.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
            "not file:line: message: {line}"
        );
        assert!(
            msg.is_some_and(|m| m.starts_with(' ') && m.trim().len() > 3),
            "not file:line: message: {line}"
        );
    }
    let doc = std::fs::read_to_string(root.join(fixture).join("broken.toml")).unwrap();
    let expected: Vec<String> = doc
        .lines()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("#   broken.toml:"))
        .map(|rest| format!("{fixture}/broken.toml:{rest}"))
        .collect();
    assert!(expected.len() >= 10, "the fixture documents its lines");
    assert_eq!(got, expected);
}

/// Kills the child on drop so a failed assertion leaves no server behind.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn cli_serve_refuses_a_broken_connector() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let conn = dir.path().join("connectors");
    copy_connectors(&conn);
    let canvas = std::fs::read_to_string(conn.join("canvas.toml")).unwrap();
    let lineno = canvas
        .lines()
        .position(|l| l.trim() == "verb = \"GET\"")
        .expect("a GET method")
        + 1;
    std::fs::write(
        conn.join("canvas.toml"),
        canvas.replacen("verb = \"GET\"", "verb = \"FETCH\"", 1),
    )
    .unwrap();
    // The validator agrees the copy is broken.
    let out = cli(dir.path(), &["connectors", "validate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = cli(dir.path(), &["serve"])
        .env("SWITCHBOARD__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env(
            "SWITCHBOARD__SERVER__PUBLIC_URL",
            format!("http://127.0.0.1:{port}"),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "serve kept running with a broken connector file"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    guard
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let mut stdout = String::new();
    guard
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(!status.success(), "serve exited 0");
    let needle = format!("canvas.toml:{lineno}:");
    assert!(
        stderr.contains(&needle) && stderr.contains("FETCH"),
        "stderr does not name the file and line ({needle}):\n{stderr}"
    );
    assert!(
        !stderr.contains("listening") && !stdout.contains("listening"),
        "{stderr}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something serves on the port"
    );
}
