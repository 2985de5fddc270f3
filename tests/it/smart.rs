//! Issue 11 end to end: SMART discovery served by a local FHIR server (cached in the database,
//! shown on the setup), the RFC 9207 issuer check on every connector (Canvas- and Medplum-shaped
//! servers that send `iss`; a wrong or missing `iss` refuses the code before the token endpoint
//! sees it), discovery failures and unknown issuers reported where they can be fixed (422 at the
//! setup / at `POST .../installs`), launch context and granted scopes on the install, scope
//! checks before any upstream request, and the new connector files (generic `smart`,
//! `oracle_health`, `athenahealth`) against servers laid out like each vendor.

use crate::methods::Front;
use crate::support::{assert_problem, authorize_redirect, post_install, Backend, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashMap;
use switchboard_testkit::fhir::{FakeFhir, Fault};
use switchboard_testkit::oauth::{FakeOAuth, OAuthClient};
use url::Url;

const ACCOUNT: &str = "acme";
const CLIENT_ID: &str = "sb-smart-client";
const CLIENT_SECRET: &str = "smart-client-secret-6e1f0a2b";
const ORACLE_TENANT: &str = "ec2458f2-1e24-41c8-b71b-0e701af7583d";

async fn spawn(backend: Backend) -> TestApp {
    let app = TestApp::spawn(backend).await;
    app.create_account(ACCOUNT).await;
    app
}

fn callback_url(app: &TestApp) -> String {
    app.url("/connector/callback")
}

fn installs_path() -> String {
    format!("/v1/accounts/{ACCOUNT}/installs")
}

fn install_path(id: &str) -> String {
    format!("/v1/accounts/{ACCOUNT}/installs/{id}")
}

fn method_path(id: &str, method: &str) -> String {
    format!("/v1/accounts/{ACCOUNT}/installs/{id}/methods/{method}")
}

fn query(url: &Url) -> HashMap<String, String> {
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The browser lands on the callback (no return_url: the HTML result page).
async fn land(app: &TestApp, url: &Url) -> StatusCode {
    app.http
        .get(url.as_str())
        .send()
        .await
        .expect("callback")
        .status()
}

async fn put_setup(app: &TestApp, connector: &str, settings: Value) -> (StatusCode, Value) {
    app.put(
        &format!("/v1/connectors/{connector}/setup"),
        json!({ "settings": settings }),
    )
    .await
}

/// The test client (`CLIENT_ID`, `CLIENT_SECRET`, the app's callback), authenticating with
/// `method` (`OAuthClient::basic` or `OAuthClient::post`).
fn test_client(app: &TestApp, method: fn(&str, &str, &str) -> OAuthClient) -> OAuthClient {
    method(CLIENT_ID, CLIENT_SECRET, &callback_url(app))
}

/// Saves the Canvas setup: its instance is `oauth`'s origin, its FHIR base `fhir`'s.
async fn put_canvas_setup(
    app: &TestApp,
    oauth: &FakeOAuth,
    fhir: &FakeFhir,
) -> (StatusCode, Value) {
    put_setup(
        app,
        "canvas",
        json!({
            "instance_url": format!("{}/", oauth.origin()), "fhir_base_url": fhir.base_url(),
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET
        }),
    )
    .await
}

async fn install_count(app: &TestApp) -> i64 {
    use diesel::prelude::*;
    use switchboard_db::schema::installs::dsl as i;
    app.db(|conn| Ok(i::installs.count().get_result::<i64>(conn)?))
        .await
}

async fn discovery_rows(app: &TestApp) -> i64 {
    use diesel::prelude::*;
    use switchboard_db::schema::smart_discovery::dsl as d;
    app.db(|conn| Ok(d::smart_discovery.count().get_result::<i64>(conn)?))
        .await
}

/// A FakeOAuth under `prefix` and a FakeFhir under `fhir_prefix` serving `doc` (when given) as
/// its smart-configuration and accepting the FakeOAuth's tokens.
fn servers(
    app: &TestApp,
    prefix: &str,
    fhir_prefix: &str,
    with_iss: bool,
    doc: impl FnOnce(&FakeOAuth) -> Option<Value>,
) -> (FakeOAuth, FakeFhir) {
    let oauth = FakeOAuth::builder()
        .prefix(prefix)
        .client(test_client(app, OAuthClient::basic))
        .with_iss(with_iss)
        .start();
    let mut fhir = FakeFhir::builder()
        .prefix(fhir_prefix)
        .seed_patients(2)
        .accept_tokens_from(oauth.token_validator());
    if let Some(d) = doc(&oauth) {
        fhir = fhir.smart_configuration(d);
    }
    (oauth, fhir.start())
}

// ---------------------------------------------------------------------------------------------
// Generic SMART: discovery, the code flow, launch context, granted scopes, scope checks
// ---------------------------------------------------------------------------------------------

async fn smart_discovery_code_flow(backend: Backend) {
    let app = spawn(backend).await;
    let (oauth, fhir) = servers(&app, "/as/", "/fhir/R4/", true, |o| {
        Some(o.smart_configuration())
    });
    let (s, v) = put_setup(
        &app,
        "smart",
        json!({ "fhir_base_url": fhir.base_url(), "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let d = &v["discovered"];
    assert_eq!(d["issuer"], json!(oauth.issuer()), "{v}");
    assert_eq!(d["authorization_endpoint"], json!(oauth.authorize_url()));
    assert_eq!(d["token_endpoint"], json!(oauth.token_url()));
    assert_eq!(d["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(d["authorization_response_iss_parameter_supported"], true);
    assert!(d["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("permission-v2")));
    assert!(d["fetched_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    // Cached in the database for every replica, and shown on GET.
    assert_eq!(discovery_rows(&app).await, 1);
    let (s, got) = app.get("/v1/connectors/smart/setup").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["discovered"], v["discovered"]);
    let discovery_requests = |f: &FakeFhir| {
        f.requests()
            .iter()
            .filter(|r| r.path().ends_with("/.well-known/smart-configuration"))
            .count()
    };
    assert_eq!(discovery_requests(&fhir), 1);

    // The code flow runs on discovered endpoints and the discovered issuer.
    let (s, created) = app
        .post(&installs_path(), json!({ "connector": "smart" }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    // The fresh cached document was used: no second discovery request.
    assert_eq!(discovery_requests(&fhir), 1);
    let id = created["id"].as_str().unwrap().to_owned();
    let url = Url::parse(created["authorize_url"].as_str().unwrap()).unwrap();
    assert!(url.as_str().starts_with(&oauth.authorize_url()), "{url}");
    assert_eq!(query(&url)["aud"], fhir.base_url());
    let cb = authorize_redirect(&app, url.as_str()).await;
    assert_eq!(query(&cb)["iss"], oauth.issuer());
    assert_eq!(land(&app, &cb).await, StatusCode::OK);
    assert_eq!(oauth.token_request_count(), 1);
    let reqs = oauth.token_requests();
    assert!(
        reqs[0].header("authorization").is_some(),
        "Basic client auth"
    );

    let (s, got) = app.get(&install_path(&id)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["status"], "authorized", "{got}");
    assert_eq!(
        got["granted_scope"],
        "openid fhirUser offline_access user/Patient.rs user/Observation.rs"
    );
    assert_eq!(got["launch"]["patient"], "pat-0001", "{got}");
    // The launch context names the patient (PHI): sealed at rest.
    let dump = app.dump_database();
    assert!(dump.contains(&id));
    assert!(!dump.contains("pat-0001"), "patient id stored in plaintext");

    // A granted scope: the call goes out.
    let patient = fhir.patient_ids()[0].clone();
    let (s, v) = app
        .post(
            &method_path(&id, "get_patient"),
            json!({ "params": { "id": patient } }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Conditions were not granted: refused before sending, naming the scope.
    let before = fhir.request_count();
    let (s, v) = app
        .post(
            &method_path(&id, "search_conditions"),
            json!({ "params": { "patient": patient } }),
        )
        .await;
    assert_problem(s, &v, 403, "insufficient_scope");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("user/Condition.read"),
        "{v}"
    );
    assert_eq!(fhir.request_count(), before, "no upstream request");
    // Observations were granted (v2 `.rs` covers the v1 `.read` the library declares): the
    // call goes upstream (this FakeFhir has no charts, so it answers what it answers).
    let (_, v) = app
        .post(
            &method_path(&id, "search_observations"),
            json!({ "params": { "patient": patient, "category": "vital-signs" } }),
        )
        .await;
    assert_ne!(v["code"], "insufficient_scope", "{v}");
    assert_eq!(fhir.request_count(), before + 1);
}

/// The server advertises RFC 9207 support but its response carries no `iss`: refused, the code
/// is never redeemed.
async fn smart_missing_iss_refused_when_advertised(backend: Backend) {
    let app = spawn(backend).await;
    let (oauth, fhir) = servers(&app, "/as/", "/fhir/R4/", false, |o| {
        let mut d = o.smart_configuration();
        d["authorization_response_iss_parameter_supported"] = json!(true);
        Some(d)
    });
    let (s, v) = put_setup(
        &app,
        "smart",
        json!({ "fhir_base_url": fhir.base_url(), "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (id, cb) = start_install(&app, "smart").await;
    assert!(!query(&cb).contains_key("iss"));
    assert_eq!(land(&app, &cb).await, StatusCode::BAD_REQUEST);
    assert_eq!(oauth.token_request_count(), 0, "code not redeemed");
    let (_, got) = app.get(&install_path(&id)).await;
    assert_eq!(got["status"], "pending_authorization", "{got}");
    assert!(
        got["last_error"].as_str().unwrap().contains("issuer"),
        "{got}"
    );
}

/// Discovery down: a 422 at the setup naming the URL and the status, nothing stored. A
/// connector whose endpoints are all declared (Canvas) saves against the same server.
async fn discovery_down_is_422_at_setup(backend: Backend) {
    let app = spawn(backend).await;
    let (_oauth, fhir) = servers(&app, "/as/", "/fhir/R4/", false, |_| None);
    let (s, v) = put_setup(
        &app,
        "smart",
        json!({ "fhir_base_url": fhir.base_url(), "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET }),
    )
    .await;
    assert_problem(s, &v, 422, "discovery_failed");
    let detail = v["detail"].as_str().unwrap();
    let url = format!("{}.well-known/smart-configuration", fhir.base_url());
    assert!(detail.contains(&url), "{detail}");
    assert!(detail.contains("404"), "{detail}");
    assert!(!detail.contains(CLIENT_SECRET));
    let (s, _) = app.get("/v1/connectors/smart/setup").await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "a failed discovery stores no setup"
    );
    assert_eq!(discovery_rows(&app).await, 0);

    // Unreachable altogether: still a clear 422, never a crash.
    let (s, v) = put_setup(
        &app,
        "smart",
        json!({ "fhir_base_url": "http://127.0.0.1:9/fhir/", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET }),
    )
    .await;
    assert_problem(s, &v, 422, "discovery_failed");
    assert!(v["detail"]
        .as_str()
        .unwrap()
        .contains("http://127.0.0.1:9/fhir/.well-known/smart-configuration"));

    // Declared endpoints are never blocked by discovery.
    let (s, v) = put_setup(
        &app,
        "canvas",
        json!({ "fhir_base_url": fhir.base_url(), "instance_url": "http://127.0.0.1:9/", "client_id": "c", "client_secret": "s" }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["discovered"].is_null());
}

/// No issuer declared nor discovered: `POST .../installs` says so (naming the setting) before
/// any install exists, never the callback.
async fn no_issuer_is_422_at_install(backend: Backend) {
    let app = spawn(backend).await;
    let (oauth, fhir) = servers(&app, "/as/", "/fhir/R4/", false, |o| {
        let mut d = o.smart_configuration();
        d.as_object_mut().unwrap().remove("issuer");
        Some(d)
    });
    let (s, v) = put_setup(
        &app,
        "smart",
        json!({ "fhir_base_url": fhir.base_url(), "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["discovered"]["issuer"].is_null(), "{v}");
    let (s, v) = app
        .post(&installs_path(), json!({ "connector": "smart" }))
        .await;
    assert_problem(s, &v, 422, "issuer_unknown");
    assert!(
        v["detail"].as_str().unwrap().contains("`fhir_base_url`"),
        "{v}"
    );
    assert_eq!(install_count(&app).await, 0);
    assert_eq!(oauth.authorize_request_count(), 0);
}

/// With a zero TTL every use reads discovery again; when that read fails, a working install
/// keeps its last document (a discovery outage never breaks calls), while a setup being saved
/// reports the failure.
async fn stale_discovery_is_kept_when_rereading_fails(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| s.oauth.discovery_ttl_secs = 0).await;
    app.create_account(ACCOUNT).await;
    let (_oauth, fhir) = servers(&app, "/as/", "/fhir/R4/", false, |o| {
        Some(o.smart_configuration())
    });
    let settings = json!({ "fhir_base_url": fhir.base_url(), "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET });
    let (s, v) = put_setup(&app, "smart", settings.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, created) = app
        .post(
            &installs_path(),
            json!({ "connector": "smart", "auth_type": "oauth2_client_credentials" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["status"], "authorized", "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let discovery_reads = |f: &FakeFhir| {
        f.requests()
            .iter()
            .filter(|r| r.path().ends_with("/.well-known/smart-configuration"))
            .count()
    };
    let before = discovery_reads(&fhir);
    let requests_before = fhir.request_count();
    fhir.fail_next(Fault::Status(503));
    let (s, v) = app
        .post(
            &method_path(&id, "get_patient"),
            json!({ "params": { "id": fhir.patient_ids()[0] } }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        discovery_reads(&fhir),
        before + 1,
        "the stale document was re-read"
    );
    assert_eq!(fhir.pending_faults(), 0);
    // The 503 went to that discovery read (no retried Patient read): one read, one GET.
    assert_eq!(fhir.request_count(), requests_before + 2);
    // Saving the setup forces a read: its failure is reported, nothing is written.
    fhir.fail_next(Fault::Status(503));
    let (s, v) = put_setup(&app, "smart", settings).await;
    assert_problem(s, &v, 422, "discovery_failed");
    assert!(v["detail"].as_str().unwrap().contains("503"), "{v}");
}

// ---------------------------------------------------------------------------------------------
// Canvas and Medplum against servers that send `iss`
// ---------------------------------------------------------------------------------------------

/// An authorization-code install of `connector` up to the callback URL the browser is sent
/// to: (install id, callback URL).
async fn start_install(app: &TestApp, connector: &str) -> (String, Url) {
    let created = post_install(app, ACCOUNT, json!({ "connector": connector })).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let cb = authorize_redirect(app, created["authorize_url"].as_str().unwrap()).await;
    (id, cb)
}

async fn canvas_and_medplum_with_iss(backend: Backend) {
    let app = spawn(backend).await;
    // Canvas: OAuth under /auth/ on the instance host, FHIR at the root of the fumage host
    // (which serves the smart-configuration); the issuer is the instance URL without "/".
    let (oauth, fhir) = {
        let oauth = FakeOAuth::builder()
            .prefix("/auth/")
            .client(test_client(&app, OAuthClient::post))
            .with_iss(true)
            .start();
        let mut doc = oauth.smart_configuration();
        doc["issuer"] = json!(oauth.origin());
        let fhir = FakeFhir::builder()
            .seed_patients(1)
            .accept_tokens_from(oauth.token_validator())
            .smart_configuration(doc)
            .start();
        (oauth, fhir)
    };
    oauth.set_iss_override(Some(oauth.origin()));
    let (s, v) = put_canvas_setup(&app, &oauth, &fhir).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (id, cb) = start_install(&app, "canvas").await;
    assert_eq!(query(&cb)["iss"], oauth.origin());
    assert_eq!(land(&app, &cb).await, StatusCode::OK);
    assert_eq!(oauth.token_request_count(), 1);
    let (_, got) = app.get(&install_path(&id)).await;
    assert_eq!(got["status"], "authorized", "{got}");
    // A different issuer (even only a trailing "/"): refused, the token endpoint sees nothing.
    oauth.set_iss_override(Some(&format!("{}/", oauth.origin())));
    let (id, cb) = start_install(&app, "canvas").await;
    assert_eq!(land(&app, &cb).await, StatusCode::BAD_REQUEST);
    assert_eq!(oauth.token_request_count(), 1, "code not redeemed");
    let (_, got) = app.get(&install_path(&id)).await;
    assert_eq!(got["status"], "pending_authorization", "{got}");

    // Medplum: one server (OAuth under /oauth2/, FHIR under /fhir/R4/, smart-configuration at
    // both); the issuer is the base URL with its "/".
    let oauth = FakeOAuth::builder()
        .prefix("/oauth2/")
        .client(test_client(&app, OAuthClient::basic))
        .with_iss(true)
        .start();
    let fhir = FakeFhir::builder()
        .prefix("/fhir/R4/")
        .accept_tokens_from(oauth.token_validator())
        .smart_configuration(oauth.smart_configuration())
        .start();
    let front = Front::start(oauth.origin(), fhir.origin());
    let base = format!("{}/", front.origin);
    oauth.set_iss_override(Some(&base));
    let (s, v) = put_setup(
        &app,
        "medplum",
        json!({ "base_url": base, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (id, cb) = start_install(&app, "medplum").await;
    assert_eq!(query(&cb)["iss"], base);
    assert_eq!(land(&app, &cb).await, StatusCode::OK);
    assert_eq!(oauth.token_request_count(), 1);
    let (_, got) = app.get(&install_path(&id)).await;
    assert_eq!(got["status"], "authorized", "{got}");
    oauth.set_iss_override(Some("https://evil.example/"));
    let (_, cb) = start_install(&app, "medplum").await;
    assert_eq!(land(&app, &cb).await, StatusCode::BAD_REQUEST);
    assert_eq!(oauth.token_request_count(), 1, "code not redeemed");
}

// ---------------------------------------------------------------------------------------------
// Oracle Health and athenahealth, laid out like each vendor
// ---------------------------------------------------------------------------------------------

async fn oracle_health_provider_flow(backend: Backend) {
    let app = spawn(backend).await;
    // FHIR under /r4/{tenant}/; OAuth on another host under the tenant's SMART profile, found
    // only through discovery (Cerner's token URL is not its documented pattern).
    let oauth = FakeOAuth::builder()
        .prefix(&format!(
            "/tenants/{ORACLE_TENANT}/hosts/fhir-ehr-code/protocols/oauth2/profiles/smart-v1/"
        ))
        .client(test_client(&app, OAuthClient::basic))
        .expires_in(570)
        .rotating_refresh(false)
        .start();
    let fhir = FakeFhir::builder()
        .prefix(&format!("/r4/{ORACLE_TENANT}/"))
        .seed_patients(1)
        .accept_tokens_from(oauth.token_validator())
        .smart_configuration(oauth.smart_configuration())
        .start();
    let (s, v) = put_setup(
        &app,
        "oracle_health",
        json!({
            "fhir_host": format!("{}/", fhir.origin()), "tenant_id": ORACLE_TENANT,
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET
        }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["discovered"]["token_endpoint"], json!(oauth.token_url()));
    let (s, created) = app
        .post(&installs_path(), json!({ "connector": "oracle_health" }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let url = Url::parse(created["authorize_url"].as_str().unwrap()).unwrap();
    assert!(url.as_str().starts_with(&oauth.authorize_url()));
    // `aud` is required by Oracle Health: the tenant's FHIR base.
    assert_eq!(
        query(&url)["aud"],
        format!("{}/r4/{ORACLE_TENANT}/", fhir.origin())
    );
    assert!(query(&url)["scope"].contains("user/Patient.read"));
    let cb = authorize_redirect(&app, url.as_str()).await;
    assert_eq!(land(&app, &cb).await, StatusCode::OK);
    let reqs = oauth.token_requests();
    assert_eq!(reqs.len(), 1);
    assert!(reqs[0]
        .header("authorization")
        .is_some_and(|h| h.starts_with("Basic ")));
    assert!(!String::from_utf8_lossy(&reqs[0].body).contains("client_secret"));
    let (_, got) = app.get(&install_path(&id)).await;
    assert_eq!(got["status"], "authorized", "{got}");
    assert!(got["expires_at"].is_string());
    let (s, v) = app
        .post(
            &method_path(&id, "get_patient"),
            json!({ "params": { "id": fhir.patient_ids()[0] } }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(fhir
        .last_request()
        .unwrap()
        .path()
        .starts_with(&format!("/r4/{ORACLE_TENANT}/Patient/")));
    // Oracle Health needs one identifying parameter: refused locally without one.
    let before = fhir.request_count();
    let (s, v) = app
        .post(
            &method_path(&id, "search_patients"),
            json!({ "params": { "gender": "female" } }),
        )
        .await;
    assert_problem(s, &v, 422, "invalid_params");
    assert_eq!(fhir.request_count(), before);
}

async fn athenahealth_practice_searches(backend: Backend) {
    let app = spawn(backend).await;
    // One host: OAuth under /oauth2/v1/, FHIR under /fhir/r4/ (smart-configuration there only).
    let oauth = FakeOAuth::builder()
        .prefix("/oauth2/v1/")
        .client(test_client(&app, OAuthClient::basic))
        .start();
    let mut doc = oauth.smart_configuration();
    doc["issuer"] = json!("https://athena.okta.com/oauth2/aus2k");
    let fhir = FakeFhir::builder()
        .prefix("/fhir/r4/")
        .seed_patients(3)
        .accept_tokens_from(oauth.token_validator())
        .smart_configuration(doc)
        .start();
    let front = Front::start(oauth.origin(), fhir.origin());
    let (s, v) = put_setup(
        &app,
        "athenahealth",
        json!({
            "host": format!("{}/", front.origin), "practice_id": "195900",
            "system_client_id": CLIENT_ID, "system_client_secret": CLIENT_SECRET
        }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["discovered"]["issuer"],
        "https://athena.okta.com/oauth2/aus2k"
    );
    let (s, created) = app
        .post(&installs_path(), json!({ "connector": "athenahealth" }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["auth_type"], "oauth2_client_credentials");
    assert_eq!(created["status"], "authorized", "{created}");
    assert_eq!(created["granted_scope"], "system/Patient.rs");
    let reqs = oauth.token_requests();
    assert_eq!(reqs.len(), 1);
    assert!(
        reqs[0].header("authorization").is_some(),
        "Basic client auth"
    );
    let id = created["id"].as_str().unwrap().to_owned();
    // Every search names the practice.
    let (s, v) = app
        .post(
            &method_path(&id, "search_patients"),
            json!({ "params": { "family": "Smith" } }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let last = fhir.last_request().unwrap();
    let pairs = last.query_pairs();
    assert!(
        pairs.contains(&(
            "ah-practice".to_owned(),
            "Organization/a-1.Practice-195900".to_owned()
        )),
        "{pairs:?}"
    );
    assert!(pairs.contains(&("family".to_owned(), "Smith".to_owned())));
    // A read does not carry it.
    let (s, v) = app
        .post(
            &method_path(&id, "get_patient"),
            json!({ "params": { "id": fhir.patient_ids()[0] } }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(fhir.last_request().unwrap().query_pairs().is_empty());
    // The token is reused (athena rate-limits new tokens to 50/min): one token request.
    assert_eq!(oauth.token_request_count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Fully-declared connectors (Epic, Canvas, Medplum): best-effort discovery
// ---------------------------------------------------------------------------------------------

/// Epic declares every endpoint and its issuer and also `[discovery]`: the setup save reads the
/// document with `Epic-Client-ID` (Epic can override endpoints per client), caches it and shows
/// it; declared endpoints keep winning.
async fn epic_discovery_sends_client_id(backend: Backend) {
    let app = spawn(backend).await;
    let (oauth, fhir) = servers(&app, "/as/", "/api/FHIR/R4/", false, |o| {
        Some(o.smart_configuration())
    });
    let endpoint = format!("{}/", fhir.origin());
    let (s, v) = put_setup(
        &app,
        "epic",
        json!({ "endpoint": endpoint, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["discovered"]["issuer"], json!(oauth.issuer()), "{v}");
    assert_eq!(v["discovered"]["token_endpoint"], json!(oauth.token_url()));
    assert!(v.get("discovery_error").is_none(), "{v}");
    let seen = fhir.discovery_requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("epic-client-id"), Some(CLIENT_ID));
    assert!(!seen[0]
        .headers
        .iter()
        .any(|(_, v)| v.contains(CLIENT_SECRET)));
    assert_eq!(discovery_rows(&app).await, 1);
    let (s, got) = app.get("/v1/connectors/epic/setup").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["discovered"], v["discovered"]);
    // Declared endpoints win over the discovered ones.
    let (s, created) = app
        .post(&installs_path(), json!({ "connector": "epic" }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let url = created["authorize_url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{endpoint}oauth2/authorize")),
        "{url}"
    );
    assert_eq!(
        fhir.discovery_requests().len(),
        1,
        "the cached document was used"
    );
}

/// Discovery down for Canvas (404) and Medplum (404, then nothing listening): the setup is
/// saved (200) with a `discovery_error` naming the URL and the status, `discovered` is null,
/// and the install and code flow work on the declared endpoints.
async fn declared_connectors_save_when_discovery_is_down(backend: Backend) {
    let app = spawn(backend).await;
    // Canvas: OAuth under /auth/ on the instance host; the fumage host has no document.
    let oauth = FakeOAuth::builder()
        .prefix("/auth/")
        .client(test_client(&app, OAuthClient::post))
        .with_iss(true)
        .start();
    let fhir = FakeFhir::builder()
        .seed_patients(1)
        .accept_tokens_from(oauth.token_validator())
        .start();
    oauth.set_iss_override(Some(oauth.origin()));
    let (s, v) = put_canvas_setup(&app, &oauth, &fhir).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["discovered"].is_null(), "{v}");
    let err = v["discovery_error"].as_str().unwrap();
    let url = format!("{}.well-known/smart-configuration", fhir.base_url());
    assert!(err.contains(&url) && err.contains("404"), "{err}");
    assert!(!err.contains(CLIENT_SECRET));
    let (s, got) = app.get("/v1/connectors/canvas/setup").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["discovery_error"], v["discovery_error"]);
    assert!(got["discovered"].is_null());
    assert_eq!(fhir.discovery_requests().len(), 1);
    assert_eq!(
        fhir.request_count(),
        0,
        "a missing document is not a FHIR hit"
    );
    let (id, cb) = start_install(&app, "canvas").await;
    assert_eq!(land(&app, &cb).await, StatusCode::OK);
    assert_eq!(oauth.token_request_count(), 1);
    let (_, got) = app.get(&install_path(&id)).await;
    assert_eq!(got["status"], "authorized", "{got}");

    // Medplum: OAuth under /oauth2/ and FHIR under /fhir/R4/ behind one origin, no document.
    let oauth = FakeOAuth::builder()
        .prefix("/oauth2/")
        .client(test_client(&app, OAuthClient::basic))
        .start();
    let fhir = FakeFhir::builder()
        .prefix("/fhir/R4/")
        .accept_tokens_from(oauth.token_validator())
        .start();
    let front = Front::start(oauth.origin(), fhir.origin());
    let base = format!("{}/", front.origin);
    // Nothing listening first: still saved, the error names the URL.
    let (s, v) = put_setup(
        &app,
        "medplum",
        json!({ "base_url": "http://127.0.0.1:9/", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["discovery_error"]
        .as_str()
        .unwrap()
        .contains("http://127.0.0.1:9/fhir/R4/.well-known/smart-configuration"));
    let (s, v) = put_setup(
        &app,
        "medplum",
        json!({ "base_url": base, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["discovered"].is_null(), "{v}");
    assert!(
        v["discovery_error"].as_str().unwrap().contains("404"),
        "{v}"
    );
    let (id, cb) = start_install(&app, "medplum").await;
    assert_eq!(land(&app, &cb).await, StatusCode::OK);
    assert_eq!(oauth.token_request_count(), 1);
    let (_, got) = app.get(&install_path(&id)).await;
    assert_eq!(got["status"], "authorized", "{got}");
}

/// A Medplum-shaped server whose document advertises
/// `authorization_response_iss_parameter_supported`: a callback without `iss` is refused even
/// though Medplum declares its issuer, and the code is not redeemed.
async fn medplum_missing_iss_refused_when_advertised(backend: Backend) {
    let app = spawn(backend).await;
    let oauth = FakeOAuth::builder()
        .prefix("/oauth2/")
        .client(test_client(&app, OAuthClient::basic))
        .with_iss(false)
        .start();
    let mut doc = oauth.smart_configuration();
    doc["authorization_response_iss_parameter_supported"] = json!(true);
    let fhir = FakeFhir::builder()
        .prefix("/fhir/R4/")
        .accept_tokens_from(oauth.token_validator())
        .smart_configuration(doc)
        .start();
    let front = Front::start(oauth.origin(), fhir.origin());
    let base = format!("{}/", front.origin);
    let (s, v) = put_setup(
        &app,
        "medplum",
        json!({ "base_url": base, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["discovered"]["authorization_response_iss_parameter_supported"], true,
        "{v}"
    );
    let (id, cb) = start_install(&app, "medplum").await;
    assert!(!query(&cb).contains_key("iss"));
    assert_eq!(land(&app, &cb).await, StatusCode::BAD_REQUEST);
    assert_eq!(oauth.token_request_count(), 0, "code not redeemed");
    let (_, got) = app.get(&install_path(&id)).await;
    assert_eq!(got["status"], "pending_authorization", "{got}");
}

crate::both_backends! {
    smart_discovery_served_code_flow_scopes_and_launch => smart_discovery_code_flow;
    smart_missing_iss_refused_when_advertised_no_code_redeemed => smart_missing_iss_refused_when_advertised;
    smart_discovery_down_is_422_at_setup => discovery_down_is_422_at_setup;
    smart_no_issuer_is_422_at_install => no_issuer_is_422_at_install;
    smart_stale_discovery_is_kept_when_rereading_fails => stale_discovery_is_kept_when_rereading_fails;
    smart_canvas_and_medplum_complete_with_iss_and_refuse_a_wrong_one => canvas_and_medplum_with_iss;
    smart_oracle_health_provider_code_flow => oracle_health_provider_flow;
    smart_athenahealth_client_credentials_and_practice_searches => athenahealth_practice_searches;
    smart_epic_discovery_sends_epic_client_id => epic_discovery_sends_client_id;
    smart_declared_connectors_save_when_discovery_is_down => declared_connectors_save_when_discovery_is_down;
    smart_medplum_missing_iss_refused_when_advertised => medplum_missing_iss_refused_when_advertised;
}
