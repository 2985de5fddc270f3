//! OAuth installs through the shared `/connector/callback`, end to end: authorization code with
//! PKCE against the real npm `oidc-provider` (client_secret_basic, client_secret_post, public
//! client), client credentials, static bearer tokens, every failure path of the callback against
//! the scriptable `FakeOAuth` (unknown / expired / replayed state, access_denied, RFC 9207 issuer
//! mismatch, token endpoint faults), return_url checks, re-authorisation, revocation on delete,
//! and "no token, code, state, verifier or secret in plaintext anywhere in the database".
//!
//! The shipped connectors build their OAuth endpoints as `{{settings.endpoint}}oauth2/...`, which
//! cannot point at oidc-provider's `/auth` and `/token`; these tests load the shipped files plus
//! test connectors (`testsmart` = client_secret_basic, `testpost`, `testpublic`) whose endpoint
//! URLs, issuer and revocation URL are whole settings.

use crate::support::{
    assert_problem, install_row, key_ring, log_capture, open_tokens, Backend, TestApp,
};
use diesel::prelude::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use switchboard_config::Settings;
use switchboard_core::{ms_to_rfc3339, now_ms};
use switchboard_db::repo::installs;
use switchboard_db::{Install, OAuthState};
use switchboard_testkit::fhir::FakeFhir;
use switchboard_testkit::oauth::{pkce_challenge, FakeOAuth, OAuthClient, TokenFault};
use switchboard_testkit::oidc::{OidcClient, OidcOptions, OidcProvider};
use url::Url;

/// FHIR base of the test installs (only rendered into `aud`; nothing calls it).
const FHIR_BASE: &str = "http://127.0.0.1:9/fhir/R4/";
const RETURN_URL: &str = "https://console.example/done?from=test";
const ACCOUNT: &str = "acme";
const INTROSPECTOR: &str = "introspector";
const INTROSPECTOR_SECRET: &str = "introspector-secret-5c1d0b7e";
const FAKE_CLIENT: &str = "sb-fake-client";
const FAKE_SECRET: &str = "fake-client-secret-93b1e4d2";
const DEFAULT_SCOPES: &str = "openid fhirUser offline_access patient/*.read";

// ---------------------------------------------------------------------------------------------
// Test connectors and app start-up
// ---------------------------------------------------------------------------------------------

const TEST_CONNECTOR: &str = r#"
id = "@ID@"
name = "Test SMART (@AUTH@)"
version = "1.0.0"
description = "A SMART-style connector whose OAuth endpoints are whole settings (tests only)."
fhir_base = "{{settings.fhir_base_url}}"

[[settings]]
key = "fhir_base_url"
label = "FHIR base URL"
type = "url"
required = true
normalize = "trailing_slash"
install_override = true

[[settings]]
key = "authorize_endpoint"
label = "Authorization endpoint"
type = "url"
required = true

[[settings]]
key = "token_endpoint"
label = "Token endpoint"
type = "url"
required = true

[[settings]]
key = "revocation_endpoint"
label = "Revocation endpoint"
type = "url"
required = true

[[settings]]
key = "issuer"
label = "Issuer"
type = "url"
required = true

[[settings]]
key = "client_id"
label = "Client ID"
required = true

[[settings]]
key = "client_secret"
label = "Client Secret"
secret = true

[[settings]]
key = "scopes"
label = "Scopes"
default = "openid fhirUser offline_access patient/*.read"

[[settings]]
key = "system_scopes"
label = "System scopes"
default = "system/*.read"

[[settings]]
key = "api_token"
label = "API token"
secret = true

[[auth]]
type = "oauth2_authorization_code"
authorize_url = "{{settings.authorize_endpoint}}"
token_url = "{{settings.token_endpoint}}"
client_id = "{{settings.client_id}}"
@SECRET@
client_auth = "@AUTH@"
scopes = "{{settings.scopes}}"
refresh = "rotating"
issuer = "{{settings.issuer}}"
revocation_url = "{{settings.revocation_endpoint}}"
authorize_params = { aud = "{{fhir_base}}" }
@MORE_AUTH@

[[methods]]
id = "get_patient"
name = "Get Patient"
verb = "GET"
path = "Patient/{id}"

[[methods.params]]
name = "id"
in = "path"
required = true
"#;

const MORE_AUTH: &str = r#"
[[auth]]
type = "oauth2_client_credentials"
token_url = "{{settings.token_endpoint}}"
client_id = "{{settings.client_id}}"
client_secret = "{{settings.client_secret}}"
client_auth = "client_secret_basic"
scopes = "{{settings.system_scopes}}"
revocation_url = "{{settings.revocation_endpoint}}"

[[auth]]
type = "static_bearer"
token = "{{settings.api_token}}"
"#;

fn test_connector(id: &str, client_auth: &str, more_auth: bool) -> String {
    let secret = if client_auth == "none" {
        ""
    } else {
        r#"client_secret = "{{settings.client_secret}}""#
    };
    TEST_CONNECTOR
        .replace("@ID@", id)
        .replace("@AUTH@", client_auth)
        .replace("@SECRET@", secret)
        .replace("@MORE_AUTH@", if more_auth { MORE_AUTH } else { "" })
}

/// Points `connectors.dir` at a copy of the shipped connectors plus the test connectors (in the
/// app's own temp dir, next to its key file).
fn use_test_connectors(s: &mut Settings) {
    let dir = crate::support::copy_shipped_connectors(s);
    for (id, auth, more) in [
        ("testsmart", "client_secret_basic", true),
        ("testpost", "client_secret_post", false),
        ("testpublic", "none", false),
    ] {
        std::fs::write(
            dir.join(format!("{id}.toml")),
            test_connector(id, auth, more),
        )
        .expect("write test connector");
    }
    s.connectors.dir = dir;
}

async fn spawn(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let app = TestApp::spawn_with(backend, |s| {
        use_test_connectors(s);
        tweak(s);
    })
    .await;
    app.create_account(ACCOUNT).await;
    app
}

fn callback_url(app: &TestApp) -> String {
    app.url("/connector/callback")
}

async fn put_setup(app: &TestApp, connector: &str, settings: Value) {
    let (s, v) = app
        .put(
            &format!("/v1/connectors/{connector}/setup"),
            json!({ "settings": settings }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "setup: {v}");
    assert!(
        !v.to_string().contains("secret-"),
        "setup response must mask secrets: {v}"
    );
}

fn installs_path(id: &str) -> String {
    format!("/v1/accounts/{ACCOUNT}/installs/{id}")
}

/// POST an install; returns the 201 body.
async fn create_install(app: &TestApp, body: Value) -> Value {
    crate::support::post_install(app, ACCOUNT, body).await
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------------------------

/// Query parameters of a URL; panics on a repeated parameter.
fn query(url: &Url) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (k, v) in url.query_pairs() {
        assert!(
            out.insert(k.to_string(), v.to_string()).is_none(),
            "parameter {k} repeated in {url}"
        );
    }
    out
}

fn without_query(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
}

/// What the browser sees when it lands on the callback.
struct Landing {
    status: StatusCode,
    location: Option<Url>,
    headers: reqwest::header::HeaderMap,
    body: String,
}

async fn land(app: &TestApp, url: &str) -> Landing {
    let res = app.http.get(url).send().await.expect("callback request");
    let status = res.status();
    let headers = res.headers().clone();
    let location = headers
        .get("location")
        .map(|l| Url::parse(l.to_str().expect("ascii location")).expect("absolute location"));
    let body = res.text().await.expect("callback body");
    Landing {
        status,
        location,
        headers,
        body,
    }
}

impl Landing {
    /// A 302 back to `return_url` carrying exactly the original query plus install/status and
    /// optionally error.
    fn assert_redirect(&self, return_url: &str, install: &str, status: &str, error: Option<&str>) {
        assert_eq!(self.status, StatusCode::FOUND, "body: {}", self.body);
        let loc = self.location.as_ref().expect("Location");
        let want = Url::parse(return_url).unwrap();
        assert_eq!(without_query(loc), without_query(&want), "{loc}");
        let q = query(loc);
        let mut expected: HashMap<String, String> = query(&want);
        expected.insert("install".into(), install.into());
        expected.insert("status".into(), status.into());
        if let Some(e) = error {
            expected.insert("error".into(), e.into());
        }
        assert_eq!(q, expected, "redirect {loc}");
        assert_eq!(
            self.headers
                .get("cache-control")
                .and_then(|v| v.to_str().ok()),
            Some("no-store")
        );
    }

    /// The "this sign-in link is no longer valid" page: 400, HTML, nothing about any install.
    fn assert_invalid_state(&self) {
        assert_eq!(self.status, StatusCode::BAD_REQUEST, "body: {}", self.body);
        assert!(self.location.is_none());
        assert!(self
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("text/html")));
        assert!(self.body.contains("no longer valid"), "{}", self.body);
        assert!(!self.body.contains("ins_"), "{}", self.body);
    }
}

