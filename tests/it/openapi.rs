//! The OpenAPI document as a new user meets it: typed path ids (one 400 for every bad id, after
//! authentication, before any lookup or upstream request), every documented operation routed,
//! and schemathesis fuzzing a live `switchboard serve` against `/openapi.json`.

use crate::support::{assert_problem, repo_root, Backend, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use switchboard_testkit::fhir::FakeFhir;

const ID_RULE: &str = "ids are 1 to 64 characters of A-Z a-z 0-9 _ . - and do not start with '.'";

/// Every operation of the served document: (verb, path template).
async fn documented_operations(app: &TestApp) -> Vec<(Method, String)> {
    let r = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let doc: Value = r.json().await.unwrap();
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for verb in item.as_object().unwrap().keys() {
            ops.push((verb.to_uppercase().parse().unwrap(), path.clone()));
        }
    }
    assert_eq!(ops.len(), 51, "{ops:?}");
    ops
}

/// A valid body for the operations that take one (so only the path can be wrong).
fn body_for(method: &Method, template: &str) -> Option<Value> {
    if ![Method::POST, Method::PUT, Method::PATCH].contains(method) {
        return None;
    }
    Some(match template {
        "/v1/accounts/{account}/installs" => json!({"connector": "canvas"}),
        "/v1/connectors/{connector}/setup" => json!({"settings": {}}),
        "/v1/accounts" | "/v1/api-keys" => json!({"name": "openapi test"}),
        "/v1/tenant" => json!({"allowed_return_urls": []}),
        _ => json!({}),
    })
}

