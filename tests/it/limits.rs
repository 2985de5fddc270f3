//! Issue 10 limits: the request rate per API key, per-tenant quotas, the unknown-key cache under
//! a flood, connector-declared outbound rates, the call deadline, tenant return-URL origins,
//! and the outbound address policy on every hop (a listener on 127.0.0.1 counts connections:
//! with insecure upstreams off, no path reaches it).

use crate::support::{
    canvas_bearer_setup, create_bearer_install, problem, req, req_as, snapshot, Backend, Resp,
    TestApp,
};
use diesel::prelude::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use switchboard_config::Settings;
use switchboard_testkit::fhir::{FakeFhir, Fault, RetryAfter};
use switchboard_testkit::oauth::{FakeOAuth, OAuthClient};

/// Every 429 carries `Retry-After` in whole seconds, at least 1, equal to `retry_after`.
fn assert_retry_after(r: &Resp) {
    let header: u64 = r
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 without a numeric Retry-After: {:?}", r.headers));
    assert!(header >= 1, "Retry-After {header}");
    assert_eq!(r.json["retry_after"], header, "{}", r.text);
}

async fn count(app: &TestApp, table: &'static str) -> i64 {
    use switchboard_db::schema::{accounts, api_keys, installs, oauth_states};
    app.db(move |c| {
        Ok(match table {
            "accounts" => accounts::table.count().get_result(c)?,
            "api_keys" => api_keys::table
                .filter(api_keys::revoked_at.is_null())
                .count()
                .get_result(c)?,
            "installs" => installs::table.count().get_result(c)?,
            "oauth_states" => oauth_states::table.count().get_result(c)?,
            other => panic!("no table {other}"),
        })
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Per API key request rate
// ---------------------------------------------------------------------------------------------

async fn api_key_rate(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.limits.api_key_requests_per_minute = 1;
        s.limits.api_key_burst = 2;
    })
    .await;
    let (_, other_key) = app.new_tenant("Other").await;
    for _ in 0..2 {
        let r = req(&app, Method::GET, "/v1/accounts", None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    let before = count(&app, "accounts").await;
    let r = req(
        &app,
        Method::POST,
        "/v1/accounts",
        Some(json!({"id": "over", "name": "Over the rate"})),
    )
    .await;
    problem(&r, 429, "rate_limited");
    assert_retry_after(&r);
    assert_eq!(
        count(&app, "accounts").await,
        before,
        "a limited request wrote"
    );
    // Another key has a bucket of its own.
    let r = req_as(&app, &other_key, Method::GET, "/v1/accounts", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

/// Epic's app registration for the tenant of `key` (installs give their own endpoint).
async fn epic_setup(app: &TestApp, key: &str) {
    let r = req_as(
        app,
        key,
        Method::PUT,
        "/v1/connectors/epic/setup",
        Some(json!({"settings": {"client_id": "c", "client_secret": "s"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

// ---------------------------------------------------------------------------------------------
// Per tenant quotas
// ---------------------------------------------------------------------------------------------

fn quota(r: &Resp, name: &str, limit: u64) {
    problem(r, 409, "quota_exceeded");
    assert_eq!(r.json["quota"], name, "{}", r.text);
    assert_eq!(r.json["limit"], limit, "{}", r.text);
}

async fn tenant_quotas(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.limits.max_accounts_per_tenant = 1;
        s.limits.max_api_keys_per_tenant = 2;
        s.limits.max_installs_per_tenant = 3;
        s.limits.max_pending_oauth_states_per_tenant = 1;
    })
    .await;
    // Accounts: the first fits, the second is refused and not written.
    app.create_account("clinic").await;
    let r = req(
        &app,
        Method::POST,
        "/v1/accounts",
        Some(json!({"id": "second", "name": "Second"})),
    )
    .await;
    quota(&r, "accounts", 1);
    assert_eq!(count(&app, "accounts").await, 1);

    // API keys: the initial key plus one more.
    let r = req(
        &app,
        Method::POST,
        "/v1/api-keys",
        Some(json!({"name": "second"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = req(
        &app,
        Method::POST,
        "/v1/api-keys",
        Some(json!({"name": "third"})),
    )
    .await;
    quota(&r, "api_keys", 2);
    assert_eq!(count(&app, "api_keys").await, 2);

    // Pending authorization requests: one Epic install holds the only state.
    let installs = "/v1/accounts/clinic/installs";
    epic_setup(&app, &app.api_key).await;
    let epic =
        json!({"connector": "epic", "settings": {"endpoint": "http://127.0.0.1:9/interconnect/"}});
    let r = req(&app, Method::POST, installs, Some(epic.clone())).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let epic_id = r.json["id"].as_str().unwrap().to_owned();
    let before = snapshot(&app).await;
    let r = req(
        &app,
        Method::POST,
        &format!("{installs}/{epic_id}/authorize"),
        Some(json!({})),
    )
    .await;
    quota(&r, "pending_oauth_states", 1);
    let r = req(&app, Method::POST, installs, Some(epic)).await;
    quota(&r, "pending_oauth_states", 1);
    assert_eq!(
        snapshot(&app).await,
        before,
        "a refused authorization wrote"
    );
    assert_eq!(count(&app, "oauth_states").await, 1);
    assert_eq!(count(&app, "installs").await, 1);

    // Installs: two more fit (3 in all), the next is refused.
    canvas_bearer_setup(&app, "tok-quota-7d1e").await;
    create_bearer_install(&app, &app.api_key, "clinic").await;
    create_bearer_install(&app, &app.api_key, "clinic").await;
    let before = snapshot(&app).await;
    let r = req(
        &app,
        Method::POST,
        installs,
        Some(json!({"connector": "canvas", "auth_type": "static_bearer"})),
    )
    .await;
    quota(&r, "installs", 3);
    assert_eq!(snapshot(&app).await, before, "a refused install wrote");
    assert_eq!(count(&app, "installs").await, 3);
}

// ---------------------------------------------------------------------------------------------
// A flood of bad keys
// ---------------------------------------------------------------------------------------------

async fn bad_key_flood(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.database.pool_size = 2;
        s.database.pool_timeout_ms = 1000;
        s.limits.key_lookup_concurrency = 1;
        // Valid keys are re-read from the database during the flood.
        s.api_keys.cache_ttl_ms = 1;
    })
    .await;
    let good = app.api_key.clone();
    let mut tasks = Vec::new();
    for i in 0..400usize {
        let http = app.http.clone();
        let url = app.url("/v1/accounts");
        // 40 distinct bad keys, each repeated: the repeats must not reach the database.
        let key = if i % 10 == 0 {
            good.clone()
        } else {
            format!("sbk_bogus{:02}_{}", i % 40, "x".repeat(43))
        };
        tasks.push(tokio::spawn(async move {
            let res = http.get(url).bearer_auth(&key).send().await.expect("send");
            (key, res.status())
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let (key, status) = t.await.unwrap();
        if key == good {
            assert_eq!(status, StatusCode::OK, "a valid key was not served");
            ok += 1;
        } else {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "a bad key got {status}");
            refused += 1;
        }
    }
    assert_eq!((ok, refused), (40, 360));
    let r = req(&app, Method::GET, "/v1/accounts", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

// ---------------------------------------------------------------------------------------------
// Connector-declared outbound rate, call deadline
// ---------------------------------------------------------------------------------------------

/// The shipped connectors, copied next to the key file, with `extra` appended to canvas.toml.
fn canvas_with(s: &mut Settings, extra: &str) {
    let dir = crate::support::copy_shipped_connectors(s);
    let canvas = dir.join("canvas.toml");
    let mut text = std::fs::read_to_string(&canvas).unwrap();
    text.push_str(extra);
    std::fs::write(&canvas, text).unwrap();
    s.connectors.dir = dir;
}

async fn canvas_on(app: &TestApp, fhir: &FakeFhir) -> String {
    let r = req(
        app,
        Method::PUT,
        "/v1/connectors/canvas/setup",
        Some(
            json!({"settings": {"api_token": "tok-limits-3f9a", "fhir_base_url": fhir.base_url()}}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.create_account("clinic").await;
    let install = create_bearer_install(app, &app.api_key, "clinic").await;
    format!(
        "/v1/accounts/clinic/installs/{}/methods/get_patient",
        install["id"].as_str().unwrap()
    )
}

async fn connector_call_rate(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        canvas_with(s, "\n[limits]\nrequests_per_second = 1\n");
        s.limits.outbound_queue_ms = 0;
    })
    .await;
    let fhir = FakeFhir::builder().accept_any_bearer().start();
    let patient = fhir.seed_patients(1).remove(0);
    let call = canvas_on(&app, &fhir).await;
    let body = json!({"params": {"id": patient}});
    let r = req(&app, Method::POST, &call, Some(body.clone())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = req(&app, Method::POST, &call, Some(body)).await;
    problem(&r, 429, "rate_limited");
    assert_retry_after(&r);
    assert_eq!(fhir.request_count(), 1, "the limited call reached the EHR");
}

async fn call_deadline(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.upstream.call_deadline_ms = 700;
    })
    .await;
    let fhir = FakeFhir::builder().accept_any_bearer().start();
    let patient = fhir.seed_patients(1).remove(0);
    let call = canvas_on(&app, &fhir).await;
    // Two throttled answers asking for 1 s each: every attempt is quick, but the retries
    // together run past the call's deadline (without it the third attempt would succeed).
    for _ in 0..2 {
        fhir.fail_next(Fault::TooManyRequests {
            retry_after: Some(RetryAfter::Seconds(1)),
        });
    }
    let started = std::time::Instant::now();
    let r = req(
        &app,
        Method::POST,
        &call,
        Some(json!({"params": {"id": patient}})),
    )
    .await;
    problem(&r, 504, "upstream_timeout");
    assert!(r.json["detail"]
        .as_str()
        .unwrap()
        .contains("upstream.call_deadline_ms"));
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1900),
        "the deadline did not cut the retries short"
    );
}

// ---------------------------------------------------------------------------------------------
// Tenant return-URL origins
// ---------------------------------------------------------------------------------------------

async fn tenant_return_url_origins(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.security.allowed_return_urls = vec!["https://console.example/".into()];
        s.security.tenant_return_url_origins = vec!["https://partner.example".into()];
    })
    .await;
    let patch = |urls: Value| {
        let app = &app;
        async move {
            req(
                app,
                Method::PATCH,
                "/v1/tenant",
                Some(json!({ "allowed_return_urls": urls })),
            )
            .await
        }
    };
    let r = patch(json!(["https://partner.example/app/"])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    for outside in [
        "https://evil.example/",
        "https://partner.example.evil.com/",
        "http://partner.example/app/",
        "https://partner.example:8443/",
        "https://console.examplex/",
    ] {
        let before = snapshot(&app).await;
        let r = patch(json!(["https://console.example/tenant/", outside])).await;
        problem(&r, 422, "return_url_origin_not_allowed");
        assert_eq!(snapshot(&app).await, before, "{outside} changed the tenant");
    }
    // Under the operator's own prefixes is always fine.
    let r = patch(json!(["https://console.example/tenant/"])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // An origin the operator withdraws stops admitting what a tenant stored earlier.
    let r = patch(json!(["https://partner.example/app/"])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let TestApp {
        dir: old_dir,
        db_url,
        api_key,
        ..
    } = app;
    let narrowed = TestApp::spawn_on(backend, old_dir, db_url, |s| {
        s.security.allowed_return_urls = vec!["https://console.example/".into()];
        s.security.tenant_return_url_origins = vec![];
    })
    .await;
    epic_setup(&narrowed, &api_key).await;
    let r = req_as(
        &narrowed,
        &api_key,
        Method::POST,
        "/v1/accounts",
        Some(json!({"id": "clinic", "name": "Clinic"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = req_as(
        &narrowed,
        &api_key,
        Method::POST,
        "/v1/accounts/clinic/installs",
        Some(
            json!({"connector": "epic", "return_url": "https://partner.example/app/done",
            "settings": {"endpoint": "http://127.0.0.1:9/interconnect/"}}),
        ),
    )
    .await;
    problem(&r, 400, "invalid_return_url");
}

// ---------------------------------------------------------------------------------------------
// The outbound policy on every hop
// ---------------------------------------------------------------------------------------------

/// A connector whose every upstream URL is a setting (FHIR base, token, revocation).
const HOP_CONNECTOR: &str = r#"
id = "testhop"
name = "Hop test"
version = "1.0.0"
fhir_base = "{{settings.fhir_base_url}}"

[[settings]]
key = "fhir_base_url"
label = "FHIR base URL"
type = "url"
required = true
normalize = "trailing_slash"
install_override = true

[[settings]]
key = "auth_base"
label = "OAuth base"
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

[[auth]]
type = "oauth2_authorization_code"
authorize_url = "{{settings.auth_base}}authorize"
token_url = "{{settings.auth_base}}token"
issuer = "{{settings.auth_base}}"
client_id = "{{settings.client_id}}"
client_secret = "{{settings.client_secret}}"
scopes = "openid offline_access patient/*.read"
revocation_url = "{{settings.auth_base}}revoke"

[[auth]]
type = "oauth2_client_credentials"
token_url = "{{settings.auth_base}}token"
client_id = "{{settings.client_id}}"
client_secret = "{{settings.client_secret}}"
scopes = "system/*.read"

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

fn hop_connectors(s: &mut Settings) {
    hop_connector_with(s, "");
}

/// The shipped connectors plus `testhop`, with `extra` appended to its file.
fn hop_connector_with(s: &mut Settings, extra: &str) {
    let dir = crate::support::copy_shipped_connectors(s);
    std::fs::write(dir.join("testhop.toml"), format!("{HOP_CONNECTOR}{extra}")).unwrap();
    s.connectors.dir = dir;
}

/// `token_requests_per_minute` counts a tenant's token requests for the connector: the second
/// client-credentials install within the minute is refused before its token is asked for, and
/// is not written.
async fn connector_token_rate(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        hop_connector_with(s, "\n[limits]\ntoken_requests_per_minute = 1\n");
        s.limits.outbound_queue_ms = 0;
    })
    .await;
    let oauth = FakeOAuth::builder()
        .client(OAuthClient::basic(
            "hop-client",
            "hop-secret-77c2",
            &app.url("/connector/callback"),
        ))
        .start();
    let token_url = oauth.token_url();
    let r = req(
        &app,
        Method::PUT,
        "/v1/connectors/testhop/setup",
        Some(
            json!({"settings": {"fhir_base_url": "http://127.0.0.1:9/fhir/",
            "auth_base": token_url.trim_end_matches("token"),
            "client_id": "hop-client", "client_secret": "hop-secret-77c2"}}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.create_account("clinic").await;
    let body = json!({"connector": "testhop", "auth_type": "oauth2_client_credentials"});
    let r = req(
        &app,
        Method::POST,
        "/v1/accounts/clinic/installs",
        Some(body.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let before = snapshot(&app).await;
    let r = req(
        &app,
        Method::POST,
        "/v1/accounts/clinic/installs",
        Some(body),
    )
    .await;
    problem(&r, 429, "rate_limited");
    assert_retry_after(&r);
    assert_eq!(snapshot(&app).await, before, "a limited install wrote");
    assert_eq!(
        oauth.token_requests().len(),
        1,
        "the limited token request was sent"
    );
}

/// A TCP listener on 127.0.0.1 counting the connections it accepts.
async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (port, accepted)
}

/// Gives an install tokens directly in the database (no token request): an access token that
/// expired or not, and a refresh token.
async fn give_tokens(app: &TestApp, install: &str, expired: bool) {
    let ring = crate::support::key_ring(app);
    let id = install.to_owned();
    let access = ring.encrypt(b"at-hop-1c7e", format!("install:{id}:access_token"));
    let refresh = ring.encrypt(b"rt-hop-9d2a", format!("install:{id}:refresh_token"));
    let now = switchboard_core::now_ms();
    let expires_at = if expired {
        now - 60_000
    } else {
        now + 3_600_000
    };
    app.db(move |c| {
        switchboard_db::repo::installs::store_tokens(
            c,
            &id,
            0,
            &switchboard_db::TokenWrite {
                access_token: access,
                refresh_token: Some(refresh),
                expires_at: Some(expires_at),
                scopes: None,
                context: None,
                status: switchboard_core::InstallStatus::Authorized,
                last_error: None,
                last_refresh_at: Some(now - 3_600_000),
                last_refresh_error: None,
                now,
            },
        )
        .map(|_| ())
    })
    .await;
}

async fn outbound_policy_every_hop(backend: Backend) {
    let (port, accepted) = counting_listener().await;
    // https: reqwest refuses plain http in secure mode by itself; an https URL to an IP
    // literal is what only the policy check stops before a connection is opened.
    let local = format!("https://127.0.0.1:{port}/");
    // Before: a development replica (insecure upstreams on) saved everything pointing at the
    // listener. Saving connects to nothing.
    let dev = TestApp::spawn_with(backend, hop_connectors).await;
    let key = dev.api_key.clone();
    let r = req(
        &dev,
        Method::PUT,
        "/v1/connectors/testhop/setup",
        Some(
            json!({"settings": {"fhir_base_url": local, "auth_base": local,
            "client_id": "hop", "client_secret": "hop-secret-0e4b"}}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    dev.create_account("clinic").await;
    let installs = "/v1/accounts/clinic/installs";
    let mut created = Vec::new();
    for overrides in [
        json!({}),
        json!({"fhir_base_url": "https://fhir.example.invalid/"}),
    ] {
        let r = req(
            &dev,
            Method::POST,
            installs,
            Some(json!({"connector": "testhop", "settings": overrides})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        created.push((
            r.json["id"].as_str().unwrap().to_owned(),
            r.json["authorize_url"].as_str().unwrap().to_owned(),
        ));
    }
    let (calls_here, authorize_url) = created[0].clone();
    let (refreshes_here, _) = created[1].clone();
    give_tokens(&dev, &calls_here, false).await;
    give_tokens(&dev, &refreshes_here, true).await;
    let state = url::Url::parse(&authorize_url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "saving connected");

    // Now: the same database served with insecure upstreams off.
    let TestApp { dir, db_url, .. } = dev;
    let app = TestApp::spawn_on(backend, dir, db_url, |s| {
        hop_connectors(s);
        s.security.allow_insecure_upstreams = false;
    })
    .await;
    let not_allowed = |r: &Resp, field: &str| {
        problem(r, 422, "upstream_not_allowed");
        let fields: Vec<&str> = r.json["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("no errors: {}", r.text))
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(fields.contains(&field), "{field} not named: {}", r.text);
    };

    // Save time: a setup, and install overrides in every notation of a loopback address.
    let before = snapshot(&app).await;
    let r = req_as(
        &app,
        &key,
        Method::PUT,
        "/v1/connectors/testhop/setup",
        Some(
            json!({"settings": {"fhir_base_url": "https://fhir.example.invalid/",
            "auth_base": format!("https://127.0.0.1:{port}/"), "client_id": "hop"}}),
        ),
    )
    .await;
    not_allowed(&r, "auth_base");
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("https://127.0.0.1:{port}/"),
        format!("https://[::1]:{port}/"),
        format!("https://2130706433:{port}/"),
        format!("https://0x7f.1:{port}/"),
        format!("https://localhost:{port}/"),
        format!("https://[::ffff:127.0.0.1]:{port}/"),
    ] {
        let r = req_as(
            &app,
            &key,
            Method::POST,
            installs,
            Some(json!({"connector": "testhop", "settings": {"fhir_base_url": url}})),
        )
        .await;
        not_allowed(&r, "fhir_base_url");
    }
    // The stored setup's token URL, for a client-credentials install (whose first token would
    // be fetched at once).
    let r = req_as(
        &app,
        &key,
        Method::POST,
        installs,
        Some(
            json!({"connector": "testhop", "auth_type": "oauth2_client_credentials",
            "settings": {"fhir_base_url": "https://fhir.example.invalid/"}}),
        ),
    )
    .await;
    not_allowed(&r, "auth_base");
    assert_eq!(snapshot(&app).await, before, "a refused save wrote");

    // Use time: a method call (its FHIR base), a refresh (its token URL), the callback's code
    // exchange (the token URL recorded with the state), the revocation on delete.
    let r = req_as(
        &app,
        &key,
        Method::POST,
        &format!("{installs}/{calls_here}/methods/get_patient"),
        Some(json!({"params": {"id": "p1"}})),
    )
    .await;
    not_allowed(&r, "fhir_base");
    let r = req_as(
        &app,
        &key,
        Method::POST,
        &format!("{installs}/{refreshes_here}/methods/get_patient"),
        Some(json!({"params": {"id": "p1"}})),
    )
    .await;
    not_allowed(&r, "token_url");
    let res = app
        .http
        .get(app.url("/connector/callback"))
        .query(&[("code", "code-hop-51aa"), ("state", state.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert!(res.text().await.unwrap().contains("token exchange failed"));
    let r = req_as(
        &app,
        &key,
        Method::DELETE,
        &format!("{installs}/{calls_here}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);

    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "something connected to 127.0.0.1 with insecure upstreams off"
    );
}

crate::both_backends! {
    api_key_rate_is_limited => api_key_rate;
    tenant_quotas_refuse_and_write_nothing => tenant_quotas;
    bad_key_flood_leaves_valid_keys_served => bad_key_flood;
    connector_call_rate_is_limited => connector_call_rate;
    connector_token_rate_is_limited => connector_token_rate;
    call_deadline_covers_retries => call_deadline;
    tenant_return_url_origins_are_enforced => tenant_return_url_origins;
    outbound_policy_holds_on_every_hop => outbound_policy_every_hop;
}
