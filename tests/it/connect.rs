//! Connect sessions and the hosted connect page, end to end: `POST /v1/connect-sessions`
//! (return-URL policy, expiry bounds, the link token stored only hashed, tenant isolation),
//! `GET /v1/connect-sessions/{id}`, the HTML pages (unknown 404, expired and used 410, a form
//! without its form token 403, invalid settings 422 with the form again and nothing written),
//! the whole flow to an authorized install and a method call (reqwest playing the browser), and
//! the same flow in headless Chromium (tests/browser/connect.mjs) with screenshots under
//! target/screenshots/.

use crate::methods::Front;
use crate::support::{install_row, problem, repo_root, req, req_as, snapshot, Backend, TestApp};
use diesel::prelude::*;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Digest as _;
use switchboard_db::schema;
use switchboard_testkit::fhir::FakeFhir;
use switchboard_testkit::oauth::{FakeOAuth, OAuthClient};

const CLIENT_ID: &str = "connect-app";
const CLIENT_SECRET: &str = "connect-secret-4e1a";
const RETURN_URL: &str = "https://console.example/connected";
const ACCOUNT: &str = "clinic";

/// The EHR of a clinic: Epic's OAuth and FHIR behind one origin (the `endpoint` setting).
struct Ehr {
    oauth: FakeOAuth,
    fhir: FakeFhir,
    front: Front,
}

impl Ehr {
    /// The endpoint as the clinic's admin pastes it from Epic's directory (with `api/FHIR/R4`,
    /// which the normaliser strips).
    fn pasted_endpoint(&self) -> String {
        format!("{}/api/FHIR/R4", self.front.origin)
    }
}