/// Drives FakeOAuth's /authorize like a browser: returns the callback URL it redirects to.
async fn fake_login(app: &TestApp, authorize_url: &str) -> Url {
    let loc = crate::support::authorize_redirect(app, authorize_url).await;
    assert_eq!(without_query(&loc), callback_url(app));
    loc
}

// ---------------------------------------------------------------------------------------------
// Database helpers
// ---------------------------------------------------------------------------------------------

async fn states_of(app: &TestApp, id: &str) -> Vec<OAuthState> {
    use switchboard_db::schema::oauth_states::dsl as o;
    let id = id.to_owned();
    app.db(move |c| {
        Ok(o::oauth_states
            .filter(o::install_id.eq(id))
            .select(OAuthState::as_select())
            .load(c)?)
    })
    .await
}

async fn install_count(app: &TestApp) -> i64 {
    use switchboard_db::schema::installs::dsl as i;
    app.db(move |c| Ok(i::installs.count().get_result(c)?))
        .await
}

/// The pending state row that belongs to this authorize URL (matched through PKCE: the
/// decrypted verifier's S256 challenge equals the URL's `code_challenge`), and its verifier.
async fn state_for(app: &TestApp, install: &str, authorize: &Url) -> (OAuthState, String) {
    let challenge = query(authorize)["code_challenge"].clone();
    let ring = key_ring(app);
    let mut found = None;
    for st in states_of(app, install).await {
        let verifier = ring
            .decrypt_str(&st.verifier, format!("state:{}:verifier", st.state_hash))
            .expect("verifier decrypts with its AAD");
        if pkce_challenge(&verifier) == challenge {
            assert!(found.is_none(), "two states with the same challenge");
            found = Some((st, verifier));
        }
    }
    found.expect("a stored state whose verifier matches the code_challenge")
}

/// Asserts none of `secrets` appears in what Switchboard logged, after proving the capture saw
/// this install.
fn assert_not_logged(install: &str, secrets: &[(&str, &str)]) {
    let logs = log_capture().text();
    assert!(
        logs.contains(install),
        "the log capture must have seen install {install}"
    );
    for (what, value) in secrets {
        assert!(value.len() >= 8, "{what} too short to search for");
        assert!(!logs.contains(value), "{what} found in the logs");
    }
}

fn assert_absent(dump: &str, what: &str, value: &str) {
    assert!(value.len() >= 8, "{what} too short to search for");
    assert!(
        !dump.contains(value),
        "{what} found in plaintext in the database dump"
    );
}

// ---------------------------------------------------------------------------------------------
// Authorize URL checks
// ---------------------------------------------------------------------------------------------

/// Checks every parameter of an authorization request; returns (state, code_challenge).
fn check_authorize_url(
    app: &TestApp,
    url: &Url,
    endpoint: &str,
    client_id: &str,
    scopes: &str,
    aud: &str,
) -> (String, String) {
    assert_eq!(without_query(url), endpoint);
    let q = query(url);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], client_id);
    assert_eq!(q["redirect_uri"], callback_url(app));
    assert_eq!(
        q["redirect_uri"],
        format!(
            "{}/connector/callback",
            app.services.settings().server.public_url
        )
    );
    assert_eq!(q["scope"], scopes);
    let state = q["state"].clone();
    assert!(
        state.len() >= 22
            && state
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "state must be long and URL-safe: {state}"
    );
    let challenge = q["code_challenge"].clone();
    assert_eq!(challenge.len(), 43, "S256 challenge is 43 base64url chars");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["aud"], aud, "the connector declares aud = fhir_base");
    assert_eq!(q.len(), 8, "unexpected parameters: {q:?}");
    (state, challenge)
}

// ---------------------------------------------------------------------------------------------
// A. Authorization code against the real oidc-provider
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Basic,
    Post,
    Public,
}

async fn introspect(op: &OidcProvider, token: &str, hint: &str) -> Value {
    let res = reqwest::Client::new()
        .post(op.introspection_url())
        .basic_auth(INTROSPECTOR, Some(INTROSPECTOR_SECRET))
        .form(&[("token", token), ("token_type_hint", hint)])
        .send()
        .await
        .expect("introspection");
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.expect("introspection JSON")
}

fn introspector(redirect: &str) -> OidcClient {
    OidcClient::basic(INTROSPECTOR, INTROSPECTOR_SECRET, redirect)
        .grant_types(&["client_credentials"])
}

