//! SMART Backend Services end to end against the real npm `oidc-provider`: a client registered
//! with `private_key_jwt` whose `jwks_uri` is the setup's hosted JWK Set URL (the provider
//! fetches Switchboard's `/jwks/{id}.json` itself), client-credentials installs with RS384 and
//! ES384 keys generated on setup save, method calls with the token against FakeFhir, setup key
//! rotation across the overlap driven by a manual clock, assertions the provider refuses (wrong
//! key, wrong `aud`, expired, not yet valid), and uploaded keys (PEM and JWK; bad ones 422).
//!
//! `testbackend` takes its token endpoint and FHIR base as whole settings (the provider and
//! FakeFhir are two servers); the shipped `epic_backend` runs against the provider laid out like
//! Epic (`/oauth2/token` under the endpoint).

use crate::support::{assert_problem, install_row, key_ring, open_tokens, Backend, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;
use switchboard_config::Settings;
use switchboard_service::ManualClock;
use switchboard_testkit::fhir::FakeFhir;
use switchboard_testkit::oidc::{OidcOptions, OidcProvider};

const ACCOUNT: &str = "acme";

const TEST_CONNECTOR: &str = r#"
id = "@ID@"
name = "Test backend services"
version = "1.0.0"
fhir_base = "{{settings.fhir_base_url}}"

[[settings]]
key = "fhir_base_url"
label = "FHIR base URL"
type = "url"
required = true
normalize = "trailing_slash"

[[settings]]
key = "token_endpoint"
label = "Token endpoint"
type = "url"
required = true

[[settings]]
key = "client_id"
label = "Client ID"
required = true

[[auth]]
type = "@TYPE@"
token_url = "{{settings.token_endpoint}}"
client_id = "{{settings.client_id}}"
scopes = "system/*.read"
jku = true
@AUD@

[[methods]]
id = "get_patient"
name = "Get Patient"
verb = "GET"
path = "Patient/{id}"

[[methods.params]]
name = "id"
in = "path"
required = true

[[methods]]
id = "search_patients"
name = "Search Patients"
verb = "GET"
path = "Patient"
"#;

fn use_test_connectors(s: &mut Settings) {
    let dir = crate::support::copy_shipped_connectors(s);
    for (id, kind, aud) in [
        ("testbackend", "oauth2_backend_services", ""),
        // An `aud` that is not the token URL.
        (
            "testbackend_aud",
            "oauth2_backend_services",
            r#"audience = "https://elsewhere.example/token""#,
        ),
    ] {
        let text = TEST_CONNECTOR
            .replace("@ID@", id)
            .replace("@TYPE@", kind)
            .replace("@AUD@", aud);
        std::fs::write(dir.join(format!("{id}.toml")), text).expect("write test connector");
    }
    s.connectors.dir = dir;
    s.backend_services.key_overlap_secs = 40;
    s.backend_services.jwks_max_age_secs = 10;
}

async fn spawn(backend: Backend, clock: Option<ManualClock>) -> TestApp {
    let app = match clock {
        Some(c) => TestApp::spawn_with_clock(backend, c, use_test_connectors).await,
        None => TestApp::spawn_with(backend, use_test_connectors).await,
    };
    app.create_account(ACCOUNT).await;
    app
}

fn provider(tolerance: u64, ttl: u64) -> OidcProvider {
    OidcProvider::start_with(
        vec![],
        OidcOptions {
            clock_tolerance_secs: tolerance,
            access_token_ttl: ttl,
            ..OidcOptions::default()
        },
    )
    .expect("oidc-provider starts")
}

fn setup_body(op: &OidcProvider, fhir: &FakeFhir, client_id: &str, key: Value) -> Value {
    json!({
        "settings": {
            "fhir_base_url": fhir.base_url(),
            "token_endpoint": op.token_url(),
            "client_id": client_id,
        },
        "signing_key": key,
    })
}

/// PUT the setup; returns the setup body (200 asserted).
async fn put_setup(app: &TestApp, connector: &str, body: Value) -> Value {
    let (s, v) = app
        .put(&format!("/v1/connectors/{connector}/setup"), body)
        .await;
    assert_eq!(s, StatusCode::OK, "setup: {v}");
    v
}

/// The public JWK Set: no API key, cacheable.
async fn fetch_jwks(_app: &TestApp, url: &str) -> (StatusCode, Option<String>, Value) {
    let r = reqwest::get(url).await.expect("jwks request");
    let status = r.status();
    let cache = r
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = r.json().await.unwrap_or(Value::Null);
    (status, cache, body)
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

fn statuses(setup: &Value) -> Vec<(String, String)> {
    setup["signing_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["kid"].as_str().unwrap().to_owned(),
                k["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn create_install(app: &TestApp, connector: &str) -> (StatusCode, Value) {
    app.post(
        &format!("/v1/accounts/{ACCOUNT}/installs"),
        json!({ "connector": connector }),
    )
    .await
}

async fn call_patient(app: &TestApp, install: &str, patient: &str) -> (StatusCode, Value) {
    app.post(
        &format!("/v1/accounts/{ACCOUNT}/installs/{install}/methods/get_patient"),
        json!({ "params": { "id": patient } }),
    )
    .await
}

async fn key_rows(app: &TestApp) -> Vec<switchboard_db::SigningKeyRow> {
    let tenant = app.tenant.clone();
    app.db(move |conn| {
        let mut all = switchboard_db::repo::signing_keys::list(conn, &tenant, "testbackend")?;
        all.extend(switchboard_db::repo::signing_keys::list(
            conn,
            &tenant,
            "epic_backend",
        )?);
        Ok(all)
    })
    .await
}

/// Every private key of the tenant, decrypted with its documented AAD.
async fn private_pems(app: &TestApp) -> Vec<String> {
    let ring = key_ring(app);
    key_rows(app)
        .await
        .iter()
        .map(|r| {
            ring.decrypt_str(
                &r.private_key,
                format!("signing_key:{}:{}:{}", r.tenant_id, r.connector_id, r.kid),
            )
            .expect("private key decrypts with its AAD")
        })
        .collect()
}

/// A line of base64 from inside a PEM (distinctive key material).
fn pem_line(pem: &str) -> String {
    pem.lines().nth(2).expect("a PEM body line").to_owned()
}

/// A line of each of the tenant's private keys: what no answer or stored error may show.
async fn private_pem_lines(app: &TestApp) -> Vec<String> {
    private_pems(app)
        .await
        .iter()
        .map(|p| pem_line(p))
        .collect()
}

/// A FHIR server with one patient that accepts any bearer token, and that patient's id.
fn fhir_with_one_patient() -> (FakeFhir, String) {
    let fhir = FakeFhir::builder()
        .seed_patients(1)
        .accept_any_bearer()
        .start();
    let patient = fhir.patient_ids().remove(0);
    (fhir, patient)
}

/// Saves the `testbackend` setup of a second tenant, `other` (client `sb-other`): its
/// `jwks_url` publishes keys that are not this tenant's. Returns that setup (200 asserted).
async fn other_tenants_setup(app: &TestApp, op: &OidcProvider, fhir: &FakeFhir) -> Value {
    let (_, other_key) = app.new_tenant("other").await;
    let (s, other) = app
        .call_as(
            &other_key,
            reqwest::Method::PUT,
            "/v1/connectors/testbackend/setup",
            Some(setup_body(op, fhir, "sb-other", json!({}))),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{other}");
    other
}

// ---------------------------------------------------------------------------------------------
// RS384 and ES384 installs
// ---------------------------------------------------------------------------------------------

async fn rs384_and_es384_installs(backend: Backend) {
    let app = spawn(backend, None).await;
    let op = provider(15, 3600);
    let fhir = FakeFhir::builder().seed_patients(1).start();
    let patient = fhir.patient_ids().remove(0);

    for (alg, client, kty) in [("RS384", "sb-rs384", "RSA"), ("ES384", "sb-es384", "EC")] {
        let setup = put_setup(
            &app,
            "testbackend",
            setup_body(&op, &fhir, client, json!({ "alg": alg })),
        )
        .await;
        let jwks_url = setup["jwks_url"].as_str().expect("jwks_url").to_owned();
        assert!(
            jwks_url.starts_with(&format!("{}/jwks/", app.base)),
            "{jwks_url}"
        );
        assert!(jwks_url.ends_with(".json"), "{jwks_url}");
        let keys = setup["signing_keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1, "{setup}");
        assert_eq!(keys[0]["alg"], alg);
        assert_eq!(keys[0]["status"], "active");
        assert_eq!(keys[0]["origin"], "generated");
        let (_, got) = app.get("/v1/connectors/testbackend/setup").await;
        assert_eq!(got["jwks_url"], json!(jwks_url));

        // The JWK Set is public and cacheable, and holds only the public key.
        let (s, cache, jwks) = fetch_jwks(&app, &jwks_url).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(cache.as_deref(), Some("public, max-age=10"));
        let key = &jwks["keys"][0];
        assert_eq!(key["kty"], kty);
        assert_eq!(key["alg"], alg);
        assert_eq!(key["use"], "sig");
        assert_eq!(key["kid"], keys[0]["kid"]);
        assert!(key.get("d").is_none() && key.get("p").is_none(), "{key}");

        op.register_jwt_client(client, &jwks_url, alg)
            .await
            .expect("client registered");
        let (s, created) = create_install(&app, "testbackend").await;
        assert_eq!(s, StatusCode::CREATED, "{created}");
        assert_eq!(created["status"], "authorized");
        assert_eq!(created["auth_type"], "oauth2_backend_services");
        let id = created["id"].as_str().unwrap().to_owned();
        let row = install_row(&app, &id).await.unwrap();
        let (at, rt) = open_tokens(&app, &row);
        let at = at.expect("access token");
        assert!(rt.is_none());
        fhir.accept_token(&at);
        let (s, v) = call_patient(&app, &id, &patient).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["data"]["id"], json!(patient));
        assert_eq!(
            fhir.last_request().unwrap().bearer(),
            Some(at.as_str()),
            "the provider's token reaches the EHR"
        );

        // No private key material in the database or the API.
        let dump = app.dump_database();
        for pem in private_pems(&app).await {
            assert!(!dump.contains(&pem_line(&pem)), "private key in plaintext");
            assert!(!setup.to_string().contains(&pem_line(&pem)));
        }

        // A new setup (after delete) gets a new key set and JWK Set URL; the old one is gone.
        let (s, _) = app
            .delete(&format!("/v1/accounts/{ACCOUNT}/installs/{id}"))
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _) = app.delete("/v1/connectors/testbackend/setup").await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _, _) = fetch_jwks(&app, &jwks_url).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(key_rows(&app).await.is_empty());
    }
    // Unknown JWK Set ids are 404 (never a route error or a 500).
    for name in ["0123.json", &format!("{}.json", "a".repeat(64)), "x"] {
        let (s, _, v) = fetch_jwks(&app, &app.url(&format!("/jwks/{name}"))).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{name}: {v}");
        assert_eq!(v["code"], "not_found");
    }
}

/// The shipped `epic_backend` connector against a provider laid out like Epic (the token
/// endpoint under `{endpoint}oauth2/token`): the README's three calls.
async fn epic_backend_in_three_calls(backend: Backend) {
    let app = spawn(backend, None).await;
    let op = OidcProvider::start_with(
        vec![],
        OidcOptions {
            token_path: Some("/oauth2/token".into()),
            ..OidcOptions::default()
        },
    )
    .expect("oidc-provider starts");
    assert_eq!(op.token_url(), format!("{}/oauth2/token", op.issuer()));
    // 1. The setup, with a generated key.
    let setup = put_setup(
        &app,
        "epic_backend",
        json!({ "settings": { "endpoint": format!("{}/", op.issuer()), "client_id": "epic-backend-app" } }),
    )
    .await;
    assert_eq!(setup["signing_keys"][0]["alg"], "RS384");
    // 2. The JWK Set URL, registered with the EHR.
    let jwks_url = setup["jwks_url"].as_str().unwrap();
    op.register_jwt_client("epic-backend-app", jwks_url, "RS384")
        .await
        .unwrap();
    // 3. An authorized install.
    let (s, created) = create_install(&app, "epic_backend").await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["status"], "authorized");
}

// ---------------------------------------------------------------------------------------------
// Rotation
// ---------------------------------------------------------------------------------------------

async fn key_rotation_keeps_installs_working(backend: Backend) {
    let clock = ManualClock::new(switchboard_core::now_ms());
    let app = spawn(backend, Some(clock.clone())).await;
    // The manual clock runs ahead of the provider's by up to ~95 s (its clock tolerance is
    // 150 s); tokens live 30 s (by the manual clock) so every phase refreshes with a new
    // assertion.
    let op = provider(150, 30);
    let (fhir, patient) = fhir_with_one_patient();
    let setup = put_setup(
        &app,
        "testbackend",
        setup_body(&op, &fhir, "sb-rotating", json!({})),
    )
    .await;
    let jwks_url = setup["jwks_url"].as_str().unwrap().to_owned();
    let old = setup["signing_keys"][0]["kid"].as_str().unwrap().to_owned();
    op.register_jwt_client("sb-rotating", &jwks_url, "RS384")
        .await
        .unwrap();
    let (s, first) = create_install(&app, "testbackend").await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    let first = first["id"].as_str().unwrap().to_owned();

    // Rotate: the new key is published first, the old one still signs.
    let (s, rotated) = app
        .post("/v1/connectors/testbackend/setup/keys/rotate", json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{rotated}");
    assert_eq!(rotated["jwks_url"], json!(jwks_url), "the URL is stable");
    let new = rotated["signing_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["status"] == "next")
        .expect("a next key")["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        statuses(&rotated),
        [(old.clone(), "active".into()), (new.clone(), "next".into())]
    );
    let (_, _, jwks) = fetch_jwks(&app, &jwks_url).await;
    assert_eq!(kids(&jwks), [old.clone(), new.clone()]);

    let versions =
        |row: &switchboard_db::Install| (row.token_version, row.last_refresh_error.clone());
    let mut seen = Vec::new();
    // Phase 1 (before the switch): a new install and a refresh, signed with the old key.
    clock.advance(Duration::from_secs(31));
    let (s, second) = create_install(&app, "testbackend").await;
    assert_eq!(s, StatusCode::CREATED, "{second}");
    let second = second["id"].as_str().unwrap().to_owned();
    let (s, v) = call_patient(&app, &first, &patient).await;
    assert_eq!(s, StatusCode::OK, "phase 1 refresh: {v}");
    seen.push(versions(&install_row(&app, &first).await.unwrap()));

    // The verifier's cached copy of the JWK Set lapses (max-age 10 s < overlap 40 s): it holds
    // the next key before that key signs.
    op.expire_client_jwks("sb-rotating").await.unwrap();

    // Phase 2 (after the switch at +40 s, before the old key retires at +80 s; the phase-1
    // tokens expired at +61 s): the new key signs.
    clock.advance(Duration::from_secs(31));
    let (_, got) = app.get("/v1/connectors/testbackend/setup").await;
    assert_eq!(
        statuses(&got),
        [
            (old.clone(), "retiring".into()),
            (new.clone(), "active".into())
        ]
    );
    let (_, _, jwks) = fetch_jwks(&app, &jwks_url).await;
    assert_eq!(kids(&jwks), [new.clone(), old.clone()], "signing key first");
    let (s, third) = create_install(&app, "testbackend").await;
    assert_eq!(s, StatusCode::CREATED, "phase 2 install: {third}");
    for id in [&first, &second] {
        let (s, v) = call_patient(&app, id, &patient).await;
        assert_eq!(s, StatusCode::OK, "phase 2 refresh: {v}");
    }
    seen.push(versions(&install_row(&app, &first).await.unwrap()));

    // Phase 3 (+93 s): the old key has retired; only the new one is published.
    clock.advance(Duration::from_secs(31));
    let (_, got) = app.get("/v1/connectors/testbackend/setup").await;
    assert_eq!(statuses(&got), [(new.clone(), "active".into())]);
    let (_, _, jwks) = fetch_jwks(&app, &jwks_url).await;
    assert_eq!(kids(&jwks), vec![new.clone()]);
    for id in [&first, &second] {
        let (s, v) = call_patient(&app, id, &patient).await;
        assert_eq!(s, StatusCode::OK, "phase 3 refresh: {v}");
    }
    seen.push(versions(&install_row(&app, &first).await.unwrap()));
    // Every phase refreshed, and no token request failed.
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
    assert!(seen.iter().all(|(_, e)| e.is_none()), "{seen:?}");

    // The next rotation deletes the retired key; ES384 on request.
    let (s, rotated) = app
        .post(
            "/v1/connectors/testbackend/setup/keys/rotate",
            json!({ "alg": "ES384" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{rotated}");
    let rows = key_rows(&app).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r.kid != old));
    assert!(rows.iter().any(|r| r.alg == "ES384"));
    // A rotation on a connector without backend services, or without a setup, is refused.
    let (s, v) = app
        .post("/v1/connectors/canvas/setup/keys/rotate", json!({}))
        .await;
    assert_problem(s, &v, 422, "unsupported_auth_type");
    let (s, v) = app
        .post(
            "/v1/connectors/testbackend_aud/setup/keys/rotate",
            json!({}),
        )
        .await;
    assert_problem(s, &v, 404, "not_found");
    let (s, v) = app
        .post(
            "/v1/connectors/testbackend/setup/keys/rotate",
            json!({ "alg": "HS256" }),
        )
        .await;
    assert_problem(s, &v, 422, "invalid_settings");
}

async fn count(app: &TestApp) -> usize {
    let tenant = app.tenant.clone();
    app.db(move |conn| Ok(switchboard_db::repo::installs::list(conn, &tenant, ACCOUNT)?.len()))
        .await
}

// ---------------------------------------------------------------------------------------------
// Refused assertions
// ---------------------------------------------------------------------------------------------

async fn refused_assertions_are_clear_install_errors(backend: Backend) {
    // The setups' keys are made ten minutes back, so that an assertion can be signed in the
    // past with them below.
    let clock = ManualClock::new(switchboard_core::now_ms() - 600_000);
    let app = spawn(backend, Some(clock.clone())).await;
    let op = provider(15, 3600);
    let (fhir, patient) = fhir_with_one_patient();

    // Wrong key: the client is registered with another setup's JWK Set.
    let other = other_tenants_setup(&app, &op, &fhir).await;
    let setup = put_setup(
        &app,
        "testbackend",
        setup_body(&op, &fhir, "sb-victim", json!({})),
    )
    .await;
    assert_ne!(setup["jwks_url"], other["jwks_url"]);
    clock.set(switchboard_core::now_ms());
    op.register_jwt_client("sb-victim", other["jwks_url"].as_str().unwrap(), "RS384")
        .await
        .unwrap();
    let (s, v) = create_install(&app, "testbackend").await;
    let hidden = private_pem_lines(&app).await;
    let hidden: Vec<&str> = hidden.iter().map(String::as_str).collect();
    assert_problem(s, &v, 422, "credentials_rejected").hides(&hidden);
    assert!(
        v["detail"].as_str().unwrap().contains("client assertion"),
        "{v}"
    );
    assert!(
        v["detail"].as_str().unwrap().contains("invalid_client"),
        "{v}"
    );
    assert_eq!(
        count(&app).await,
        0,
        "a refused assertion leaves no install"
    );

    // The right JWK Set: accepted.
    op.register_jwt_client("sb-good", setup["jwks_url"].as_str().unwrap(), "RS384")
        .await
        .unwrap();
    put_setup(
        &app,
        "testbackend",
        setup_body(&op, &fhir, "sb-good", json!({})),
    )
    .await;
    let (s, good) = create_install(&app, "testbackend").await;
    assert_eq!(s, StatusCode::CREATED, "{good}");
    let good = good["id"].as_str().unwrap().to_owned();

    // Wrong `aud`.
    let aud_setup = put_setup(
        &app,
        "testbackend_aud",
        setup_body(&op, &fhir, "sb-aud", json!({})),
    )
    .await;
    op.register_jwt_client("sb-aud", aud_setup["jwks_url"].as_str().unwrap(), "RS384")
        .await
        .unwrap();
    let (s, v) = create_install(&app, "testbackend_aud").await;
    assert_problem(s, &v, 422, "credentials_rejected");
    assert!(
        v["detail"].as_str().unwrap().contains("invalid_client"),
        "{v}"
    );
    assert_eq!(count(&app).await, 1);

    // Expired: signed nine minutes ago (exp = iat + 240 s).
    clock.set(switchboard_core::now_ms() - 540_000);
    let (s, v) = create_install(&app, "testbackend").await;
    assert_problem(s, &v, 422, "credentials_rejected");
    assert!(
        v["detail"].as_str().unwrap().contains("invalid_client"),
        "{v}"
    );
    assert_eq!(count(&app).await, 1);

    // Not yet valid, on the refresh path: an hour ahead the token has expired and the new
    // assertion's nbf is in the provider's future. A refused assertion is not transient: the
    // install needs re-authorization and the call says so.
    clock.set(switchboard_core::now_ms() + 3_600_000);
    let (s, v) = call_patient(&app, &good, &patient).await;
    assert_problem(s, &v, 409, "install_not_authorized").hides(&hidden);
    assert!(
        v["detail"].as_str().unwrap().contains("invalid_client"),
        "{v}"
    );
    let (_, got) = app
        .get(&format!("/v1/accounts/{ACCOUNT}/installs/{good}"))
        .await;
    assert_eq!(got["status"], "needs_reauthorization", "{got}");
    // Back in step: the install still needs re-authorization (no new token request).
    clock.set(switchboard_core::now_ms() + 3_600_000 - 3_500_000);
    let (s, v) = call_patient(&app, &good, &patient).await;
    assert_problem(s, &v, 409, "install_not_authorized");
}

/// The provider stops accepting the install's assertions after the install was created (the
/// client is registered again with another setup's JWK Set): the refresh is refused with
/// `invalid_client`, the install moves to `needs_reauthorization` with a clear `last_error`
/// (no key material), `install.needs_reauthorization` is written to the outbox, and the call
/// answers 409 `install_not_authorized` like a revoked refresh token.
async fn refused_assertion_on_refresh_needs_reauthorization(backend: Backend) {
    let clock = ManualClock::new(switchboard_core::now_ms());
    let app = spawn(backend, Some(clock.clone())).await;
    // Tokens live 30 s; the manual clock runs up to ~61 s ahead of the provider's (its clock
    // tolerance is 150 s).
    let op = provider(150, 30);
    let (fhir, patient) = fhir_with_one_patient();
    let other = other_tenants_setup(&app, &op, &fhir).await;
    let setup = put_setup(
        &app,
        "testbackend",
        setup_body(&op, &fhir, "sb-swapped", json!({})),
    )
    .await;
    op.register_jwt_client("sb-swapped", setup["jwks_url"].as_str().unwrap(), "RS384")
        .await
        .unwrap();
    let (s, created) = create_install(&app, "testbackend").await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (s, v) = call_patient(&app, &id, &patient).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let before = install_row(&app, &id).await.unwrap();
    assert_eq!(before.status, "authorized");

    // The client's keys are now another setup's: the next assertion is refused.
    op.register_jwt_client("sb-swapped", other["jwks_url"].as_str().unwrap(), "RS384")
        .await
        .unwrap();
    // Well past the token's expiry, however long the set-up above took in wall time.
    clock.advance(Duration::from_secs(61));
    let (s, v) = call_patient(&app, &id, &patient).await;
    let hidden = private_pem_lines(&app).await;
    let hidden: Vec<&str> = hidden.iter().map(String::as_str).collect();
    assert_problem(s, &v, 409, "install_not_authorized").hides(&hidden);
    assert!(
        v["detail"].as_str().unwrap().contains("client assertion"),
        "{v}"
    );

    let row = install_row(&app, &id).await.unwrap();
    assert_eq!(row.status, "needs_reauthorization");
    let last_error = row.last_error.clone().expect("a last_error");
    assert!(last_error.contains("invalid_client"), "{last_error}");
    assert!(last_error.contains("client assertion"), "{last_error}");
    assert!(
        hidden.iter().all(|h| !last_error.contains(h)),
        "{last_error}"
    );
    assert_eq!(
        row.token_version, before.token_version,
        "no token was stored"
    );
    let (_, got) = app
        .get(&format!("/v1/accounts/{ACCOUNT}/installs/{id}"))
        .await;
    assert_eq!(got["status"], "needs_reauthorization", "{got}");
    let install = id.clone();
    let latest = app
        .db(move |conn| switchboard_db::repo::webhooks::latest_install_event(conn, &install))
        .await;
    assert_eq!(latest.as_deref(), Some("install.needs_reauthorization"));

    // Later calls answer the same without another token request.
    let (s, v) = call_patient(&app, &id, &patient).await;
    assert_problem(s, &v, 409, "install_not_authorized");
    let row = install_row(&app, &id).await.unwrap();
    assert_eq!(row.status, "needs_reauthorization");
}

// ---------------------------------------------------------------------------------------------
// Uploaded keys
// ---------------------------------------------------------------------------------------------

/// Key pairs made by Node's crypto (PEM, and the JWK of the same key).
fn node_key(kind: &str, arg: &str) -> (String, Value) {
    let script = format!(
        "const c=require('crypto');\
         const {{privateKey}}=c.generateKeyPairSync('{kind}',{{{arg},privateKeyEncoding:{{type:'pkcs8',format:'pem'}},publicKeyEncoding:{{type:'spki',format:'pem'}}}});\
         const jwk=c.createPrivateKey(privateKey).export({{format:'jwk'}});\
         process.stdout.write(JSON.stringify({{pem:privateKey,jwk}}));"
    );
    let out = std::process::Command::new("node")
        .args(["-e", &script])
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["pem"].as_str().unwrap().to_owned(), v["jwk"].clone())
}

async fn uploaded_keys(backend: Backend) {
    let app = spawn(backend, None).await;
    let op = provider(15, 3600);
    let fhir = FakeFhir::builder().seed_patients(1).start();
    let (rsa_pem, rsa_jwk) = node_key("rsa", "modulusLength:2048");
    let (_, ec_jwk) = node_key("ec", "namedCurve:'P-384'");

    // A PKCS#8 PEM (RSA): published as-is (public part), used to sign.
    let setup = put_setup(
        &app,
        "testbackend",
        setup_body(&op, &fhir, "sb-pem", json!({ "private_key": rsa_pem })),
    )
    .await;
    assert!(!setup.to_string().contains(&pem_line(&rsa_pem)));
    assert_eq!(setup["signing_keys"][0]["origin"], "uploaded");
    assert_eq!(setup["signing_keys"][0]["alg"], "RS384");
    let jwks_url = setup["jwks_url"].as_str().unwrap().to_owned();
    let (_, _, jwks) = fetch_jwks(&app, &jwks_url).await;
    assert_eq!(jwks["keys"][0]["n"], rsa_jwk["n"]);
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    op.register_jwt_client("sb-pem", &jwks_url, "RS384")
        .await
        .unwrap();
    let (s, v) = create_install(&app, "testbackend").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(!app.dump_database().contains(&pem_line(&rsa_pem)));

    // A private JWK (EC P-384) replaces the key at once, under the same URL.
    let setup = put_setup(
        &app,
        "testbackend",
        setup_body(&op, &fhir, "sb-jwk", json!({ "private_key": ec_jwk })),
    )
    .await;
    assert_eq!(setup["jwks_url"], json!(jwks_url));
    assert_eq!(setup["signing_keys"][0]["alg"], "ES384");
    let (_, _, jwks) = fetch_jwks(&app, &jwks_url).await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    assert_eq!(jwks["keys"][0]["x"], ec_jwk["x"]);
    assert_eq!(jwks["keys"][0]["crv"], "P-384");
    op.register_jwt_client("sb-jwk", &jwks_url, "ES384")
        .await
        .unwrap();
    let (s, v) = create_install(&app, "testbackend").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(!app.dump_database().contains(ec_jwk["d"].as_str().unwrap()));

    // Bad keys: 422 naming the field, and the setup keeps its key.
    let (small_pem, _) = node_key("rsa", "modulusLength:1024");
    let (p256_pem, p256_jwk) = node_key("ec", "namedCurve:'P-256'");
    let mut public_jwk = ec_jwk.clone();
    public_jwk.as_object_mut().unwrap().remove("d");
    let before = key_rows(&app).await;
    for (bad, why) in [
        (json!({ "private_key": "not a key" }), "PEM"),
        (json!({ "private_key": small_pem }), "bits"),
        (json!({ "private_key": p256_pem }), "P-384"),
        (json!({ "private_key": p256_jwk }), "P-384"),
        (json!({ "private_key": public_jwk }), "public key"),
        (json!({ "private_key": rsa_pem, "alg": "ES384" }), "ES384"),
        (json!({ "alg": "RS256" }), "RS384 or ES384"),
        (json!({ "alg": "RS384" }), "rotate"),
    ] {
        let (s, v) = app
            .put(
                "/v1/connectors/testbackend/setup",
                setup_body(&op, &fhir, "sb-jwk", bad.clone()),
            )
            .await;
        assert_problem(s, &v, 422, "invalid_settings").hides(&[&pem_line(&rsa_pem)]);
        let errors = v["errors"].to_string();
        assert!(errors.contains("signing_key"), "{bad}: {v}");
        assert!(errors.contains(why), "{bad}: {v}");
    }
    assert_eq!(key_rows(&app).await, before, "a bad key changes nothing");
    // A connector without backend services takes no key.
    let (s, v) = app
        .put(
            "/v1/connectors/canvas/setup",
            json!({ "settings": { "fhir_base_url": fhir.base_url() }, "signing_key": {} }),
        )
        .await;
    assert_problem(s, &v, 422, "invalid_settings");
    assert!(v["errors"].to_string().contains("signing_key"), "{v}");
}

crate::both_backends! {
    backend_services_rs384_and_es384_installs => rs384_and_es384_installs;
    backend_services_epic_in_three_calls => epic_backend_in_three_calls;
    backend_services_key_rotation_keeps_installs_working => key_rotation_keeps_installs_working;
    backend_services_refused_assertions_are_clear_install_errors => refused_assertions_are_clear_install_errors;
    backend_services_uploaded_keys => uploaded_keys;
    backend_services_refused_assertion_on_refresh_needs_reauthorization => refused_assertion_on_refresh_needs_reauthorization;
}