/// Starts the clinic's EHR and saves the tenant's Epic app registration (no endpoint: each
/// clinic gives its own on the connect page).
async fn epic(app: &TestApp) -> Ehr {
    let callback = app.url("/connector/callback");
    let oauth = FakeOAuth::builder()
        .prefix("/oauth2/")
        .rotating_refresh(false)
        .client(OAuthClient::basic(CLIENT_ID, CLIENT_SECRET, &callback))
        .start();
    let fhir = FakeFhir::builder()
        .prefix("/api/FHIR/R4/")
        .accept_tokens_from(oauth.token_validator())
        .start();
    let front = Front::start(oauth.origin(), fhir.origin());
    let (s, v) = app
        .put(
            "/v1/connectors/epic/setup",
            json!({"settings": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    Ehr { oauth, fhir, front }
}

async fn create_session(app: &TestApp, body: Value) -> Value {
    let r = req(app, Method::POST, "/v1/connect-sessions", Some(body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        r.headers.get("cache-control").unwrap(),
        "no-store",
        "the link is a credential"
    );
    r.json
}

fn link_path(app: &TestApp, session: &Value) -> String {
    let url = session["url"].as_str().expect("url");
    url.strip_prefix(&app.base)
        .unwrap_or_else(|| panic!("{url} is not under {}", app.base))
        .to_owned()
}

/// A page as the browser gets it, with the form-token cookie it sets (if any).
struct Html {
    status: StatusCode,
    text: String,
    cookie: Option<String>,
    resp_headers: reqwest::header::HeaderMap,
}

impl Html {
    /// The hidden form token of the page's form.
    fn form_token(&self) -> String {
        let at = self
            .text
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no form token in {}", self.text));
        let rest = &self.text[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

async fn read_html(res: reqwest::Response) -> Html {
    let status = res.status();
    let resp_headers = res.headers().clone();
    let cookie = resp_headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("sb_connect_csrf="))
        .map(str::to_owned);
    Html {
        status,
        text: res.text().await.unwrap(),
        cookie,
        resp_headers,
    }
}

async fn open(app: &TestApp, path: &str) -> Html {
    read_html(app.http.get(app.url(path)).send().await.unwrap()).await
}

/// Asserts a person's page: HTML (never JSON or a stack trace), no-store, no referrer, a CSP
/// without scripts, `lang`.
fn assert_page(h: &Html, status: u16, contains: &str) {
    assert_eq!(h.status.as_u16(), status, "{}", h.text);
    let ct = h.resp_headers.get(CONTENT_TYPE).unwrap().to_str().unwrap();
    assert_eq!(ct, "text/html; charset=utf-8");
    assert_eq!(h.resp_headers.get("cache-control").unwrap(), "no-store");
    assert_eq!(
        h.resp_headers.get("referrer-policy").unwrap(),
        "no-referrer"
    );
    let csp = h
        .resp_headers
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(
        !csp.contains("script-src") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(h.text.starts_with("<!doctype html><html lang=\"en\">"));
    assert!(!h.text.contains("<script"), "{}", h.text);
    assert!(
        h.text.contains(contains),
        "missing {contains:?} in {}",
        h.text
    );
    assert!(serde_json::from_str::<Value>(&h.text).is_err());
}

/// Submits the connect form: `cookie` and `form_token` as given, plus the settings.
async fn submit(
    app: &TestApp,
    path: &str,
    cookie: Option<&str>,
    form_token: Option<&str>,
    settings: &[(&str, &str)],
    origin: Option<&str>,
) -> Html {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    if let Some(t) = form_token {
        form.append_pair("csrf", t);
    }
    for (k, v) in settings {
        form.append_pair(k, v);
    }
    let mut r = app
        .http
        .post(app.url(path))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form.finish());
    if let Some(c) = cookie {
        // `name=value; HttpOnly; ...` as set -> `name=value` as sent back.
        r = r.header(COOKIE, c.split(';').next().unwrap());
    }
    if let Some(o) = origin {
        r = r.header(ORIGIN, o);
    }
    read_html(r.send().await.unwrap()).await
}

async fn session_status(app: &TestApp, id: &str) -> Value {
    let (s, v) = app.get(&format!("/v1/connect-sessions/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn install_count(app: &TestApp) -> i64 {
    app.db(|conn| Ok(schema::installs::table.count().get_result::<i64>(conn)?))
        .await
}

// ---------------------------------------------------------------------------------------------
// The API
// ---------------------------------------------------------------------------------------------

async fn sessions_api(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_account(ACCOUNT).await;
    let base = json!({"account_id": ACCOUNT, "connector": "epic"});
    let with = |extra: Value| {
        let mut b = base.clone();
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let count = || async {
        app.db(|conn| {
            Ok(schema::connect_sessions::table
                .count()
                .get_result::<i64>(conn)?)
        })
        .await
    };

    // Refusals write nothing.
    let refusals = [
        (
            with(json!({"return_url": "https://elsewhere.example/done"})),
            400,
            "invalid_return_url",
        ),
        (
            with(json!({"return_url": "javascript:alert(1)"})),
            400,
            "invalid_return_url",
        ),
        (with(json!({"expires_in": 59})), 400, "invalid_request"),
        (with(json!({"expires_in": 1801})), 400, "invalid_request"),
        (
            json!({"account_id": "nobody", "connector": "epic"}),
            404,
            "not_found",
        ),
        (
            json!({"account_id": ACCOUNT, "connector": "nope"}),
            404,
            "unknown_connector",
        ),
        // Backend services only: no person signs in, nothing for a connect page to start.
        (
            json!({"account_id": ACCOUNT, "connector": "epic_backend"}),
            422,
            "unsupported_auth_type",
        ),
        (with(json!({"extra": 1})), 400, "invalid_request"),
    ];
    for (body, status, code) in refusals {
        let r = req(
            &app,
            Method::POST,
            "/v1/connect-sessions",
            Some(body.clone()),
        )
        .await;
        problem(&r, status, code);
    }
    assert_eq!(count().await, 0);

    // Expiry bounds: the longest is accepted, the default is 15 minutes.
    let before = switchboard_core::now_ms();
    let longest = create_session(&app, with(json!({"expires_in": 1800}))).await;
    let default = create_session(&app, with(json!({"return_url": RETURN_URL}))).await;
    let after = switchboard_core::now_ms();
    let at = |v: &Value| {
        switchboard_core::rfc3339_to_ms(v["expires_at"].as_str().unwrap()).expect("RFC 3339")
    };
    assert!((before + 1_800_000 - 1000..=after + 1_800_000).contains(&at(&longest)));
    assert!((before + 900_000 - 1000..=after + 900_000).contains(&at(&default)));
    assert!(default["id"].as_str().unwrap().starts_with("cns_"));
    let url = default["url"].as_str().unwrap();
    assert!(url.starts_with(&app.url("/connect/")), "{url}");
    let token = url.rsplit('/').next().unwrap().to_owned();
    assert!(token.len() >= 43, "a 256-bit token: {token}");
    assert_ne!(
        longest["url"], default["url"],
        "every session has its own link"
    );

    // The token is stored only as its SHA-256.
    let id = default["id"].as_str().unwrap().to_owned();
    let sid = id.clone();
    let stored: String = app
        .db(move |conn| {
            Ok(schema::connect_sessions::table
                .filter(schema::connect_sessions::id.eq(sid))
                .select(schema::connect_sessions::token_hash)
                .first(conn)?)
        })
        .await;
    assert_eq!(stored, hex::encode(sha2::Sha256::digest(token.as_bytes())));
    assert!(
        !app.dump_database().contains(&token),
        "plaintext link token"
    );

    // The status view.
    let v = session_status(&app, &id).await;
    assert_eq!(v["status"], "pending");
    assert_eq!(v["account"], ACCOUNT);
    assert_eq!(v["connector"], "epic");
    assert_eq!(v["return_url"], RETURN_URL);
    assert!(v["install_id"].is_null() && v["used_at"].is_null(), "{v}");
    assert!(
        v.get("url").is_none() && !v.to_string().contains(&token),
        "{v}"
    );

    // Tenant isolation: another tenant sees nothing and cannot use this tenant's account.
    let (_, other) = app.new_tenant("Other").await;
    let r = req_as(
        &app,
        &other,
        Method::GET,
        &format!("/v1/connect-sessions/{id}"),
        None,
    )
    .await;
    problem(&r, 404, "not_found");
    let r = req_as(
        &app,
        &other,
        Method::POST,
        "/v1/connect-sessions",
        Some(base.clone()),
    )
    .await;
    problem(&r, 404, "not_found");
    let r = req(&app, Method::GET, "/v1/connect-sessions/cns_unknown", None).await;
    problem(&r, 404, "not_found");
    let r = req(&app, Method::GET, "/v1/connect-sessions/a%20b", None).await;
    problem(&r, 400, "invalid_id");
    assert_eq!(count().await, 2);

    // The creation is audited.
    app.services.audit.flush().await;
    let (s, audit) = app.get("/v1/audit").await;
    assert_eq!(s, StatusCode::OK, "{audit}");
    let created = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "connect_session.created")
        .count();
    assert_eq!(created, 2, "{audit}");
}

/// `limits.max_pending_connect_sessions_per_tenant`: pending links count, used and expired ones
/// do not; beyond it 409 `quota_exceeded`, nothing written.
async fn pending_sessions_quota(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.limits.max_pending_connect_sessions_per_tenant = 2;
    })
    .await;
    app.create_account(ACCOUNT).await;
    let body = json!({"account_id": ACCOUNT, "connector": "epic"});
    let first = create_session(&app, body.clone()).await;
    create_session(&app, body.clone()).await;
    let r = req(
        &app,
        Method::POST,
        "/v1/connect-sessions",
        Some(body.clone()),
    )
    .await;
    problem(&r, 409, "quota_exceeded");
    assert_eq!(r.json["quota"], "pending_connect_sessions");
    assert_eq!(r.json["limit"], 2);
    assert!(
        r.json["detail"]
            .as_str()
            .unwrap()
            .contains("limits.max_pending_connect_sessions_per_tenant"),
        "{}",
        r.text
    );
    // Another tenant has its own quota.
    let (_, other) = app.new_tenant("Other").await;
    let r = req_as(
        &app,
        &other,
        Method::POST,
        "/v1/accounts",
        Some(json!({"id": ACCOUNT, "name": "x"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = req_as(
        &app,
        &other,
        Method::POST,
        "/v1/connect-sessions",
        Some(body.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // An expired link frees its place.
    let id = first["id"].as_str().unwrap().to_owned();
    app.db(move |conn| {
        diesel::update(schema::connect_sessions::table.find(id))
            .set(schema::connect_sessions::expires_at.eq(switchboard_core::now_ms() - 1))
            .execute(conn)?;
        Ok(())
    })
    .await;
    create_session(&app, body).await;
}

// ---------------------------------------------------------------------------------------------
// The pages
// ---------------------------------------------------------------------------------------------

async fn pages(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_account(ACCOUNT).await;
    let ehr = epic(&app).await;

    // Unknown links: a 404 page, whatever their shape.
    for path in [
        "/connect/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "/connect/x",
        "/connect/%3Cscript%3E",
    ] {
        let h = open(&app, path).await;
        assert_page(&h, 404, "This link is not valid");
        assert!(!h.text.contains("<script>"));
        let h = submit(&app, path, None, None, &[], None).await;
        assert_eq!(
            h.status,
            StatusCode::FORBIDDEN,
            "no form token: refused first"
        );
    }

    // Expired: the session's clock has run out (moved in the database, no waiting).
    let expired = create_session(
        &app,
        json!({"account_id": ACCOUNT, "connector": "epic", "expires_in": 60}),
    )
    .await;
    let eid = expired["id"].as_str().unwrap().to_owned();
    let id = eid.clone();
    app.db(move |conn| {
        diesel::update(schema::connect_sessions::table.find(id))
            .set(schema::connect_sessions::expires_at.eq(switchboard_core::now_ms() - 1))
            .execute(conn)?;
        Ok(())
    })
    .await;
    let h = open(&app, &link_path(&app, &expired)).await;
    assert_page(&h, 410, "This link has expired");
    assert!(h.cookie.is_none());
    assert_eq!(session_status(&app, &eid).await["status"], "expired");

    // The form of a pending link.
    let session = create_session(
        &app,
        json!({"account_id": ACCOUNT, "connector": "epic", "return_url": RETURN_URL}),
    )
    .await;
    let sid = session["id"].as_str().unwrap().to_owned();
    let path = link_path(&app, &session);
    let form = open(&app, &path).await;
    assert_page(&form, 200, "Connect your Epic");
    assert!(form.text.contains("<label for=\"f-endpoint\">Endpoint"));
    assert!(form.text.contains("name=\"endpoint\" type=\"url\""));
    assert!(form.text.contains("It will be able to read"));
    assert!(form.text.contains("Patient details"), "{}", form.text);
    assert!(form.text.contains(">Connect</button>"));
    for secret_or_setup in ["client_secret", "client_id", "name=\"scopes\""] {
        assert!(
            !form.text.contains(secret_or_setup),
            "the form offers {secret_or_setup}"
        );
    }
    let cookie = form.cookie.clone().expect("the form-token cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let token = form.form_token();
    assert!(
        cookie.starts_with(&format!("sb_connect_csrf={token};")),
        "{cookie}"
    );

    // CSRF: no form token, a wrong one, no cookie, another origin: 403, nothing written.
    let before = snapshot(&app).await;
    let endpoint = ehr.pasted_endpoint();
    let good = [("endpoint", endpoint.as_str())];
    let origin = app.base.clone();
    for (c, t, o) in [
        (Some(cookie.as_str()), None, None),
        (
            Some(cookie.as_str()),
            Some("wrong-token-aaaaaaaaaaaaaaaaaaaaaaaa"),
            None,
        ),
        (None, Some(token.as_str()), None),
        (
            Some(cookie.as_str()),
            Some(token.as_str()),
            Some("https://evil.example"),
        ),
    ] {
        let h = submit(&app, &path, c, t, &good, o).await;
        assert_page(&h, 403, "This form could not be verified");
    }
    assert_eq!(snapshot(&app).await, before);
    assert_eq!(session_status(&app, &sid).await["status"], "pending");

    // Invalid settings: the form again (422) with the error beside the field, the value kept,
    // nothing written, the link still usable. Same rules as `POST .../installs`.
    for (value, message) in [
        ("ftp://clinic.example/", "http"),
        ("not a url", "URL"),
        ("https://user:pw@clinic.example/", "credentials"),
    ] {
        let h = submit(
            &app,
            &path,
            Some(&cookie),
            Some(&token),
            &[("endpoint", value)],
            Some(&origin),
        )
        .await;
        assert_page(&h, 422, "Please check the form");
        assert!(
            h.text.contains("id=\"f-endpoint-error\""),
            "{value}: {}",
            h.text
        );
        assert!(h.text.contains("aria-invalid=\"true\""));
        assert!(h.text.contains(message), "{value}: {}", h.text);
        let kept = format!(
            "value=\"{}\"",
            value.replace('&', "&amp;").replace('"', "&quot;")
        );
        assert!(h.text.contains(&kept), "{value}: {}", h.text);
        assert_eq!(h.form_token(), token, "the same form token");
    }
    assert_eq!(snapshot(&app).await, before);
    assert_eq!(session_status(&app, &sid).await["status"], "pending");

    // A valid form: 303 to the EHR's authorize URL, the link consumed, the install created with
    // the normalised endpoint and the session's return URL.
    let h = submit(
        &app,
        &path,
        Some(&cookie),
        Some(&token),
        &good,
        Some(&origin),
    )
    .await;
    assert_eq!(h.status, StatusCode::SEE_OTHER, "{}", h.text);
    let authorize = h.resp_headers.get(LOCATION).unwrap().to_str().unwrap();
    assert!(
        authorize.starts_with(&format!("{}/oauth2/authorize?", ehr.front.origin)),
        "{authorize}"
    );
    assert_eq!(
        h.resp_headers.get("referrer-policy").unwrap(),
        "no-referrer"
    );
    let v = session_status(&app, &sid).await;
    assert_eq!(v["status"], "used", "{v}");
    let install = v["install_id"].as_str().expect("install_id").to_owned();
    assert_eq!(v["install_status"], "pending_authorization");
    let (s, got) = app
        .get(&format!("/v1/accounts/{ACCOUNT}/installs/{install}"))
        .await;
    assert_eq!(s, StatusCode::OK, "{got}");
    assert_eq!(got["connector"], "epic");
    assert_eq!(got["return_url"], RETURN_URL);
    assert_eq!(
        got["settings"]["endpoint"],
        format!("{}/", ehr.front.origin),
        "normalised like an install override"
    );

    // The link is single use: a second tab's POST and a reload get the "already used" page.
    let h = submit(
        &app,
        &path,
        Some(&cookie),
        Some(&token),
        &good,
        Some(&origin),
    )
    .await;
    assert_page(&h, 410, "This link was already used");
    let h = open(&app, &path).await;
    assert_page(&h, 410, "This link was already used");
    assert_eq!(install_count(&app).await, 1);

    // The browser's way on: the EHR consents, the callback lands on the return URL.
    let res = app.http.get(authorize).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    let callback = res.headers()[LOCATION].to_str().unwrap().to_owned();
    let res = app.http.get(&callback).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    let done = res.headers()[LOCATION].to_str().unwrap().to_owned();
    assert_eq!(
        done,
        format!("{RETURN_URL}?install={install}&status=authorized")
    );
    assert_authorized_and_callable(&app, &ehr, &install).await;
    assert_eq!(
        session_status(&app, &sid).await["install_status"],
        "authorized"
    );

    // Audited: used, with the install and the key that created the session.
    app.services.audit.flush().await;
    let (_, audit) = app.get("/v1/audit").await;
    let used: Vec<&Value> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "connect_session.used")
        .collect();
    assert_eq!(used.len(), 1, "{audit}");
    assert_eq!(used[0]["install_id"], install.as_str());
    assert!(used[0]["api_key_id"]
        .as_str()
        .is_some_and(|k| k.starts_with("key_")));
}

/// A connector whose customer-provided settings are required (Canvas: no default for the
/// instance and FHIR URLs): missing ones are reported beside their fields, nothing written.
async fn required_settings(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_account(ACCOUNT).await;
    let (s, v) = app
        .put(
            "/v1/connectors/canvas/setup",
            json!({"settings": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let session = create_session(&app, json!({"account_id": ACCOUNT, "connector": "canvas"})).await;
    let path = link_path(&app, &session);
    let form = open(&app, &path).await;
    assert_page(&form, 200, "Connect your Canvas");
    assert!(form.text.contains("f-instance_url"), "{}", form.text);
    assert!(form.text.contains("f-fhir_base_url"));
    assert!(
        !form.text.contains("f-api_token"),
        "a secret is never asked for"
    );
    assert!(form.text.contains("(required)"));
    let (cookie, token) = (form.cookie.clone().unwrap(), form.form_token());
    let before = snapshot(&app).await;
    let h = submit(
        &app,
        &path,
        Some(&cookie),
        Some(&token),
        &[
            ("instance_url", "https://clinic.canvasmedical.com/"),
            ("fhir_base_url", ""),
        ],
        None,
    )
    .await;
    assert_page(&h, 422, "f-fhir_base_url-error");
    assert!(h.text.contains("is required"));
    assert!(!h.text.contains("f-instance_url-error"));
    assert_eq!(snapshot(&app).await, before);
    let id = session["id"].as_str().unwrap();
    assert_eq!(session_status(&app, id).await["status"], "pending");
}

/// Two tabs submit the same link at once: exactly one creates an install (303), the other gets
/// the "already used" page. Without a `return_url` the callback ends on its own result page.
async fn single_use_under_race_and_result_page(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_account(ACCOUNT).await;
    let ehr = epic(&app).await;
    let session = create_session(&app, json!({"account_id": ACCOUNT, "connector": "epic"})).await;
    let path = link_path(&app, &session);
    let form = open(&app, &path).await;
    let (cookie, token) = (form.cookie.clone().unwrap(), form.form_token());
    let endpoint = ehr.pasted_endpoint();
    let fields = [("endpoint", endpoint.as_str())];
    let (a, b) = futures_util::join!(
        submit(&app, &path, Some(&cookie), Some(&token), &fields, None),
        submit(&app, &path, Some(&cookie), Some(&token), &fields, None),
    );
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [303, 410], "{} / {}", a.text, b.text);
    let loser = if a.status == StatusCode::GONE { &a } else { &b };
    assert_page(loser, 410, "This link was already used");
    let winner = if a.status == StatusCode::SEE_OTHER {
        &a
    } else {
        &b
    };
    assert_eq!(install_count(&app).await, 1);
    let v = session_status(&app, session["id"].as_str().unwrap()).await;
    let install = v["install_id"].as_str().unwrap().to_owned();

    let authorize = winner.resp_headers[LOCATION].to_str().unwrap();
    let res = app.http.get(authorize).send().await.unwrap();
    let callback = res.headers()[LOCATION].to_str().unwrap().to_owned();
    let page = read_html(app.http.get(&callback).send().await.unwrap()).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(page.text.contains("Connected"), "{}", page.text);
    assert!(page.text.contains(&install), "{}", page.text);
    assert_authorized_and_callable(&app, &ehr, &install).await;
}

async fn assert_authorized_and_callable(app: &TestApp, ehr: &Ehr, install: &str) {
    let row = install_row(app, install).await.expect("install row");
    assert_eq!(row.status.to_string(), "authorized");
    assert!(row.access_token.is_some());
    let patient = ehr.fhir.seed_patients(1).remove(0);
    let (s, v) = app
        .post(
            &format!("/v1/accounts/{ACCOUNT}/installs/{install}/methods/get_patient"),
            json!({"params": {"id": patient}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["id"], json!(patient));
    assert!(ehr.oauth.token_request_count() >= 1);
}

// ---------------------------------------------------------------------------------------------
// Headless Chromium
// ---------------------------------------------------------------------------------------------

/// The tenant's application behind the return URL (a stub page on loopback).
const RETURN_PAGE: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Back in the application</title></head><body style=\"font-family:system-ui,sans-serif;margin:3rem\"><h1>Back in the application</h1><p id=\"where\"></p></body></html>";

async fn in_the_browser(backend: Backend) {
    use actix_web::{web, HttpResponse};
    let tenant_app = switchboard_testkit::fhir::ServerThread::spawn(
        "tenant-app",
        |cfg: &mut web::ServiceConfig| {
            cfg.default_service(web::to(|| async {
                HttpResponse::Ok()
                    .content_type("text/html; charset=utf-8")
                    .body(RETURN_PAGE)
            }));
        },
    );
    let return_prefix = format!("http://{}/", tenant_app.addr());
    let prefix = return_prefix.clone();
    let app = TestApp::spawn_with(backend, move |s| {
        s.security.allowed_return_urls.push(prefix)
    })
    .await;
    app.create_account(ACCOUNT).await;
    let ehr = epic(&app).await;
    let return_url = format!("{return_prefix}connected");
    let session = create_session(
        &app,
        json!({"account_id": ACCOUNT, "connector": "epic", "return_url": return_url}),
    )
    .await;
    let shots = repo_root().join("target/screenshots");
    let out = tokio::process::Command::new("node")
        .arg("connect.mjs")
        .current_dir(repo_root().join("tests/browser"))
        .env("CONNECT_URL", session["url"].as_str().unwrap())
        .env("ENDPOINT", ehr.pasted_endpoint())
        .env("FIELD", "endpoint")
        .env("RETURN_PREFIX", &return_prefix)
        .env("SCREENSHOT_DIR", &shots)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("node runs (scripts/test installs the browser harness)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tests/browser/connect.mjs failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    let session_id = session["id"].as_str().unwrap();
    let v = session_status(&app, session_id).await;
    let install = v["install_id"].as_str().expect("install_id").to_owned();
    assert_eq!(
        report["final_url"],
        format!("{return_url}?install={install}&status=authorized"),
        "{report}"
    );
    let statuses: Vec<&Value> = report["pages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["status"])
        .collect();
    assert_eq!(
        statuses,
        [&json!(200), &json!(422), &Value::Null, &json!(410)]
    );
    for name in [
        "connect-01-form",
        "connect-02-invalid-setting",
        "connect-03-returned",
        "connect-04-link-used",
    ] {
        let file = shots.join(format!("{name}.png"));
        let len = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        assert!(len > 1000, "screenshot {} missing or empty", file.display());
    }
    assert_eq!(install_count(&app).await, 1);
    assert_authorized_and_callable(&app, &ehr, &install).await;
    drop(tenant_app);
}

crate::both_backends! {
    sessions_api => sessions_api;
    pending_sessions_quota => pending_sessions_quota;
    pages => pages;
    required_settings => required_settings;
    single_use_under_race_and_result_page => single_use_under_race_and_result_page;
    in_the_browser => in_the_browser;
}