async fn real_provider_flow(backend: Backend, kind: Kind) {
    log_capture();
    let app = spawn(backend, |_| {}).await;
    let redirect = callback_url(&app);
    let (connector, client) = match kind {
        Kind::Basic => (
            "testsmart",
            OidcClient::basic("sb-basic", "basic-secret-1f9c2e4a", &redirect),
        ),
        Kind::Post => (
            "testpost",
            OidcClient::post("sb-post", "post-secret-77ad01c3", &redirect),
        ),
        Kind::Public => ("testpublic", OidcClient::public("sb-public", &redirect)),
    };
    let op = OidcProvider::start_with(
        vec![client.clone(), introspector(&redirect)],
        OidcOptions {
            patient: Some("pat-smart-4711".into()),
            encounter: Some("enc-smart-0042".into()),
            ..OidcOptions::default()
        },
    )
    .expect("oidc-provider starts");

    let mut settings = json!({
        "fhir_base_url": FHIR_BASE,
        "authorize_endpoint": op.authorize_url(),
        "token_endpoint": op.token_url(),
        "revocation_endpoint": op.revocation_url(),
        "issuer": op.issuer(),
        "client_id": client.client_id,
    });
    if let Some(secret) = &client.client_secret {
        settings["client_secret"] = json!(secret);
    }
    put_setup(&app, connector, settings).await;

    // The public client goes without a return_url: the callback shows an HTML page.
    let return_url = (kind != Kind::Public).then_some(RETURN_URL);
    let mut body = json!({ "connector": connector });
    if let Some(r) = return_url {
        body["return_url"] = json!(r);
    }
    let created = create_install(&app, body).await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ins_"), "{created}");
    assert_eq!(created["status"], "pending_authorization");
    assert_eq!(created["auth_type"], "oauth2_authorization_code");
    let authorize = Url::parse(created["authorize_url"].as_str().expect("authorize_url")).unwrap();
    let (state, challenge) = check_authorize_url(
        &app,
        &authorize,
        &op.authorize_url(),
        &client.client_id,
        DEFAULT_SCOPES,
        FHIR_BASE,
    );

    // The stored state: hashed, bound to this install and the provider's token endpoint, with
    // the PKCE verifier encrypted.
    let (st, verifier) = state_for(&app, &id, &authorize).await;
    assert_ne!(st.state_hash, state);
    assert_eq!(st.state_hash.len(), 64);
    assert_eq!(pkce_challenge(&verifier), challenge);
    assert_eq!(st.token_url, op.token_url());
    assert_eq!(st.redirect_uri, redirect);
    assert_eq!(st.expected_issuer.as_deref(), Some(op.issuer()));
    assert_eq!(st.return_url.as_deref(), return_url);
    let ttl = st.expires_at - st.created_at;
    assert_eq!(ttl, 600_000, "default oauth.state_ttl_secs is 600 s");

    // The user signs in and consents at the real provider.
    let cb = op
        .complete_login(&OidcProvider::browser_client(), authorize.as_str())
        .await
        .unwrap_or_else(|e| panic!("login failed: {e:#}\nprovider stderr: {}", op.stderr()));
    assert_eq!(without_query(&cb), redirect);
    let cbq = query(&cb);
    assert_eq!(cbq["state"], state);
    assert_eq!(cbq.get("iss").map(String::as_str), Some(op.issuer()));
    let code = cbq.get("code").expect("code in callback").clone();

    let landing = land(&app, cb.as_str()).await;
    match return_url {
        Some(r) => landing.assert_redirect(r, &id, "authorized", None),
        None => {
            assert_eq!(landing.status, StatusCode::OK, "{}", landing.body);
            assert!(landing
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|c| c.starts_with("text/html")));
            assert!(landing.body.contains(&id), "{}", landing.body);
            assert!(landing.body.contains("authorized"), "{}", landing.body);
            assert!(!landing.body.contains(&code) && !landing.body.contains(&state));
        }
    }
    let page = landing.body.clone();

    // The install as the API shows it.
    let (s, got) = app.get(&installs_path(&id)).await;
    assert_eq!(s, StatusCode::OK, "{got}");
    assert_eq!(got["status"], "authorized", "{got}");
    assert!(got["last_error"].is_null(), "{got}");
    let scopes: Vec<&str> = got["scopes"]
        .as_array()
        .expect("scopes")
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        scopes.contains(&"openid") && scopes.contains(&"patient/*.read"),
        "{got}"
    );
    assert_eq!(got["context"]["patient"], "pat-smart-4711", "{got}");
    assert_eq!(got["context"]["encounter"], "enc-smart-0042", "{got}");

    // The database: tokens stored encrypted, state consumed.
    let row = install_row(&app, &id).await.expect("install row");
    assert_eq!(row.status, "authorized");
    assert_eq!(row.token_version, 1);
    let expires = row.token_expires_at.expect("token_expires_at");
    let now = now_ms();
    assert!(
        (now + 3_500_000..=now + 3_600_000).contains(&expires),
        "expires_at {expires} vs now {now}"
    );
    assert_eq!(got["expires_at"], ms_to_rfc3339(expires));
    assert!(states_of(&app, &id).await.is_empty(), "state is single-use");
    let (at, rt) = open_tokens(&app, &row);
    let at = at.expect("access token stored");
    let rt = rt.expect("refresh token stored");
    // They are the provider's live tokens for this client.
    let info = introspect(&op, &at, "access_token").await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["client_id"], client.client_id.as_str(), "{info}");
    let info = introspect(&op, &rt, "refresh_token").await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["client_id"], client.client_id.as_str(), "{info}");
    // Never in an API response or the result page.
    assert!(!page.contains(&at) && !page.contains(&rt) && !page.contains(&verifier));
    let text = got.to_string();
    assert!(!text.contains(&at) && !text.contains(&rt));
    let (_, list) = app.get(&format!("/v1/accounts/{ACCOUNT}/installs")).await;
    assert_eq!(list["installs"][0]["status"], "authorized", "{list}");
    assert!(!list.to_string().contains(&at) && !list.to_string().contains(&rt));

    // G (with the real provider): nothing secret in plaintext in the database.
    let dump = app.dump_database();
    assert!(dump.contains(&id), "the dump must see the install");
    // Issue 11: the launch context names the patient (PHI) and is sealed at rest now.
    assert!(
        !dump.contains("pat-smart-4711"),
        "the patient id must not be stored in plaintext"
    );
    assert_absent(&dump, "access token", &at);
    assert_absent(&dump, "refresh token", &rt);
    assert_absent(&dump, "authorization code", &code);
    assert_absent(&dump, "state", &state);
    assert_absent(&dump, "PKCE verifier", &verifier);
    if let Some(secret) = &client.client_secret {
        assert_absent(&dump, "client secret", secret);
    }
    assert_not_logged(
        &id,
        &[
            ("access token", &at),
            ("refresh token", &rt),
            ("authorization code", &code),
            ("state", &state),
            ("PKCE verifier", &verifier),
            (
                "client secret",
                client.client_secret.as_deref().unwrap_or("no-secret"),
            ),
        ],
    );

    // Replaying the callback is refused and changes nothing.
    landing_is_refused(&app, cb.as_str(), &id, &row).await;

    // Deleting the install revokes its tokens at the provider, then erases it.
    let (s, v) = app.delete(&installs_path(&id)).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(introspect(&op, &rt, "refresh_token").await["active"], false);
    assert_eq!(introspect(&op, &at, "access_token").await["active"], false);
    assert!(install_row(&app, &id).await.is_none());
    let (s, v) = app.get(&installs_path(&id)).await;
    assert_problem(s, &v, 404, "not_found");
}

/// A second landing with an already used callback URL: 400, the install row unchanged.
async fn landing_is_refused(app: &TestApp, url: &str, id: &str, before: &Install) {
    land(app, url).await.assert_invalid_state();
    let after = install_row(app, id).await.expect("install row");
    assert_eq!(after.token_version, before.token_version);
    assert_eq!(after.access_token, before.access_token);
    assert_eq!(after.refresh_token, before.refresh_token);
    assert_eq!(after.status, before.status);
}

async fn real_basic(backend: Backend) {
    real_provider_flow(backend, Kind::Basic).await
}
async fn real_post(backend: Backend) {
    real_provider_flow(backend, Kind::Post).await
}
async fn real_public(backend: Backend) {
    real_provider_flow(backend, Kind::Public).await
}

// ---------------------------------------------------------------------------------------------
// B. Client credentials against the real provider
// ---------------------------------------------------------------------------------------------

