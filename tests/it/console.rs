//! The web console (issue 15): sign-in with a tenant API key exchanged for a session cookie
//! (flags, expiry, sign-out, revocation), the cookie as a second way into the same `/v1` API,
//! the CSRF rule on every cookie-authenticated write (token and origin; nothing written when
//! refused), the pages' headers, and the whole console in headless Chromium
//! (tests/browser/console.mjs).

use crate::methods::{install, Via};
use crate::support::{assert_problem, repo_root, req, Backend, TestApp};
use diesel::prelude::*;
use reqwest::header::{HeaderMap, COOKIE, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use switchboard_db::schema;
use switchboard_service::ManualClock;

/// A signed-in console: the two cookie values and the sign-in response.
struct Session {
    token: String,
    csrf: String,
    body: Value,
}

impl Session {
    fn cookie(&self) -> String {
        format!("sb_console={}; sb_console_csrf={}", self.token, self.csrf)
    }
}

fn set_cookies(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// The `Set-Cookie` line of `name` and its value.
fn cookie_line<'a>(lines: &'a [String], name: &str) -> (&'a str, String) {
    let line = lines
        .iter()
        .find(|l| l.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie in {lines:?}"));
    let value = line[name.len() + 1..].split(';').next().unwrap().to_owned();
    (line, value)
}

fn attrs(line: &str) -> Vec<String> {
    line.split(';')
        .skip(1)
        .map(|a| a.trim().to_owned())
        .collect()
}

async fn sign_in_raw(app: &TestApp, form: &str, origin: Option<&str>) -> reqwest::Response {
    let mut req = app
        .http
        .post(app.url("/console/session"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_owned());
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    req.send().await.unwrap()
}

async fn sign_in(app: &TestApp) -> Session {
    let res = sign_in_raw(
        app,
        &format!("api_key={}", app.api_key),
        Some(app.base.as_str()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let lines = set_cookies(res.headers());
    let (_, token) = cookie_line(&lines, "sb_console");
    let (_, csrf) = cookie_line(&lines, "sb_console_csrf");
    let body: Value = res.json().await.unwrap();
    Session { token, csrf, body }
}

/// A request carrying only the session cookie (no Authorization), with optional CSRF header
/// and Origin.
async fn with_cookie(
    app: &TestApp,
    method: Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    origin: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = app
        .http
        .request(method, app.url(path))
        .header(COOKIE, cookie);
    if let Some(t) = csrf {
        req = req.header("x-csrf-token", t);
    }
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn session_rows(app: &TestApp) -> i64 {
    app.db(|conn| {
        Ok(schema::console_sessions::table
            .count()
            .get_result::<i64>(conn)?)
    })
    .await
}

async fn account_rows(app: &TestApp) -> i64 {
    app.db(|conn| Ok(schema::accounts::table.count().get_result::<i64>(conn)?))
        .await
}

async fn sign_in_sets_strict_cookies(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let res = sign_in_raw(&app, &format!("api_key={}", app.api_key), None).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let lines = set_cookies(res.headers());
    let (session, token) = cookie_line(&lines, "sb_console");
    let a = attrs(session);
    for want in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(a.iter().any(|x| x == want), "{want} missing: {session}");
    }
    assert!(
        !a.iter().any(|x| x == "Secure"),
        "http public URL: {session}"
    );
    let (csrf_line, csrf) = cookie_line(&lines, "sb_console_csrf");
    let a = attrs(csrf_line);
    assert!(a.iter().any(|x| x == "SameSite=Strict"), "{csrf_line}");
    assert!(
        !a.iter().any(|x| x == "HttpOnly"),
        "the page reads it: {csrf_line}"
    );
    assert!(token.starts_with("sbc_") && token.len() > 40, "{token}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["tenant"], json!(app.tenant));
    assert_eq!(body["csrf_token"], json!(csrf));
    assert_ne!(csrf, token);
    assert!(body["expires_at"].is_string(), "{body}");
    // Only the token's hash is stored.
    let stored: Vec<String> = app
        .db(|conn| {
            Ok(schema::console_sessions::table
                .select(schema::console_sessions::token_hash)
                .load(conn)?)
        })
        .await;
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0], token);
    assert!(!app.dump_database().contains(&token));
    // JSON sign-in works the same way.
    let res = app
        .http
        .post(app.url("/console/session"))
        .json(&json!({ "api_key": app.api_key }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(session_rows(&app).await, 2);
}

async fn secure_cookies_behind_an_https_public_url(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.server.public_url = "https://switchboard.example".into();
    })
    .await;
    let res = sign_in_raw(
        &app,
        &format!("api_key={}", app.api_key),
        Some("https://switchboard.example"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let lines = set_cookies(res.headers());
    for name in ["sb_console", "sb_console_csrf"] {
        let (line, _) = cookie_line(&lines, name);
        assert!(attrs(line).iter().any(|a| a == "Secure"), "{line}");
    }
    // The origin a write must come from is the public one, not the address the test dials.
    let token = cookie_line(&lines, "sb_console").1;
    let csrf = cookie_line(&lines, "sb_console_csrf").1;
    let cookie = format!("sb_console={token}");
    let body = Some(json!({"id": "from-https", "name": "From https"}));
    let (s, v) = with_cookie(
        &app,
        Method::POST,
        "/v1/accounts",
        &cookie,
        Some(csrf.as_str()),
        Some(app.base.as_str()),
        body.clone(),
    )
    .await;
    assert_problem(s, &v, 403, "csrf_rejected");
    let (s, v) = with_cookie(
        &app,
        Method::POST,
        "/v1/accounts",
        &cookie,
        Some(csrf.as_str()),
        Some("https://switchboard.example"),
        body,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

async fn the_cookie_authenticates_the_v1_api_and_writes_need_csrf(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let session = sign_in(&app).await;
    let cookie = session.cookie();
    let origin = app.base.as_str();

    // Reads need only the cookie.
    let (s, v) = with_cookie(&app, Method::GET, "/v1/tenant", &cookie, None, None, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["id"], json!(app.tenant));
    let (s, v) = with_cookie(&app, Method::GET, "/v1/accounts", &cookie, None, None, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Writes: each refusal is 403 csrf_rejected with nothing written.
    let body = || Some(json!({"id": "acme", "name": "Acme"}));
    let refused: [(Option<&str>, Option<&str>); 5] = [
        (None, Some(origin)),                                        // no token
        (Some("0123abcd"), Some(origin)),                            // wrong token
        (Some(session.token.as_str()), Some(origin)), // the session token is not the CSRF token
        (Some(session.csrf.as_str()), Some("https://evil.example")), // cross-site
        (Some(session.csrf.as_str()), None),          // no Origin nor Referer
    ];
    for (csrf, from) in refused {
        let (s, v) = with_cookie(
            &app,
            Method::POST,
            "/v1/accounts",
            &cookie,
            csrf,
            from,
            body(),
        )
        .await;
        assert_problem(s, &v, 403, "csrf_rejected");
        assert!(!v.to_string().contains(&session.token), "{v}");
        assert!(!v.to_string().contains(&session.csrf), "{v}");
    }
    // The CSRF rule is checked before the body is read: a cross-site form (text/plain, not
    // even JSON) is refused as cross-site, not as a bad body.
    let res = app
        .http
        .post(app.url("/v1/accounts"))
        .header(COOKIE, &cookie)
        .header("origin", "https://evil.example")
        .header("content-type", "text/plain")
        .body("{\"id\":\"evil\",\"x\":\"=\"}")
        .send()
        .await
        .unwrap();
    let s = res.status();
    let v: Value = res.json().await.unwrap();
    assert_problem(s, &v, 403, "csrf_rejected");
    let same_port_other_host = format!("http://localhost:{}", app.port);
    let (s, v) = with_cookie(
        &app,
        Method::POST,
        "/v1/accounts",
        &cookie,
        Some(session.csrf.as_str()),
        Some(same_port_other_host.as_str()),
        body(),
    )
    .await;
    assert_problem(s, &v, 403, "csrf_rejected");
    assert_eq!(account_rows(&app).await, 0);

    // A cookie-authenticated DELETE is a write too.
    app.create_account("keep-me").await;
    let (s, v) = with_cookie(
        &app,
        Method::DELETE,
        "/v1/accounts/keep-me",
        &cookie,
        None,
        Some(origin),
        None,
    )
    .await;
    assert_problem(s, &v, 403, "csrf_rejected");
    assert_eq!(account_rows(&app).await, 1);

    // The right token from the public origin writes, as the key's tenant.
    let (s, v) = with_cookie(
        &app,
        Method::POST,
        "/v1/accounts",
        &cookie,
        Some(session.csrf.as_str()),
        Some(origin),
        body(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(account_rows(&app).await, 2);
    // A same-origin Referer stands in for a missing Origin.
    let res = app
        .http
        .delete(app.url("/v1/accounts/acme"))
        .header(COOKIE, &cookie)
        .header("x-csrf-token", &session.csrf)
        .header("referer", format!("{origin}/console"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(account_rows(&app).await, 1);

    // Another tenant's session sees only its own data.
    let (_, other_key) = app.new_tenant("Other").await;
    let res = sign_in_raw(&app, &format!("api_key={other_key}"), None).await;
    let lines = set_cookies(res.headers());
    let other = format!("sb_console={}", cookie_line(&lines, "sb_console").1);
    let (s, v) = with_cookie(
        &app,
        Method::GET,
        "/v1/accounts/keep-me",
        &other,
        None,
        None,
        None,
    )
    .await;
    assert_problem(s, &v, 404, "not_found");

    // Bearer-key writes are unchanged: no CSRF token, no Origin.
    let (s, v) = app
        .post("/v1/accounts", json!({"id": "by-key", "name": "By key"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    // Revoking the key the session was opened with ends the session.
    let (s, v) = with_cookie(&app, Method::GET, "/v1/api-keys", &cookie, None, None, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let key_id = session.body["api_key_id"].as_str().unwrap().to_owned();
    let (s, v) = app.delete(&format!("/v1/api-keys/{key_id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (s, v) = with_cookie(&app, Method::GET, "/v1/tenant", &cookie, None, None, None).await;
    assert_problem(s, &v, 401, "unauthorized");
}

async fn sign_out_ends_the_session(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let session = sign_in(&app).await;
    let cookie = session.cookie();
    let (s, v) = with_cookie(
        &app,
        Method::GET,
        "/console/session",
        &cookie,
        None,
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["csrf_token"], json!(session.csrf));
    // Signing out is a write: a cross-site page cannot sign the user out.
    let (s, v) = with_cookie(
        &app,
        Method::DELETE,
        "/console/session",
        &cookie,
        None,
        Some(app.base.as_str()),
        None,
    )
    .await;
    assert_problem(s, &v, 403, "csrf_rejected");
    assert_eq!(session_rows(&app).await, 1);
    let res = app
        .http
        .delete(app.url("/console/session"))
        .header(COOKIE, &cookie)
        .header("x-csrf-token", &session.csrf)
        .header("origin", &app.base)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let lines = set_cookies(res.headers());
    for name in ["sb_console", "sb_console_csrf"] {
        let (line, value) = cookie_line(&lines, name);
        assert_eq!(value, "", "{line}");
        assert!(attrs(line).iter().any(|a| a == "Max-Age=0"), "{line}");
    }
    assert_eq!(session_rows(&app).await, 0);
    let (s, v) = with_cookie(&app, Method::GET, "/v1/tenant", &cookie, None, None, None).await;
    assert_problem(s, &v, 401, "unauthorized");
    let (s, v) = with_cookie(
        &app,
        Method::GET,
        "/console/session",
        &cookie,
        None,
        None,
        None,
    )
    .await;
    assert_problem(s, &v, 401, "unauthorized");
    // Signing out again (or without a session) is harmless.
    let (s, _) = with_cookie(
        &app,
        Method::DELETE,
        "/console/session",
        &cookie,
        None,
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // The sign-in and the one real sign-out are in the audit trail, naming the key the session
    // was opened with, and no record holds the session token or its CSRF token.
    app.services.audit.flush().await;
    let r = req(&app, Method::GET, "/v1/audit?limit=100", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let console: Vec<&Value> = r.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["action"]
                .as_str()
                .unwrap()
                .starts_with("console_session.")
        })
        .collect();
    let actions: Vec<&str> = console
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["console_session.created", "console_session.ended"],
        "{}",
        r.text
    );
    for e in &console {
        assert_eq!(e["kind"], "admin");
        assert_eq!(e["api_key_id"], session.body["api_key_id"]);
        assert!(
            e["request_id"].as_str().is_some_and(|id| !id.is_empty()),
            "{e}"
        );
    }
    assert!(!r.text.contains(&session.token) && !r.text.contains(&session.csrf));
}

async fn expired_sessions_are_refused(backend: Backend) {
    let clock = ManualClock::new(switchboard_core::now_ms());
    let app = TestApp::spawn_with_clock(backend, clock.clone(), |_| {}).await;
    let get = |cookie: String| {
        let app = &app;
        async move { with_cookie(app, Method::GET, "/v1/tenant", &cookie, None, None, None).await }
    };

    // Idle: 8 h without a request ends it; a request restarts the idle clock.
    let active = sign_in(&app).await;
    clock.advance(Duration::from_secs(3 * 3600));
    assert_eq!(get(active.cookie()).await.0, StatusCode::OK);
    clock.advance(Duration::from_secs(8 * 3600 - 1));
    assert_eq!(
        get(active.cookie()).await.0,
        StatusCode::OK,
        "activity restarts the idle clock"
    );
    let idle = sign_in(&app).await;
    clock.advance(Duration::from_secs(8 * 3600));
    let (s, v) = get(idle.cookie()).await;
    assert_problem(s, &v, 401, "unauthorized");
    assert!(
        v["detail"].as_str().unwrap().contains("sign in again"),
        "{v}"
    );
    // 19 h after its sign-in the active one has ended too.
    let (s, v) = get(active.cookie()).await;
    assert_problem(s, &v, 401, "unauthorized");

    // Absolute: 12 h after sign-in, however active.
    let busy = sign_in(&app).await;
    for _ in 0..5 {
        clock.advance(Duration::from_secs(2 * 3600));
        assert_eq!(get(busy.cookie()).await.0, StatusCode::OK);
    }
    clock.advance(Duration::from_secs(2 * 3600));
    let (s, v) = get(busy.cookie()).await;
    assert_problem(s, &v, 401, "unauthorized");
    // Ended sessions are deleted.
    assert_eq!(session_rows(&app).await, 0);
}

async fn a_bad_key_cannot_sign_in(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let wrong = format!("{}x", app.api_key);
    let res = sign_in_raw(&app, &format!("api_key={wrong}"), None).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(set_cookies(res.headers()).is_empty());
    let v: Value = res.json().await.unwrap();
    assert_problem(StatusCode::UNAUTHORIZED, &v, 401, "unauthorized");
    assert_eq!(
        v["detail"],
        "this API key is not valid (unknown, mistyped or revoked)"
    );
    assert!(!v.to_string().contains(&wrong));
    let res = sign_in_raw(&app, "api_key=", None).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = sign_in_raw(&app, "name=x", None).await;
    let v: Value = res.json().await.unwrap();
    assert_problem(StatusCode::BAD_REQUEST, &v, 400, "invalid_request");
    // No cross-site sign-in (a login CSRF would put the victim in the attacker's tenant).
    let res = sign_in_raw(
        &app,
        &format!("api_key={}", app.api_key),
        Some("https://evil.example"),
    )
    .await;
    let s = res.status();
    let v: Value = res.json().await.unwrap();
    assert_problem(s, &v, 403, "csrf_rejected");
    assert_eq!(session_rows(&app).await, 0);
    // No cookie: GET /console/session is 401, and the /v1 API still asks for a key.
    let (s, v) = app.call_as("", Method::GET, "/console/session", None).await;
    assert_problem(s, &v, 401, "unauthorized");
    let (s, v) = with_cookie(
        &app,
        Method::GET,
        "/v1/tenant",
        "sb_console=sbc_forged",
        None,
        None,
        None,
    )
    .await;
    assert_problem(s, &v, 401, "unauthorized");
}

async fn the_console_pages_are_embedded_with_a_strict_csp(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for (path, ct, needle) in [
        ("/console", "text/html", "<html lang=\"en\">"),
        ("/console/app.js", "text/javascript", "X-CSRF-Token"),
        ("/console/app.css", "text/css", ":focus-visible"),
    ] {
        let res = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let h = res.headers().clone();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(ct),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        for d in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(d), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
        let text = res.text().await.unwrap();
        assert!(text.contains(needle), "{path}");
        // No third-party resource: every URL the page loads is under /console.
        assert!(
            !text.contains("https://"),
            "{path} loads something from elsewhere"
        );
    }
    // A trailing slash is the console too (a permanent redirect, not a 404).
    let res = app.http.get(app.url("/console/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(res.headers()["location"], "/console");
}

crate::both_backends! {
    sign_in_sets_strict_cookies => sign_in_sets_strict_cookies;
    secure_cookies_behind_an_https_public_url => secure_cookies_behind_an_https_public_url;
    the_cookie_authenticates_the_v1_api_and_writes_need_csrf => the_cookie_authenticates_the_v1_api_and_writes_need_csrf;
    sign_out_ends_the_session => sign_out_ends_the_session;
    expired_sessions_are_refused => expired_sessions_are_refused;
    a_bad_key_cannot_sign_in => a_bad_key_cannot_sign_in;
    the_console_pages_are_embedded_with_a_strict_csp => the_console_pages_are_embedded_with_a_strict_csp;
}

// ---------------------------------------------------------------------------------------------
// The console in headless Chromium (tests/browser/console.mjs, playwright-core)
// ---------------------------------------------------------------------------------------------

/// The browser harness is there: tests/browser/node_modules and a chromium (scripts/test
/// installs both). Without them the test is skipped, except under CI where it fails.
fn browser_ready() -> bool {
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ok = repo_root()
        .join("tests/browser/node_modules/playwright-core")
        .is_dir()
        && std::path::Path::new(&chromium).exists();
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the browser harness is missing (scripts/test installs it)"
        );
        eprintln!("SKIPPED console_in_headless_chromium: run ./scripts/test once to install it");
    }
    ok
}

#[actix_web::test]
async fn console_in_headless_chromium() {
    if !browser_ready() {
        return;
    }
    let app = TestApp::spawn(Backend::Sqlite).await;
    // An authorized Medplum install (authorization code through FakeOAuth), and its patients.
    let env = install(&app, Via::Medplum, Via::Medplum.fhir().seed_patients(3)).await;
    let patient_id = env.fhir.patient_ids()[1].clone();
    let patient = env.fhir.patient(&patient_id).unwrap();
    let family = patient["name"][0]["family"].as_str().unwrap().to_owned();
    let accounts_before = {
        let (_, v) = app.get("/v1/accounts").await;
        v["accounts"].as_array().unwrap().len()
    };

    let shots = repo_root().join("target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(repo_root().join("tests/browser/console.mjs"))
        .current_dir(repo_root().join("tests/browser"))
        .env("CONSOLE_BASE", &app.base)
        .env("API_KEY", &app.api_key)
        .env("ACCOUNT", &env.account)
        .env("INSTALL", &env.install)
        .env("CONNECTOR", "medplum")
        .env("PATIENT_ID", &patient_id)
        .env("PATIENT_FAMILY", &family)
        .env("SHOTS", &shots)
        .kill_on_drop(true);
    // The README's screenshot (docs/console.png) is refreshed only on request, so a test run
    // never leaves a tracked file modified.
    if std::env::var_os("SWITCHBOARD_BLESS").is_some() {
        cmd.env("DOC_SHOT", repo_root().join("docs/console.png"));
    }
    let out = cmd.output();
    let out = tokio::time::timeout(Duration::from_secs(180), out)
        .await
        .expect("the browser test finished in 3 minutes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "console.mjs failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("console: all checks passed"), "{stdout}");
    // What the browser did reached the upstream and the audit trail; the cross-site form
    // wrote nothing.
    assert!(
        env.fhir
            .requests()
            .iter()
            .any(|r| r.path().ends_with(&format!("/Patient/{patient_id}"))),
        "get_patient never reached the EHR"
    );
    let (_, v) = app.get("/v1/accounts").await;
    assert_eq!(
        v["accounts"].as_array().unwrap().len(),
        accounts_before,
        "{v}"
    );
    let (_, v) = app.get("/v1/audit?method=get_patient").await;
    assert!(
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["status"] == 200 && e["install_id"] == json!(env.install)),
        "{v}"
    );
    for page in [
        "signin",
        "connectors",
        "accounts",
        "installs",
        "run",
        "audit",
        "cross-site",
    ] {
        assert!(
            shots.join(format!("console-{page}.png")).is_file(),
            "no screenshot of {page}"
        );
    }
}