/// A static-bearer Canvas install on a FakeFhir that accepts its token, in account `acc`.
async fn bearer_install(app: &TestApp, fhir: &FakeFhir) -> String {
    fhir.accept_token("openapi-test-token");
    let (s, v) = app
        .put(
            "/v1/connectors/canvas/setup",
            json!({"settings": {"api_token": "openapi-test-token", "fhir_base_url": fhir.base_url()}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    app.create_account("acc").await;
    let (s, v) = app
        .post(
            "/v1/accounts/acc/installs",
            json!({"connector": "canvas", "auth_type": "static_bearer"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

async fn counts(app: &TestApp) -> (usize, usize, usize) {
    let tenant = app.tenant.clone();
    app.db(move |conn| {
        Ok((
            switchboard_db::repo::accounts::list_page(conn, &tenant, None, 10_000)
                .map(|p| p.rows)?
                .len(),
            switchboard_db::repo::installs::list(conn, &tenant, "acc")?.len(),
            switchboard_db::repo::api_keys::list_page(conn, &tenant, None, 10_000)
                .map(|p| p.rows)?
                .len(),
        ))
    })
    .await
}

/// Every path parameter of every documented operation is a typed id: a bad one is the same
/// 400 `invalid_id` problem everywhere (including the method id, which the foundation tests
/// do not cover), nothing is written and nothing is sent upstream; a well-formed unknown id is
/// a 404 from the lookup, and a well-formed known one reaches the upstream.
async fn typed_ids_reject_every_bad_path_segment(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let fhir = FakeFhir::start();
    let patient = fhir.seed_patients(1).remove(0);
    let install = bearer_install(&app, &fhir).await;
    let before = counts(&app).await;
    let too_long = "a".repeat(65);
    for (method, template) in documented_operations(&app).await {
        let names: Vec<&str> = template
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        for bad_param in &names {
            for bad in ["a%20b", ".x", "..%2Fx", too_long.as_str(), "%C3%A9", "a%00"] {
                let mut path = template.clone();
                for name in &names {
                    let value = match *name {
                        n if n == *bad_param => bad,
                        "account" => "acc",
                        "install" => install.as_str(),
                        "connector" => "canvas",
                        "method" => "get_patient",
                        _ => "key_unknown",
                    };
                    path = path.replace(&format!("{{{name}}}"), value);
                }
                let (s, v) = app
                    .call(method.clone(), &path, body_for(&method, &template))
                    .await;
                assert_problem(s, &v, 400, "invalid_id");
                assert_eq!(v["detail"], ID_RULE, "{method} {path}");
            }
        }
    }
    assert_eq!(counts(&app).await, before);
    assert_eq!(fhir.request_count(), 0, "a bad id reached the upstream");

    // Well-formed but unknown: the lookup answers.
    let call = |account: &str, install: &str, method: &str| {
        format!("/v1/accounts/{account}/installs/{install}/methods/{method}")
    };
    let params = json!({"params": {"id": patient}});
    let (s, v) = app
        .post(&call("acc", &install, "no_such_method"), params.clone())
        .await;
    assert_problem(s, &v, 404, "unknown_method");
    let (s, v) = app
        .post(&call("acc", "ins_unknown", "get_patient"), params.clone())
        .await;
    assert_problem(s, &v, 404, "not_found");
    let (s, v) = app
        .post(&call("other", &install, "get_patient"), params.clone())
        .await;
    assert_problem(s, &v, 404, "not_found");
    let (s, v) = app.delete("/v1/api-keys/key_unknown").await;
    assert_problem(s, &v, 404, "not_found");
    assert_eq!(fhir.request_count(), 0);

    // Well-formed and known: the typed ids carry the call to the upstream.
    let (s, v) = app
        .post(&call("acc", &install, "get_patient"), params)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["id"], json!(patient));
    assert_eq!(fhir.request_count(), 1);
    assert_eq!(counts(&app).await, before);
}

/// Authentication comes before id validation: without a valid key a bad path id is 401, never
/// a 400 that would answer an unauthenticated caller about the path.
async fn a_bad_key_is_401_before_a_bad_id(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for (method, template) in documented_operations(&app).await {
        // The public JWK Set route takes no key: nothing to authenticate first.
        if !template.contains('{') || !template.starts_with("/v1/") {
            continue;
        }
        let path = template
            .split('/')
            .map(|s| if s.starts_with('{') { "a%20b" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        let altered = format!("{}x", app.api_key);
        for key in [None, Some("sbk_wrong_key"), Some(altered.as_str())] {
            let mut req = app.http.request(method.clone(), app.url(&path));
            if let Some(k) = key {
                req = req.bearer_auth(k);
            }
            if let Some(b) = body_for(&method, &template) {
                req = req.json(&b);
            }
            let r = req.send().await.unwrap();
            let s = r.status();
            let v: Value = r.json().await.unwrap();
            assert_problem(s, &v, 401, "unauthorized");
        }
        // With the key, the same request is the id error.
        let (s, v) = app
            .call(method.clone(), &path, body_for(&method, &template))
            .await;
        assert_problem(s, &v, 400, "invalid_id");
    }
}

/// The document and the router agree: every documented (verb, path) reaches a handler (never
/// the "no such route" 404 nor a 405).
async fn every_documented_operation_is_routed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for (method, template) in documented_operations(&app).await {
        let path = template
            .split('/')
            .map(|s| if s.starts_with('{') { "unknown-id" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        let (s, v) = app
            .call(method.clone(), &path, body_for(&method, &template))
            .await;
        assert_ne!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: {v}");
        assert_ne!(v["detail"], "no such route", "{method} {path}: {v}");
        assert!(s.as_u16() < 500, "{method} {path}: {s} {v}");
    }
}

crate::both_backends! {
    typed_ids_reject_every_bad_path_segment => typed_ids_reject_every_bad_path_segment;
    a_bad_key_is_401_before_a_bad_id => a_bad_key_is_401_before_a_bad_id;
    every_documented_operation_is_routed => every_documented_operation_is_routed;
    method_bodies => the_document_describes_each_methods_body;
}

/// `/openapi.json` carries one body schema per connector method (`MethodCall.{c}.{m}`), each
/// referenced from the method-call operation's `x-method-bodies`, agreeing with the catalogue
/// (`GET /v1/connectors/{id}`): every method, and each param's enum, pattern (anchored) and
/// bounds; a write's body names its resourceType and required elements. A value the schema
/// excludes is what the server refuses.
async fn the_document_describes_each_methods_body(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let doc: Value = r.json().await.unwrap();
    let op = &doc["paths"]["/v1/accounts/{account}/installs/{install}/methods/{method}"]["post"];
    assert!(op["requestBody"].is_object(), "the generic body stays");
    let bodies = op["x-method-bodies"].as_object().expect("x-method-bodies");
    let (_, list) = app.get("/v1/connectors").await;
    let mut checked = 0;
    for c in list["connectors"].as_array().unwrap() {
        let id = c["id"].as_str().unwrap();
        let (s, catalogue) = app.get(&format!("/v1/connectors/{id}")).await;
        assert_eq!(s, StatusCode::OK);
        for m in catalogue["methods"].as_array().unwrap() {
            let method = m["id"].as_str().unwrap();
            let name = format!("MethodCall.{id}.{method}");
            assert_eq!(
                bodies[id][method]["$ref"],
                format!("#/components/schemas/{name}"),
                "{name}"
            );
            let schema = &doc["components"]["schemas"][name.as_str()];
            assert_eq!(schema["title"], format!("{id}.{method}"));
            let props = &schema["properties"]["params"]["properties"];
            for p in m["params"].as_array().unwrap() {
                let got = &props[p["name"].as_str().unwrap()];
                let got = if p["repeated"] == true {
                    &got["anyOf"][0]
                } else {
                    got
                };
                assert!(got.is_object(), "{name}: {p}");
                if let Some(values) = p.get("enum") {
                    assert_eq!(&got["enum"], values, "{name}");
                }
                if let Some(pattern) = p["pattern"].as_str() {
                    assert_eq!(got["pattern"], format!("^(?:{pattern})$"), "{name}");
                }
                for bound in ["minimum", "maximum"] {
                    assert_eq!(got.get(bound), p.get(bound), "{name} {bound}");
                }
            }
            if let Some(body) = m.get("body") {
                let b = &schema["properties"]["body"];
                assert_eq!(
                    b["properties"]["resourceType"]["const"],
                    body["resource_type"]
                );
                for element in body["required"].as_array().unwrap() {
                    assert!(
                        b["required"].as_array().unwrap().contains(element),
                        "{name}"
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked} methods");
    let gender = &doc["components"]["schemas"]["MethodCall.canvas.search_patients"]["properties"]
        ["params"]["properties"]["gender"];
    assert_eq!(
        gender["enum"],
        json!(["male", "female", "other", "unknown"])
    );

    // The server refuses what the schema excludes, before any upstream request.
    let fhir = FakeFhir::builder().seed_patients(1).start();
    let install = bearer_install(&app, &fhir).await;
    fhir.reset();
    let (s, v) = app
        .post(
            &format!("/v1/accounts/acc/installs/{install}/methods/search_patients"),
            json!({"params": {"gender": "robot"}}),
        )
        .await;
    assert_problem(s, &v, 422, "invalid_params");
    assert_eq!(fhir.request_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// schemathesis against a live server
// ---------------------------------------------------------------------------------------------

/// The schemathesis CLI that scripts/test installs (pinned) into target/, or `SCHEMATHESIS`.
fn schemathesis() -> Option<PathBuf> {
    let path = std::env::var_os("SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/schemathesis-venv/bin/schemathesis"));
    path.exists().then_some(path)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn switchboard(dir: &Path, port: u16, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.args(args).current_dir(dir).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("SWITCHBOARD") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.env(
        "SWITCHBOARD__DATABASE__URL",
        format!("sqlite://{}", dir.join("switchboard.db").display()),
    )
    .env("SWITCHBOARD__SECRETS__KEY_FILE", dir.join("secret.key"))
    .env(
        "SWITCHBOARD__CONNECTORS__DIR",
        repo_root().join("connectors"),
    )
    .env("SWITCHBOARD__SERVER__BIND", format!("127.0.0.1:{port}"))
    .env(
        "SWITCHBOARD__SERVER__PUBLIC_URL",
        format!("http://127.0.0.1:{port}"),
    )
    .env("SWITCHBOARD__SERVER__WORKERS", "2");
    cmd
}

/// The status of a plain `GET path` with the key, over a raw HTTP/1.0 connection.
fn http_status(port: u16, path: &str, key: &str) -> u16 {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\r\n"
    )
    .unwrap();
    let mut head = String::new();
    conn.read_to_string(&mut head).unwrap();
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Signs in to the console with the key (`POST /console/session`, raw HTTP/1.0): the session
/// cookie's value and the session's CSRF token, so schemathesis can exercise the console's
/// cookie-authenticated operations too.
fn console_session(port: u16, key: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = format!("api_key={key}");
    write!(
        conn,
        "POST /console/session HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let (head, json) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 201") || head.starts_with("HTTP/1.1 201"),
        "{text}"
    );
    let token = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: sb_console=")
                .or_else(|| l.strip_prefix("Set-Cookie: sb_console="))
        })
        .and_then(|v| v.split(';').next())
        .expect("the session cookie")
        .to_owned();
    let session: Value = serde_json::from_str(json).unwrap();
    (token, session["csrf_token"].as_str().unwrap().to_owned())
}

/// Kills the server when the test ends, however it ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// As a new user would: a fresh `switchboard serve` on SQLite, a tenant from the CLI, then
/// schemathesis against `/openapi.json` with the tenant's key: every operation, examples,
/// coverage and fuzzing (positive and negative data) and stateful sequences; no 5xx, no
/// response that contradicts its schema, no undocumented status.
#[test]
fn schemathesis_finds_no_server_error_and_no_schema_lie() {
    let Some(st) = schemathesis() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "schemathesis is not installed (scripts/test installs it)"
        );
        eprintln!(
            "SKIPPED schemathesis_finds_no_server_error_and_no_schema_lie: no \
             target/schemathesis-venv (run ./scripts/test once to install it)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = switchboard(dir.path(), port, &["tenant", "create", "schemathesis"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = created["api_key"].as_str().unwrap().to_owned();

    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let mut server = Server(
        switchboard(dir.path(), port, &["serve"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            panic!(
                "switchboard serve exited ({status}): {}",
                std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default()
            );
        }
        let ready = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "switchboard serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A console session: its cookie, CSRF token and the public origin go with every request
    // (the key wins on /v1), so the /console/session operations answer as for a signed-in page.
    let (cookie, csrf) = console_session(port, &key);
    let run = |extra: &[&str]| {
        let out = Command::new(&st)
            .arg("run")
            .arg(format!("{base}/openapi.json"))
            .args(["--header", &format!("Authorization: Bearer {key}")])
            .args(["--header", &format!("Cookie: sb_console={cookie}")])
            .args(["--header", &format!("X-CSRF-Token: {csrf}")])
            .args(["--header", &format!("Origin: {base}")])
            .args([
                "--checks",
                "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
            ])
            // One worker: hypothesis on CPython 3.11 can crash parsing sources from two threads.
            .args(["--max-examples", "15", "--seed", "9", "--workers", "1"])
            .args(["--no-color", "--request-timeout", "10"])
            .args(extra)
            .current_dir(dir.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "schemathesis {extra:?} failed:\n{text}"
        );
        assert!(!text.contains("Authentication failed"), "{text}");
        let field = |name: &str| -> usize {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .and_then(|v| v.split('/').next())
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("no `{name}` in the summary:\n{text}"))
        };
        let (selected, tested) = (field("Selected:"), field("Tested:"));
        assert_eq!(tested, selected, "operations left untested:\n{text}");
        let generated: usize = text
            .lines()
            .find_map(|l| {
                let (n, _) = l.trim().split_once(" generated, ")?;
                n.parse().ok()
            })
            .unwrap_or_else(|| panic!("no test-case count:\n{text}"));
        (selected, generated)
    };
    // Everything but revoking keys, all phases (stateful sequences included). Schemathesis
    // reuses ids it has seen in responses, so with `revoke_api_key` in the same run it would
    // revoke the very key it authenticates with (from `GET /v1/api-keys`), and every later
    // request would be a 401 that tests nothing. Signing out of the console is left for the
    // second run for the same reason (it ends the session the run's cookie carries).
    let (selected, generated) = run(&[
        "--exclude-operation-id",
        "revoke_api_key",
        "--exclude-operation-id",
        "console_sign_out",
    ]);
    // Schemathesis leaves out the operation that serves the schema itself unless asked.
    assert_eq!(selected, 48);
    assert!(generated >= 300, "only {generated} requests");
    assert_eq!(
        http_status(port, "/v1/tenant", &key),
        200,
        "the run lost its key"
    );
    // Then revoking keys on its own (with the ids it generates) and `GET /openapi.json`:
    // 48 + 3 = all 51 operations of the document.
    let (selected, _) = run(&[
        "--include-operation-id",
        "revoke_api_key",
        "--include-operation-id",
        "openapi",
        "--include-operation-id",
        "console_sign_out",
    ]);
    assert_eq!(selected, 3);
    assert_eq!(http_status(port, "/v1/tenant", &key), 200);
    drop(server);
}