async fn client_credentials(backend: Backend) {
    let app = spawn(backend, |_| {}).await;
    let redirect = callback_url(&app);
    let secret = "cc-secret-6e0a9f13";
    let op = OidcProvider::start(vec![
        OidcClient::basic("sb-machine", secret, &redirect),
        introspector(&redirect),
    ])
    .expect("oidc-provider starts");
    let setup = |secret: &str| {
        json!({
            "fhir_base_url": FHIR_BASE,
            "authorize_endpoint": op.authorize_url(),
            "token_endpoint": op.token_url(),
            "revocation_endpoint": op.revocation_url(),
            "issuer": op.issuer(),
            "client_id": "sb-machine",
            "client_secret": secret,
        })
    };
    let body = json!({ "connector": "testsmart", "auth_type": "oauth2_client_credentials" });

    // A wrong secret: a clear 4xx and no install left behind.
    put_setup(&app, "testsmart", setup("wrong-secret-0000")).await;
    let (s, v) = app
        .post(&format!("/v1/accounts/{ACCOUNT}/installs"), body.clone())
        .await;
    assert_problem(s, &v, 422, "credentials_rejected").hides(&["wrong-secret-0000"]);
    assert_eq!(install_count(&app).await, 0);

    put_setup(&app, "testsmart", setup(secret)).await;
    let created = create_install(&app, body).await;
    assert_eq!(created["status"], "authorized", "{created}");
    assert!(created.get("authorize_url").is_none(), "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(install_count(&app).await, 1);
    let row = install_row(&app, &id).await.unwrap();
    assert_eq!(row.status, "authorized");
    assert!(row.refresh_token.is_none());
    assert!(row.token_expires_at.is_some());
    let (at, _) = open_tokens(&app, &row);
    let at = at.expect("access token stored");
    let info = introspect(&op, &at, "access_token").await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["client_id"], "sb-machine");
    let (_, got) = app.get(&installs_path(&id)).await;
    assert_eq!(got["status"], "authorized");
    assert_eq!(got["scopes"], json!(["system/*.read"]), "{got}");
    assert!(!got.to_string().contains(&at));
    let dump = app.dump_database();
    assert!(dump.contains(&id));
    assert_absent(&dump, "access token", &at);
    assert_absent(&dump, "client secret", secret);

    // Delete revokes the access token at the provider.
    let (s, _) = app.delete(&installs_path(&id)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(introspect(&op, &at, "access_token").await["active"], false);
    assert_eq!(install_count(&app).await, 0);
}

// ---------------------------------------------------------------------------------------------
// C. Static bearer
// ---------------------------------------------------------------------------------------------

async fn static_bearer(backend: Backend) {
    let app = spawn(backend, |_| {}).await;
    let token = "canvas-sandbox-token-4f1e8a2b9c";
    let fhir = FakeFhir::builder()
        .seed_patients(1)
        .accept_token(token)
        .start();
    put_setup(
        &app,
        "canvas",
        json!({ "fhir_base_url": fhir.base_url(), "api_token": token }),
    )
    .await;
    let created = create_install(
        &app,
        json!({ "connector": "canvas", "auth_type": "static_bearer" }),
    )
    .await;
    assert_eq!(created["status"], "authorized", "{created}");
    assert!(created.get("authorize_url").is_none());
    let id = created["id"].as_str().unwrap().to_owned();
    let row = install_row(&app, &id).await.unwrap();
    assert!(row.access_token.is_none() && row.refresh_token.is_none());

    // Stored only encrypted in the setup, and it is what the install sends.
    let tenant = app.tenant.clone();
    let stored: String = app
        .db(move |c| {
            use switchboard_db::schema::connector_setups::dsl as cs;
            Ok(cs::connector_setups
                .filter(cs::tenant_id.eq(tenant))
                .filter(cs::connector_id.eq("canvas"))
                .select(cs::settings)
                .first(c)?)
        })
        .await;
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert!(stored["api_token"]["enc"].is_string(), "{stored}");
    let dump = app.dump_database();
    assert!(dump.contains(&id));
    assert_absent(&dump, "static bearer token", token);
    let (s, v) = app.get(&installs_path(&id)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(!v.to_string().contains(token));

    let (s, v) = app
        .post(
            &format!("{}/methods/get_patient", installs_path(&id)),
            json!({ "params": { "id": FakeFhir::patient_id(1) } }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(fhir.last_request().unwrap().bearer(), Some(token));
}

// ---------------------------------------------------------------------------------------------
// FakeOAuth environment for the failure paths
// ---------------------------------------------------------------------------------------------

struct Env {
    app: TestApp,
    oauth: FakeOAuth,
    fhir_base: String,
}

async fn fake_env(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> Env {
    fake_env_at(backend, tweak, FHIR_BASE).await
}

/// The app with `testsmart` set up against a FakeOAuth (client_secret_basic, RFC 9207 `iss`,
/// `aud` required) and FHIR base `fhir_base`.
async fn fake_env_at(backend: Backend, tweak: impl FnOnce(&mut Settings), fhir_base: &str) -> Env {
    let app = spawn(backend, tweak).await;
    let oauth = FakeOAuth::builder()
        .client(OAuthClient::basic(
            FAKE_CLIENT,
            FAKE_SECRET,
            &callback_url(&app),
        ))
        .with_iss(true)
        .expect_aud(fhir_base)
        .context(Some("pat-fake-77"), Some("enc-fake-3"))
        .start();
    put_setup(
        &app,
        "testsmart",
        json!({
            "fhir_base_url": fhir_base,
            "authorize_endpoint": oauth.authorize_url(),
            "token_endpoint": oauth.token_url(),
            "revocation_endpoint": oauth.revocation_url(),
            "issuer": oauth.issuer(),
            "client_id": FAKE_CLIENT,
            "client_secret": FAKE_SECRET,
        }),
    )
    .await;
    Env {
        app,
        oauth,
        fhir_base: fhir_base.to_owned(),
    }
}

impl Env {
    /// A pending authorization-code install with RETURN_URL; returns (id, authorize_url).
    async fn pending(&self) -> (String, String) {
        let created = create_install(
            &self.app,
            json!({ "connector": "testsmart", "return_url": RETURN_URL }),
        )
        .await;
        assert_eq!(created["status"], "pending_authorization");
        let url = created["authorize_url"].as_str().unwrap().to_owned();
        check_authorize_url(
            &self.app,
            &Url::parse(&url).unwrap(),
            &self.oauth.authorize_url(),
            FAKE_CLIENT,
            DEFAULT_SCOPES,
            &self.fhir_base,
        );
        (created["id"].as_str().unwrap().to_owned(), url)
    }

    /// A new authorize URL for an existing install.
    async fn reauthorize(&self, id: &str, body: Value) -> String {
        let (s, v) = self
            .app
            .post(&format!("{}/authorize", installs_path(id)), body)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["authorize_url"]
            .as_str()
            .expect("authorize_url")
            .to_owned()
    }

    /// An authorized install (one full flow); returns (id, row).
    async fn authorized(&self) -> (String, Install) {
        let (id, url) = self.pending().await;
        let before = self.oauth.token_request_count();
        let cb = fake_login(&self.app, &url).await;
        land(&self.app, cb.as_str())
            .await
            .assert_redirect(RETURN_URL, &id, "authorized", None);
        assert_eq!(self.oauth.token_request_count(), before + 1);
        let row = install_row(&self.app, &id).await.unwrap();
        assert_eq!(row.status, "authorized");
        assert!(row.access_token.is_some() && row.refresh_token.is_some());
        (id, row)
    }
}

// ---------------------------------------------------------------------------------------------
// D. Failure paths
// ---------------------------------------------------------------------------------------------

async fn unknown_state(backend: Backend) {
    let env = fake_env(backend, |_| {}).await;
    let (id, _) = env.pending().await;
    let app = &env.app;
    for q in [
        "code=some-code-value&state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "code=some-code-value",
        "state=&code=some-code-value",
        "error=access_denied",
        "",
        // Malformed or duplicated parameters still get the HTML page, never JSON.
        "state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA&state=BBBBBBBBBBBBBBBBBBBBBB&code=x",
        "state=%zz&code=%&&==",
    ] {
        land(app, &format!("{}?{q}", callback_url(app)))
            .await
            .assert_invalid_state();
    }
    assert_eq!(env.oauth.token_request_count(), 0, "no token request");
    let row = install_row(app, &id).await.unwrap();
    assert_eq!(row.status, "pending_authorization");
    assert!(row.last_error.is_none());
    assert_eq!(
        states_of(app, &id).await.len(),
        1,
        "the real state is untouched"
    );
}

async fn expired_state(backend: Backend) {
    let env = fake_env(backend, |s| s.oauth.state_ttl_secs = 120).await;
    let app = &env.app;
    let (id, url) = env.pending().await;
    let st = states_of(app, &id).await.remove(0);
    assert_eq!(
        st.expires_at - st.created_at,
        120_000,
        "oauth.state_ttl_secs"
    );
    let cb = fake_login(app, &url).await;
    // Expire the stored state (as if the user took longer than oauth.state_ttl_secs).
    let iid = id.clone();
    let n = app
        .db(move |c| {
            use switchboard_db::schema::oauth_states::dsl as o;
            Ok(
                diesel::update(o::oauth_states.filter(o::install_id.eq(iid)))
                    .set(o::expires_at.eq(now_ms() - 1))
                    .execute(c)?,
            )
        })
        .await;
    assert_eq!(n, 1);
    land(app, cb.as_str()).await.assert_invalid_state();
    assert_eq!(env.oauth.token_request_count(), 0, "code not redeemed");
    let row = install_row(app, &id).await.unwrap();
    assert_eq!(row.status, "pending_authorization");
    assert!(row.access_token.is_none());
    assert!(
        states_of(app, &id).await.is_empty(),
        "expired state dropped"
    );
}

async fn replayed_state(backend: Backend) {
    let env = fake_env(backend, |_| {}).await;
    let app = &env.app;
    let (id, url) = env.pending().await;
    let cb = fake_login(app, &url).await;
    land(app, cb.as_str())
        .await
        .assert_redirect(RETURN_URL, &id, "authorized", None);
    let row = install_row(app, &id).await.unwrap();
    assert_eq!(row.token_version, 1);
    landing_is_refused(app, cb.as_str(), &id, &row).await;
    assert_eq!(
        env.oauth.token_request_count(),
        1,
        "the provider saw exactly one token request"
    );

    // Two browsers racing with the same callback URL: exactly one wins.
    let (id2, url2) = env.pending().await;
    let cb2 = fake_login(app, &url2).await;
    let (a, b) = futures_util::future::join(land(app, cb2.as_str()), land(app, cb2.as_str())).await;
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::FOUND, StatusCode::BAD_REQUEST]);
    let winner = if a.status == StatusCode::FOUND {
        &a
    } else {
        &b
    };
    winner.assert_redirect(RETURN_URL, &id2, "authorized", None);
    assert_eq!(env.oauth.token_request_count(), 2);
    assert_eq!(install_row(app, &id2).await.unwrap().token_version, 1);
}

async fn access_denied(backend: Backend) {
    let env = fake_env(backend, |_| {}).await;
    let app = &env.app;
    let (id, url) = env.pending().await;
    env.oauth.deny_next();
    let cb = fake_login(app, &url).await;
    assert_eq!(query(&cb)["error"], "access_denied");
    land(app, cb.as_str()).await.assert_redirect(
        RETURN_URL,
        &id,
        "pending_authorization",
        Some("access_denied"),
    );
    assert_eq!(env.oauth.token_request_count(), 0);
    let row = install_row(app, &id).await.unwrap();
    assert_eq!(row.status, "pending_authorization");
    assert!(row.access_token.is_none());
    assert!(
        row.last_error
            .as_deref()
            .is_some_and(|e| e.contains("access_denied")),
        "{:?}",
        row.last_error
    );
    let (_, got) = app.get(&installs_path(&id)).await;
    assert_eq!(got["status"], "pending_authorization");
    assert!(got["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("access_denied")));
    // The state was consumed by the error answer.
    land(app, cb.as_str()).await.assert_invalid_state();

    // Without a return_url the user gets an HTML page that says so.
    let created = create_install(app, json!({ "connector": "testsmart" })).await;
    let id2 = created["id"].as_str().unwrap();
    let url = created["authorize_url"].as_str().unwrap();
    let state = query(&Url::parse(url).unwrap())["state"].clone();
    env.oauth.deny_next();
    let cb = fake_login(app, url).await;
    let page = land(app, cb.as_str()).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
    assert!(page.location.is_none());
    assert!(page.body.contains("not completed"), "{}", page.body);
    assert!(page.body.contains(id2), "{}", page.body);
    assert!(!page.body.contains(&state));
    assert_eq!(
        install_row(app, id2).await.unwrap().status,
        "pending_authorization"
    );
    assert_eq!(env.oauth.token_request_count(), 0);
}

async fn issuer_mismatch(backend: Backend) {
    let env = fake_env(backend, |_| {}).await;
    let app = &env.app;
    let (id, url) = env.pending().await;
    let evil = format!("{}/evil", env.oauth.issuer());
    env.oauth.set_iss_override(Some(&evil));
    let cb = fake_login(app, &url).await;
    assert_eq!(query(&cb)["iss"], evil);
    assert!(query(&cb).contains_key("code"));
    land(app, cb.as_str()).await.assert_redirect(
        RETURN_URL,
        &id,
        "pending_authorization",
        Some("issuer_mismatch"),
    );
    assert_eq!(env.oauth.token_request_count(), 0, "code not redeemed");
    let row = install_row(app, &id).await.unwrap();
    assert_eq!(row.status, "pending_authorization");
    assert!(row.access_token.is_none());
    assert!(row.last_error.as_deref().is_some_and(|e| e.contains("iss")));

    // The genuine issuer is accepted.
    env.oauth.set_iss_override(None);
    let url = env.reauthorize(&id, json!({})).await;
    let cb = fake_login(app, &url).await;
    assert_eq!(query(&cb)["iss"], env.oauth.issuer());
    land(app, cb.as_str())
        .await
        .assert_redirect(RETURN_URL, &id, "authorized", None);
    assert_eq!(env.oauth.token_request_count(), 1);
}

async fn token_endpoint_failures(backend: Backend) {
    log_capture();
    let env = fake_env(backend, |s| s.upstream.request_timeout_ms = 500).await;
    let app = &env.app;
    let (id, mut url) = env.pending().await;
    let faults = [
        ("invalid_grant", TokenFault::InvalidGrant),
        ("http 500", TokenFault::Status(500)),
        ("http 503", TokenFault::Status503),
        ("timeout", TokenFault::Delay(Duration::from_millis(2500))),
        ("non-JSON", TokenFault::NonJson),
        ("no access_token", TokenFault::MissingAccessToken),
    ];
    for (i, (what, fault)) in faults.into_iter().enumerate() {
        if i > 0 {
            url = env.reauthorize(&id, json!({})).await;
        }
        let cb = fake_login(app, &url).await;
        let code = query(&cb)["code"].clone();
        env.oauth.fail_token_next(1, fault);
        land(app, cb.as_str()).await.assert_redirect(
            RETURN_URL,
            &id,
            "pending_authorization",
            Some("token_exchange_failed"),
        );
        assert_eq!(
            env.oauth.token_request_count(),
            i + 1,
            "{what}: exactly one token request per callback"
        );
        let row = install_row(app, &id).await.unwrap();
        assert_eq!(row.status, "pending_authorization", "{what}");
        assert!(row.access_token.is_none(), "{what}");
        assert_eq!(row.token_version, 0, "{what}");
        let err = row.last_error.expect("last_error recorded");
        assert!(err.contains("token exchange failed"), "{what}: {err}");
        assert!(!err.contains(&code), "{what}: code leaked into last_error");
        let (_, got) = app.get(&installs_path(&id)).await;
        assert_eq!(got["status"], "pending_authorization");
        assert_eq!(got["last_error"], err.as_str());
        assert_not_logged(&id, &[("authorization code", &code)]);
    }

    // A later successful authorization clears the error.
    let url = env.reauthorize(&id, json!({})).await;
    let cb = fake_login(app, &url).await;
    land(app, cb.as_str())
        .await
        .assert_redirect(RETURN_URL, &id, "authorized", None);
    let row = install_row(app, &id).await.unwrap();
    assert_eq!(row.status, "authorized");
    assert!(row.last_error.is_none(), "{:?}", row.last_error);
    assert_eq!(row.token_version, 1);
}

async fn failed_reauthorization_keeps_tokens(backend: Backend) {
    let env = fake_env(backend, |_| {}).await;
    let app = &env.app;
    let (id, good) = env.authorized().await;
    let (at, rt) = open_tokens(app, &good);
    let (at, rt) = (at.unwrap(), rt.unwrap());

    // Token endpoint refuses the new code.
    let url = env.reauthorize(&id, json!({})).await;
    let cb = fake_login(app, &url).await;
    env.oauth.fail_token_next(1, TokenFault::InvalidGrant);
    land(app, cb.as_str()).await.assert_redirect(
        RETURN_URL,
        &id,
        "authorized",
        Some("token_exchange_failed"),
    );
    // The user denies the new consent.
    let url = env.reauthorize(&id, json!({})).await;
    env.oauth.deny_next();
    let cb = fake_login(app, &url).await;
    land(app, cb.as_str()).await.assert_redirect(
        RETURN_URL,
        &id,
        "authorized",
        Some("access_denied"),
    );
    // The response comes from another issuer.
    let url = env.reauthorize(&id, json!({})).await;
    env.oauth
        .set_iss_override(Some("http://127.0.0.1:1/another-issuer"));
    let cb = fake_login(app, &url).await;
    land(app, cb.as_str()).await.assert_redirect(
        RETURN_URL,
        &id,
        "authorized",
        Some("issuer_mismatch"),
    );
    assert_eq!(env.oauth.token_request_count(), 2);

    let row = install_row(app, &id).await.unwrap();
    assert_eq!(row.status, "authorized");
    assert_eq!(row.token_version, good.token_version, "no token write");
    assert_eq!(row.access_token, good.access_token);
    assert_eq!(row.refresh_token, good.refresh_token);
    assert_eq!(row.token_expires_at, good.token_expires_at);
    assert!(row.last_error.is_some());
    assert!(env.oauth.is_access_token_valid(&at));
    assert!(env.oauth.is_refresh_token_valid(&rt));
    let (_, got) = app.get(&installs_path(&id)).await;
    assert_eq!(got["status"], "authorized");
}

async fn reauthorization_replaces_grant(backend: Backend) {
    let fhir = FakeFhir::builder().seed_patients(1).start();
    let env = fake_env_at(backend, |_| {}, &fhir.base_url()).await;
    fhir.accept_tokens_from(env.oauth.token_validator());
    let app = &env.app;
    let (id, first) = env.authorized().await;
    let (at1, _) = open_tokens(app, &first);
    let at1 = at1.unwrap();
    let call = || async {
        let (s, v) = app
            .post(
                &format!("{}/methods/get_patient", installs_path(&id)),
                json!({ "params": { "id": FakeFhir::patient_id(1) } }),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["status"], 200, "{v}");
        fhir.last_request().unwrap().bearer().unwrap().to_owned()
    };
    assert_eq!(call().await, at1);

    // The install lost its grant; the new consent comes without a refresh token and with
    // another launch context.
    let iid = id.clone();
    app.db(move |c| {
        installs::set_status(
            c,
            &iid,
            switchboard_core::InstallStatus::NeedsReauthorization,
            Some("refresh token rejected"),
            now_ms(),
        )
    })
    .await;
    env.oauth.register_client(
        OAuthClient::basic(FAKE_CLIENT, FAKE_SECRET, &callback_url(app)).without_refresh_tokens(),
    );
    env.oauth.set_context(Some("pat-new-9"), None);
    let url = env.reauthorize(&id, json!({})).await;
    let cb = fake_login(app, &url).await;
    land(app, cb.as_str())
        .await
        .assert_redirect(RETURN_URL, &id, "authorized", None);

    let row = install_row(app, &id).await.unwrap();
    assert_eq!(row.status, "authorized");
    assert_eq!(row.token_version, first.token_version + 1);
    assert!(row.last_error.is_none(), "{:?}", row.last_error);
    assert!(
        row.refresh_token.is_none(),
        "the old grant's refresh token must not outlive it"
    );
    let (at2, _) = open_tokens(app, &row);
    let at2 = at2.unwrap();
    assert_ne!(at1, at2);
    let (_, got) = app.get(&installs_path(&id)).await;
    assert_eq!(got["status"], "authorized");
    assert_eq!(got["context"]["patient"], "pat-new-9", "{got}");
    assert!(got["context"].get("encounter").is_none(), "{got}");
    // The very next call uses the new grant's token.
    assert_eq!(call().await, at2);
}

async fn code_redeemed_at_recorded_endpoint(backend: Backend) {
    let env = fake_env(backend, |_| {}).await;
    let app = &env.app;
    let other = FakeOAuth::builder()
        .client(OAuthClient::basic(
            FAKE_CLIENT,
            FAKE_SECRET,
            &callback_url(app),
        ))
        .start();
    let (id, url) = env.pending().await;
    // The setup now names another token endpoint; the pending state keeps the one it was
    // issued with (the code is only ever sent to the server that issued it).
    put_setup(
        app,
        "testsmart",
        json!({
            "fhir_base_url": FHIR_BASE,
            "authorize_endpoint": env.oauth.authorize_url(),
            "token_endpoint": other.token_url(),
            "revocation_endpoint": env.oauth.revocation_url(),
            "issuer": env.oauth.issuer(),
            "client_id": FAKE_CLIENT,
            "client_secret": FAKE_SECRET,
        }),
    )
    .await;
    let cb = fake_login(app, &url).await;
    land(app, cb.as_str())
        .await
        .assert_redirect(RETURN_URL, &id, "authorized", None);
    assert_eq!(env.oauth.token_request_count(), 1);
    assert_eq!(other.token_request_count(), 0);

    // A state issued after the change records the new endpoint.
    let url = env.reauthorize(&id, json!({})).await;
    let st = state_for(app, &id, &Url::parse(&url).unwrap()).await.0;
    assert_eq!(st.token_url, other.token_url());
    let cb = fake_login(app, &url).await;
    land(app, cb.as_str()).await.assert_redirect(
        RETURN_URL,
        &id,
        "authorized",
        Some("token_exchange_failed"),
    );
    assert_eq!(other.token_request_count(), 1);
    assert_eq!(env.oauth.token_request_count(), 1);
}

// ---------------------------------------------------------------------------------------------
// E. return_url and re-authorisation
// ---------------------------------------------------------------------------------------------

async fn return_urls_and_reauthorize(backend: Backend) {
    let env = fake_env(backend, |_| {}).await;
    let app = &env.app;
    let path = format!("/v1/accounts/{ACCOUNT}/installs");
    for bad in [
        "https://evil.example/done",
        "https://console.example.evil.com/done",
        "http://console.example/done",
        "https://console.example/done#fragment",
        "https://user:pw@console.example/done",
        "javascript:alert(1)",
        "/done",
        "https://tenant.example/app/x",
    ] {
        let (s, v) = app
            .post(
                &path,
                json!({ "connector": "testsmart", "return_url": bad }),
            )
            .await;
        assert_problem(s, &v, 400, "invalid_return_url");
    }
    assert_eq!(install_count(app).await, 0, "nothing created");

    // A tenant may add its own prefixes (matched on a path boundary).
    let (s, v) = app
        .patch(
            "/v1/tenant",
            json!({ "allowed_return_urls": ["https://tenant.example/app"] }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = app
        .post(
            &path,
            json!({ "connector": "testsmart", "return_url": "https://tenant.example/appx" }),
        )
        .await;
    assert_problem(s, &v, 400, "invalid_return_url");
    let tenant_url = "https://tenant.example/app/x?y=1";
    let created = create_install(
        app,
        json!({ "connector": "testsmart", "return_url": tenant_url }),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["return_url"], tenant_url);
    let first = created["authorize_url"].as_str().unwrap().to_owned();

    // Re-authorise with a bad return_url: refused, nothing changed.
    let (s, v) = app
        .post(
            &format!("{}/authorize", installs_path(&id)),
            json!({ "return_url": "https://evil.example/" }),
        )
        .await;
    assert_problem(s, &v, 400, "invalid_return_url");
    assert_eq!(states_of(app, &id).await.len(), 1);

    // A fresh authorize URL with a new state (and a new return_url).
    let second = env
        .reauthorize(&id, json!({ "return_url": RETURN_URL }))
        .await;
    let (q1, q2) = (
        query(&Url::parse(&first).unwrap()),
        query(&Url::parse(&second).unwrap()),
    );
    assert_ne!(q1["state"], q2["state"]);
    assert_ne!(q1["code_challenge"], q2["code_challenge"]);
    assert_eq!(states_of(app, &id).await.len(), 2);
    let (_, got) = app.get(&installs_path(&id)).await;
    assert_eq!(got["return_url"], RETURN_URL);
    // An empty body keeps the install's return_url.
    let (s, v) = app
        .call(
            reqwest::Method::POST,
            &format!("{}/authorize", installs_path(&id)),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(states_of(app, &id).await.len(), 3);

    // Another tenant cannot start an authorization for this install.
    let (_, other_key) = app.new_tenant("Other Console").await;
    let (s, v) = app
        .call_as(
            &other_key,
            reqwest::Method::POST,
            &format!("{}/authorize", installs_path(&id)),
            Some(json!({})),
        )
        .await;
    assert_problem(s, &v, 404, "not_found");
    assert_eq!(states_of(app, &id).await.len(), 3);

    // The old state still works once, and returns to the return_url it was issued with.
    let cb_old = fake_login(app, &first).await;
    land(app, cb_old.as_str())
        .await
        .assert_redirect(tenant_url, &id, "authorized", None);
    land(app, cb_old.as_str()).await.assert_invalid_state();
    // The new state re-authorises the (now authorized) install.
    let cb_new = fake_login(app, &second).await;
    land(app, cb_new.as_str())
        .await
        .assert_redirect(RETURN_URL, &id, "authorized", None);
    land(app, cb_new.as_str()).await.assert_invalid_state();
    assert_eq!(env.oauth.token_request_count(), 2);
    let row = install_row(app, &id).await.unwrap();
    assert_eq!(row.token_version, 2);
    assert_eq!(states_of(app, &id).await.len(), 1, "the unused third state");
}

// ---------------------------------------------------------------------------------------------
// F. Revocation on delete
// ---------------------------------------------------------------------------------------------

async fn delete_revokes(backend: Backend) {
    let env = fake_env(backend, |_| {}).await;
    let app = &env.app;

    // A pending install has nothing to revoke.
    let (pending, _) = env.pending().await;
    let (s, _) = app.delete(&installs_path(&pending)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(env.oauth.revocation_count(), 0);
    assert!(install_row(app, &pending).await.is_none());
    assert!(states_of(app, &pending).await.is_empty());

    let (id, row) = env.authorized().await;
    let (at, rt) = open_tokens(app, &row);
    let (at, rt) = (at.unwrap(), rt.unwrap());
    assert!(env.oauth.is_access_token_valid(&at));
    // A pending re-authorisation state of this install goes too.
    env.reauthorize(&id, json!({})).await;
    let (s, v) = app.delete(&installs_path(&id)).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(env.oauth.revocation_count(), 2);
    assert_eq!(
        env.oauth.revoked_tokens_seen(),
        vec![rt.clone(), at.clone()]
    );
    for r in env.oauth.revocation_requests() {
        assert!(
            r.header("authorization")
                .is_some_and(|h| h.starts_with("Basic ")),
            "revocation is client-authenticated"
        );
    }
    assert!(!env.oauth.is_access_token_valid(&at));
    assert!(!env.oauth.is_refresh_token_valid(&rt));
    assert!(install_row(app, &id).await.is_none());
    assert!(states_of(app, &id).await.is_empty());

    // A failing revocation endpoint does not keep the install alive.
    let (id2, _) = env.authorized().await;
    env.oauth.fail_revoke_next(2, TokenFault::Status503);
    let (s, v) = app.delete(&installs_path(&id2)).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert!(env.oauth.revocation_count() > 2, "revocation was attempted");
    assert!(install_row(app, &id2).await.is_none());
    let (s, v) = app.get(&installs_path(&id2)).await;
    assert_problem(s, &v, 404, "not_found");
}

// ---------------------------------------------------------------------------------------------
// B'. Client credentials failures and revocation (FakeOAuth)
// ---------------------------------------------------------------------------------------------

async fn client_credentials_failures(backend: Backend) {
    let env = fake_env(backend, |_| {}).await;
    let app = &env.app;
    let path = format!("/v1/accounts/{ACCOUNT}/installs");
    let body = json!({ "connector": "testsmart", "auth_type": "oauth2_client_credentials" });
    for (fault, status, code) in [
        (TokenFault::Status503, 502, "token_exchange_failed"),
        (TokenFault::MissingAccessToken, 502, "token_exchange_failed"),
        (TokenFault::NonJson, 502, "token_exchange_failed"),
        (TokenFault::InvalidGrant, 422, "credentials_rejected"),
    ] {
        env.oauth.fail_token_next(1, fault);
        let (s, v) = app.post(&path, body.clone()).await;
        assert_problem(s, &v, status, code);
    }
    assert_eq!(env.oauth.token_request_count(), 4, "no retries");
    assert_eq!(install_count(app).await, 0, "no install left behind");

    let created = create_install(app, body).await;
    assert_eq!(created["status"], "authorized", "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let req = env.oauth.token_requests().pop().unwrap();
    let form: HashMap<String, String> = url::form_urlencoded::parse(&req.body)
        .into_owned()
        .collect();
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["scope"], "system/*.read");
    let row = install_row(app, &id).await.unwrap();
    let (at, rt) = open_tokens(app, &row);
    let at = at.unwrap();
    assert!(rt.is_none());
    assert!(env.oauth.is_access_token_valid(&at));

    // Client-credentials installs are not (re-)authorised through the browser.
    let (s, v) = app
        .post(&format!("{}/authorize", installs_path(&id)), json!({}))
        .await;
    assert_problem(s, &v, 422, "unsupported_auth_type");
    assert!(states_of(app, &id).await.is_empty());

    // Delete revokes the access token (the connector declares revocation for this auth type).
    let (s, _) = app.delete(&installs_path(&id)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(env.oauth.revoked_tokens_seen(), vec![at.clone()]);
    assert!(!env.oauth.is_access_token_valid(&at));
    assert_eq!(install_count(app).await, 0);
}

// ---------------------------------------------------------------------------------------------
// The shipped connectors through the shared callback (FakeOAuth with each vendor's endpoints)
// ---------------------------------------------------------------------------------------------

async fn shipped_connectors(backend: Backend) {
    let app = spawn(backend, |_| {}).await;
    let redirect = callback_url(&app);
    // (connector, endpoint prefix, authorize path, client_secret_post, issuer expected)
    for (connector, prefix, authorize_path, post, with_iss) in [
        ("epic", "/oauth2/", "oauth2/authorize", false, true),
        ("canvas", "/auth/", "auth/authorize/", true, false),
        ("medplum", "/oauth2/", "oauth2/authorize", false, false),
    ] {
        let secret = format!("{connector}-secret-8d2f61a0");
        let client_id = format!("{connector}-client");
        let client = if post {
            OAuthClient::post(&client_id, &secret, &redirect)
        } else {
            OAuthClient::basic(&client_id, &secret, &redirect)
        };
        let oauth = FakeOAuth::builder()
            .prefix(prefix)
            .client(client)
            .with_iss(with_iss)
            .start();
        let root = format!("{}/", oauth.origin());
        let settings = match connector {
            "epic" => json!({ "endpoint": root, "client_id": client_id, "client_secret": secret }),
            "canvas" => json!({
                "instance_url": root, "fhir_base_url": FHIR_BASE,
                "client_id": client_id, "client_secret": secret
            }),
            _ => json!({ "base_url": root, "client_id": client_id, "client_secret": secret }),
        };
        put_setup(&app, connector, settings).await;
        let created = create_install(
            &app,
            json!({ "connector": connector, "return_url": RETURN_URL }),
        )
        .await;
        let id = created["id"].as_str().unwrap().to_owned();
        let url = Url::parse(created["authorize_url"].as_str().unwrap()).unwrap();
        assert_eq!(without_query(&url), format!("{root}{authorize_path}"));
        let q = query(&url);
        assert_eq!(q["redirect_uri"], redirect, "{connector}");
        assert_eq!(q["code_challenge_method"], "S256", "{connector}");
        match connector {
            "epic" => assert_eq!(q["aud"], format!("{root}api/FHIR/R4/")),
            _ => assert!(!q.contains_key("aud"), "{connector}"),
        }
        let cb = fake_login(&app, url.as_str()).await;
        assert_eq!(query(&cb).contains_key("iss"), with_iss);
        land(&app, cb.as_str())
            .await
            .assert_redirect(RETURN_URL, &id, "authorized", None);
        let reqs = oauth.token_requests();
        assert_eq!(reqs.len(), 1, "{connector}");
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&reqs[0].body)
            .into_owned()
            .collect();
        let count = |k: &str| form.iter().filter(|(n, _)| n == k).count();
        assert_eq!(count("redirect_uri"), 1, "{connector}: {form:?}");
        assert_eq!(count("client_secret"), usize::from(post), "{connector}");
        assert_eq!(
            reqs[0].header("authorization").is_some(),
            !post,
            "{connector}"
        );
        let row = install_row(&app, &id).await.unwrap();
        assert_eq!(row.status, "authorized", "{connector}");
        let (at, _) = open_tokens(&app, &row);
        assert!(oauth.is_access_token_valid(&at.unwrap()), "{connector}");
    }
}

// ---------------------------------------------------------------------------------------------
// G. No plaintext secrets after a full flow (FakeOAuth: every value is known exactly)
// ---------------------------------------------------------------------------------------------

async fn no_plaintext_secrets(backend: Backend) {
    log_capture();
    let env = fake_env(backend, |_| {}).await;
    let app = &env.app;
    let (id, url) = env.pending().await;
    let state = query(&Url::parse(&url).unwrap())["state"].clone();
    let cb = fake_login(app, &url).await;
    land(app, cb.as_str())
        .await
        .assert_redirect(RETURN_URL, &id, "authorized", None);

    // What went over the wire to the token endpoint.
    let reqs = env.oauth.token_requests();
    assert_eq!(reqs.len(), 1);
    let form: HashMap<String, String> = url::form_urlencoded::parse(&reqs[0].body)
        .into_owned()
        .collect();
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["redirect_uri"], callback_url(app));
    let code = form["code"].clone();
    let verifier = form["code_verifier"].clone();
    assert_eq!(code, query(&cb)["code"]);
    assert_eq!(
        pkce_challenge(&verifier),
        query(&Url::parse(&url).unwrap())["code_challenge"]
    );
    let basic = reqs[0]
        .header("authorization")
        .expect("client_secret_basic")
        .trim_start_matches("Basic ")
        .to_owned();
    assert!(!form.contains_key("client_secret"));

    let row = install_row(app, &id).await.unwrap();
    let (at, rt) = open_tokens(app, &row);
    let (at, rt) = (at.unwrap(), rt.unwrap());
    assert!(env.oauth.is_access_token_valid(&at), "stored = issued");
    assert!(env.oauth.is_refresh_token_valid(&rt), "stored = issued");

    let (_, got) = app.get(&installs_path(&id)).await;
    assert_eq!(
        got["context"],
        json!({
            "patient": "pat-fake-77",
            "encounter": "enc-fake-3",
            "fhir_user": "Practitioner/prac-0001"
        }),
        "{got}"
    );

    let dump = app.dump_database();
    // Issue 11: the launch context names the patient (PHI) and is sealed at rest now; the GET
    // above shows it decrypted.
    assert!(dump.contains(&id) && !dump.contains("pat-fake-77"));
    assert_absent(&dump, "access token", &at);
    assert_absent(&dump, "refresh token", &rt);
    assert_absent(&dump, "authorization code", &code);
    assert_absent(&dump, "state", &state);
    assert_absent(&dump, "PKCE verifier", &verifier);
    assert_absent(&dump, "client secret", FAKE_SECRET);
    assert_absent(&dump, "Basic credentials", &basic);
    assert_not_logged(
        &id,
        &[
            ("access token", &at),
            ("refresh token", &rt),
            ("authorization code", &code),
            ("state", &state),
            ("PKCE verifier", &verifier),
            ("client secret", FAKE_SECRET),
            ("Basic credentials", &basic),
        ],
    );
}

crate::both_backends! {
    real_provider_client_secret_basic => real_basic;
    real_provider_client_secret_post => real_post;
    real_provider_public_client_pkce => real_public;
    client_credentials_real_provider => client_credentials;
    static_bearer_token => static_bearer;
    callback_unknown_state => unknown_state;
    callback_expired_state => expired_state;
    callback_replayed_state => replayed_state;
    callback_access_denied => access_denied;
    callback_issuer_mismatch => issuer_mismatch;
    callback_token_endpoint_failures => token_endpoint_failures;
    failed_reauthorization_keeps_good_tokens => failed_reauthorization_keeps_tokens;
    return_url_checks_and_reauthorization => return_urls_and_reauthorize;
    delete_revokes_tokens => delete_revokes;
    no_plaintext_secrets_after_full_flow => no_plaintext_secrets;
    client_credentials_failures_leave_no_install => client_credentials_failures;
    shipped_connectors_authorize_through_callback => shipped_connectors;
    reauthorization_replaces_the_grant => reauthorization_replaces_grant;
    code_redeemed_only_at_the_recorded_token_endpoint => code_redeemed_at_recorded_endpoint;
}
