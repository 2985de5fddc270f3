//! Token lifecycle ("refresh once, everywhere, and never lose a rotating refresh token"), end
//! to end: authorization-code installs of the Canvas connector (`refresh = "rotating"`) against
//! FakeOAuth (counts token requests, rotates refresh tokens, revokes the whole grant when a
//! rotated one is presented again) and FakeFhir (accepts only FakeOAuth's live access tokens).
//!
//! "Expiring" an install's token leaves the state time passing would: `token_expires_at` in the
//! past in the database, the access token dead at the provider (so a call that used it would
//! fail at FakeFhir, and FakeFhir's request count would show the retry), and this process's
//! hot-path install cache dropped (a setup write drops it, as the product does on every
//! settings change; otherwise the cached expiry would be trusted for
//! `tokens.install_cache_ttl_ms`).

use crate::support::{
    assert_problem, post_install, postgres_available, repo_root, Backend, TestApp,
};
use diesel::prelude::*;
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use switchboard_config::BackgroundRefreshPolicy;
use switchboard_core::{ms_to_rfc3339, now_ms};
use switchboard_db::schema::installs as installs_table;
use switchboard_service::{Clock, ManualClock};
use switchboard_testkit::fhir::FakeFhir;
use switchboard_testkit::oauth::{FakeOAuth, OAuthClient, TokenFault};

const CLIENT_ID: &str = "canvas-app";
const CLIENT_SECRET: &str = "canvas-s3cret";
/// FakeOAuth's default access-token lifetime.
const LIFETIME_MS: i64 = 3_600_000;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

struct World {
    app: TestApp,
    oauth: FakeOAuth,
    fhir: FakeFhir,
}

struct Install {
    account: String,
    id: String,
}

impl Install {
    fn path(&self) -> String {
        format!("/v1/accounts/{}/installs/{}", self.account, self.id)
    }
    fn method(&self) -> String {
        format!("{}/methods/get_patient", self.path())
    }
}

fn callback_of(base: &str) -> String {
    format!("{base}/connector/callback")
}

/// For the tests that run the real binary as a child server: a free port for it, a world whose
/// provider also accepts the child's callback, one authorized install (`acme`), the world's key
/// file and a work directory for the child.
async fn child_server_world(backend: Backend) -> (u16, World, Install, PathBuf, tempfile::TempDir) {
    let port = free_port();
    let child_base = format!("http://127.0.0.1:{port}");
    let app = TestApp::spawn(backend).await;
    let w = World::with_app(app, &[callback_of(&child_base)]).await;
    let ins = w.authorized_install("acme").await;
    let key_file = w.app.dir.path().join("secret.key");
    let work = tempfile::tempdir().unwrap();
    (port, w, ins, key_file, work)
}

/// A free loopback port (for a child server whose callback URL must be registered up front).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// FakeOAuth under Canvas's `/auth/` with one `client_secret_post` client registered for these
/// callback URLs, and a FakeFhir at the root of its host (Canvas's layout) trusting it.
fn upstreams(redirect_uris: &[String]) -> (FakeOAuth, FakeFhir) {
    let mut client = OAuthClient::post(CLIENT_ID, CLIENT_SECRET, &redirect_uris[0]);
    for r in &redirect_uris[1..] {
        client = client.redirect_uri(r);
    }
    let oauth = FakeOAuth::builder().prefix("/auth/").client(client).start();
    let fhir = FakeFhir::builder()
        .prefix("/")
        .seed_patients(2)
        .accept_tokens_from(oauth.token_validator())
        .start();
    (oauth, fhir)
}

impl World {
    async fn new(backend: Backend) -> World {
        Self::with_app(TestApp::spawn(backend).await, &[]).await
    }

    /// Upstreams for `app` (plus extra callback URLs, e.g. of a child server), setup written.
    async fn with_app(app: TestApp, extra_callbacks: &[String]) -> World {
        let mut uris = vec![callback_of(&app.base)];
        uris.extend_from_slice(extra_callbacks);
        let (oauth, fhir) = upstreams(&uris);
        let w = World { app, oauth, fhir };
        w.put_setup().await;
        w
    }

    async fn put_setup(&self) {
        let body = json!({"settings": {
            "instance_url": format!("{}/", self.oauth.origin()),
            "fhir_base_url": self.fhir.base_url(),
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        }});
        let (s, v) = self.app.put("/v1/connectors/canvas/setup", body).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }

    /// A Canvas authorization-code install in a new account, authorized through the real
    /// redirect flow.
    async fn authorized_install(&self, account: &str) -> Install {
        self.app.create_account(account).await;
        let v = post_install(&self.app, account, json!({"connector": "canvas"})).await;
        assert_eq!(v["status"], "pending_authorization", "{v}");
        let ins = Install {
            account: account.to_owned(),
            id: v["id"].as_str().unwrap().to_owned(),
        };
        complete_authorization(&self.app.base, v["authorize_url"].as_str().unwrap()).await;
        let got = self.get_install(&ins).await;
        assert_eq!(got["status"], "authorized", "{got}");
        ins
    }

    async fn get_install(&self, ins: &Install) -> Value {
        let (s, v) = self.app.get(&ins.path()).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    async fn call(&self, ins: &Install) -> (StatusCode, Value) {
        self.app
            .post(&ins.method(), json!({"params": {"id": "pat-0001"}}))
            .await
    }

    async fn row(&self, ins: &Install) -> switchboard_db::Install {
        let id = ins.id.clone();
        self.app
            .db(move |c| switchboard_db::repo::installs::find_by_id(c, &id))
            .await
            .expect("install row")
    }

    /// Sets `token_expires_at` (and optionally `last_refresh_at`) of the install's row.
    async fn set_times(&self, ins: &Install, expires_at: i64, last_refresh_at: Option<i64>) {
        let id = ins.id.clone();
        self.app
            .db(move |c| {
                use installs_table::dsl as i;
                diesel::update(i::installs.find(&id))
                    .set(i::token_expires_at.eq(Some(expires_at)))
                    .execute(c)?;
                if let Some(at) = last_refresh_at {
                    diesel::update(i::installs.find(&id))
                        .set(i::last_refresh_at.eq(Some(at)))
                        .execute(c)?;
                }
                Ok(())
            })
            .await;
        self.put_setup().await;
    }

    /// The access token expired: in the database, at the provider, and in this process's cache.
    async fn expire_token(&self, ins: &Install) {
        self.oauth.expire_access_tokens();
        self.set_times(ins, now_ms() - 1_000, None).await;
    }

    /// The refresh token the install holds (decrypted with the key ring the server uses).
    fn stored_refresh_token(&self, row: &switchboard_db::Install) -> String {
        stored_refresh_token(&self.app.dir.path().join("secret.key"), row)
    }
}

fn stored_refresh_token(key_file: &Path, row: &switchboard_db::Install) -> String {
    let ring = switchboard_crypto::KeyRing::load(key_file).expect("key ring");
    let blob = row
        .refresh_token
        .as_ref()
        .expect("a refresh token is stored");
    ring.decrypt_str(blob, format!("install:{}:refresh_token", row.id))
        .expect("refresh token decrypts")
}

/// Opens the authorize URL like a browser (FakeOAuth consents at once) and follows its redirect
/// to the app's callback, which must answer with the "Connected" page.
async fn complete_authorization(app_base: &str, authorize_url: &str) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = http.get(authorize_url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FOUND, "authorize should redirect");
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!("{}?", callback_of(app_base))),
        "{location}"
    );
    let res = http.get(&location).send().await.unwrap();
    let status = res.status();
    let body = res.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("Connected"), "{body}");
}

/// `n` concurrent `get_patient` calls through `base` on a client with a pool as large as the
/// burst. Returns (status, body) per call; status 0 for a transport error.
async fn burst(base: &str, key: &str, ins: &Install, n: usize) -> Vec<(u16, String)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(n)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let url = format!("{base}{}", ins.method());
    join_all((0..n).map(|_| {
        let req = client
            .post(&url)
            .bearer_auth(key)
            .json(&json!({"params": {"id": "pat-0001"}}));
        async move {
            match req.send().await {
                Ok(r) => {
                    let s = r.status().as_u16();
                    (s, r.text().await.unwrap_or_default())
                }
                Err(e) => (0, e.to_string()),
            }
        }
    }))
    .await
}

/// A realistic, slow token endpoint (the next two requests take 500 ms), so a refresh is still in
/// flight while the rest of a burst arrives, on every replica. Two: if a second refresh were
/// sent, it would be in flight at the same time as the first (and the provider would see the
/// rotated refresh token twice). `clear_token_faults` afterwards.
fn slow_token_endpoint(oauth: &FakeOAuth) {
    oauth.fail_token_next(2, TokenFault::Delay(Duration::from_millis(500)));
}

/// Every call answered 200 with the patient FakeFhir holds.
fn assert_all_ok(results: &[(u16, String)]) {
    let bad: Vec<_> = results.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        bad.is_empty(),
        "{} of {} calls failed; first: {:?}",
        bad.len(),
        results.len(),
        bad.first()
    );
    for (_, body) in results {
        let v: Value = serde_json::from_str(body).expect("JSON body");
        assert_eq!(v["status"], 200, "{v}");
        assert_eq!(v["data"]["id"], "pat-0001", "{v}");
    }
}

/// The bearer tokens FakeFhir saw from request `from` on.
fn bearers_since(fhir: &FakeFhir, from: usize) -> HashSet<String> {
    fhir.requests()[from..]
        .iter()
        .map(|r| r.bearer().expect("bearer token").to_owned())
        .collect()
}

/// After exactly one successful refresh between `t0` and `t1`: one token version more, the
/// lease released, a new expiry one lifetime after the refresh, no refresh error, and
/// `GET` showing exactly that (and no token).
async fn assert_refreshed_once(
    w: &World,
    ins: &Install,
    before: &switchboard_db::Install,
    t0: i64,
    t1: i64,
) -> switchboard_db::Install {
    let after = w.row(ins).await;
    assert_eq!(after.status, "authorized");
    assert_eq!(
        after.token_version,
        before.token_version + 1,
        "one token write"
    );
    assert_eq!(
        (after.lease_owner.as_deref(), after.lease_until),
        (None, None)
    );
    assert_eq!(after.last_refresh_error, None);
    assert_eq!(after.last_error, None);
    let refreshed_at = after.last_refresh_at.expect("last_refresh_at");
    assert!(
        (t0..=t1).contains(&refreshed_at),
        "{refreshed_at} not in {t0}..={t1}"
    );
    let expires = after.token_expires_at.expect("expires_at");
    assert!(
        (expires - refreshed_at - LIFETIME_MS).abs() < 1_000,
        "expires_at {expires} is not one lifetime after the refresh at {refreshed_at}"
    );
    let got = w.get_install(ins).await;
    assert_eq!(got["status"], "authorized", "{got}");
    assert_eq!(got["expires_at"], ms_to_rfc3339(expires), "{got}");
    assert_eq!(got["last_refresh_at"], ms_to_rfc3339(refreshed_at), "{got}");
    assert_eq!(got["last_refresh_error"], Value::Null, "{got}");
    assert_eq!(got["last_error"], Value::Null, "{got}");
    let text = got.to_string();
    let rt = w.stored_refresh_token(&after);
    assert!(!text.contains(&rt), "GET must not show the refresh token");
    after
}

// ---------------------------------------------------------------------------------------------
// 1. 1,000 concurrent calls on an expired token: one refresh
// ---------------------------------------------------------------------------------------------

async fn thousand_concurrent_calls_refresh_once(backend: Backend) {
    let w = World::new(backend).await;
    let ins = w.authorized_install("acme").await;
    let before = w.row(&ins).await;
    let rt0 = w.stored_refresh_token(&before);
    w.expire_token(&ins).await;
    let (refreshes, fhir_from) = (w.oauth.refresh_request_count(), w.fhir.request_count());
    slow_token_endpoint(&w.oauth);

    let t0 = now_ms();
    let started = Instant::now();
    let results = burst(&w.app.base, &w.app.api_key, &ins, 1000).await;
    let elapsed = started.elapsed();
    w.oauth.clear_token_faults();
    let t1 = now_ms();
    eprintln!("token_lifecycle {backend:?}: 1000 concurrent calls on an expired token served in {elapsed:?}");

    assert_all_ok(&results);
    assert_eq!(
        w.oauth.refresh_request_count() - refreshes,
        1,
        "one refresh"
    );
    assert_eq!(w.oauth.refresh_tokens_seen(), vec![rt0.clone()]);
    // The refresh outcome is counted once, under its outcome (no id as a label).
    let metrics = w
        .app
        .http
        .get(w.app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"switchboard_token_refreshes_total{outcome="refreshed"} 1"#),
        "{metrics}"
    );
    // Each call reached FakeFhir exactly once, all with the one new token (a call that used the
    // expired one would have been answered 401 and retried).
    assert_eq!(w.fhir.request_count() - fhir_from, 1000);
    let used = bearers_since(&w.fhir, fhir_from);
    assert_eq!(used.len(), 1, "all calls used the same access token");
    assert!(w.oauth.is_access_token_valid(used.iter().next().unwrap()));

    let after = assert_refreshed_once(&w, &ins, &before, t0, t1).await;
    // The rotated refresh token was stored: the provider's current one, the old one dead.
    let rt1 = w.stored_refresh_token(&after);
    assert_ne!(rt1, rt0);
    assert!(w.oauth.is_refresh_token_valid(&rt1));
    assert!(!w.oauth.is_refresh_token_valid(&rt0));
}

// ---------------------------------------------------------------------------------------------
// 2. Two processes on one PostgreSQL database: one refresh (the database lease)
// ---------------------------------------------------------------------------------------------

/// The install's token has expired and the token endpoint is slow: 500 concurrent calls on
/// the world's app and 500 on the server at `other_base` (same database) all succeed with one
/// refresh between them, from the refresh token the install held, and the rotated one is
/// stored. `servers` names the two in the timing line.
async fn bursts_on_two_servers_refresh_once(
    w: &World,
    ins: &Install,
    other_base: &str,
    servers: &str,
) {
    let before = w.row(ins).await;
    let rt0 = w.stored_refresh_token(&before);
    w.expire_token(ins).await;
    let (refreshes, fhir_from) = (w.oauth.refresh_request_count(), w.fhir.request_count());
    slow_token_endpoint(&w.oauth);

    let t0 = now_ms();
    let started = Instant::now();
    let (a, b) = futures_util::join!(
        burst(&w.app.base, &w.app.api_key, ins, 500),
        burst(other_base, &w.app.api_key, ins, 500)
    );
    let elapsed = started.elapsed();
    w.oauth.clear_token_faults();
    let t1 = now_ms();
    eprintln!("token_lifecycle: 2 x 500 concurrent calls ({servers}) served in {elapsed:?}");

    assert_all_ok(&a);
    assert_all_ok(&b);
    assert_eq!(
        w.oauth.refresh_request_count() - refreshes,
        1,
        "one refresh"
    );
    assert_eq!(w.oauth.refresh_tokens_seen(), vec![rt0]);
    assert_eq!(w.fhir.request_count() - fhir_from, 1000);
    assert_eq!(bearers_since(&w.fhir, fhir_from).len(), 1);
    let after = assert_refreshed_once(w, ins, &before, t0, t1).await;
    assert!(w
        .oauth
        .is_refresh_token_valid(&w.stored_refresh_token(&after)));
}

/// PostgreSQL only: two Switchboard processes share one database only on PostgreSQL in
/// production (SQLite is a single-host embedded store). The second `Application` builds its
/// own `Services` (its own in-process locks, caches and lease owner id), so only the database
/// lease can keep the two from refreshing twice.
#[actix_web::test]
async fn two_replicas_on_one_postgres_refresh_once() {
    if !postgres_available() {
        return;
    }
    let w = World::new(Backend::Postgres).await;
    let ins = w.authorized_install("acme").await;
    let key_file = w.app.dir.path().join("secret.key");
    let replica = TestApp::spawn_on(
        Backend::Postgres,
        tempfile::tempdir().unwrap(),
        w.app.db_url.clone(),
        |s| s.secrets.key_file = key_file.clone(),
    )
    .await;
    bursts_on_two_servers_refresh_once(&w, &ins, &replica.base, "two replicas").await;
}

/// A `switchboard serve` child process, configured through the environment like in production.
pub(crate) struct ChildServer {
    pub(crate) child: std::process::Child,
    pub(crate) base: String,
    log: PathBuf,
}

impl ChildServer {
    pub(crate) async fn start(
        port: u16,
        db_url: &str,
        key_file: &Path,
        work_dir: &Path,
        extra_env: &[(&str, &str)],
    ) -> ChildServer {
        let base = format!("http://127.0.0.1:{port}");
        let log = work_dir.join(format!("switchboard-{port}-{}.log", now_ms()));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.arg("serve")
            .current_dir(work_dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (k, _) in std::env::vars() {
            if k.starts_with("SWITCHBOARD") {
                cmd.env_remove(k);
            }
        }
        let connectors = repo_root().join("connectors");
        let env = [
            ("SWITCHBOARD__DATABASE__URL", db_url.to_owned()),
            ("SWITCHBOARD__DATABASE__POOL_SIZE", "8".into()),
            ("SWITCHBOARD__SERVER__BIND", format!("127.0.0.1:{port}")),
            ("SWITCHBOARD__SERVER__PUBLIC_URL", base.clone()),
            ("SWITCHBOARD__SERVER__WORKERS", "2".into()),
            (
                "SWITCHBOARD__CONNECTORS__DIR",
                connectors.display().to_string(),
            ),
            (
                "SWITCHBOARD__SECRETS__KEY_FILE",
                key_file.display().to_string(),
            ),
            (
                "SWITCHBOARD__SECURITY__ALLOW_INSECURE_UPSTREAMS",
                "true".into(),
            ),
            (
                "SWITCHBOARD__TOKENS__BACKGROUND_REFRESH_INTERVAL_SECS",
                "0".into(),
            ),
        ];
        for (k, v) in env {
            cmd.env(k, v);
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn switchboard serve");
        let mut server = ChildServer { child, base, log };
        server.wait_ready().await;
        server
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `/readyz` until the server answers 200 (it migrates and binds first).
    async fn wait_ready(&mut self) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("switchboard exited early ({status}):\n{}", self.log_text());
            }
            if let Ok(r) = http.get(format!("{}/readyz", self.base)).send().await {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "switchboard not ready:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no shutdown hook, no lease release, nothing flushed.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// PostgreSQL only (see `two_replicas_on_one_postgres_refresh_once`): the second process is the
/// real `switchboard` binary, a separate OS process, configured only through the environment.
#[actix_web::test]
async fn separate_os_process_on_one_postgres_refreshes_once() {
    if !postgres_available() {
        return;
    }
    let w = World::new(Backend::Postgres).await;
    let ins = w.authorized_install("acme").await;
    let work = tempfile::tempdir().unwrap();
    let child = ChildServer::start(
        free_port(),
        &w.app.db_url,
        &w.app.dir.path().join("secret.key"),
        work.path(),
        &[],
    )
    .await;
    bursts_on_two_servers_refresh_once(&w, &ins, &child.base, "test process + child process").await;
}

// ---------------------------------------------------------------------------------------------
// 3. Rotation: successive refreshes never send a refresh token twice
// ---------------------------------------------------------------------------------------------

async fn five_rotations_never_reuse_a_refresh_token(backend: Backend) {
    let w = World::new(backend).await;
    let ins = w.authorized_install("acme").await;
    let mut row = w.row(&ins).await;
    let mut expected_seen = Vec::new();
    for round in 1..=5 {
        let held = w.stored_refresh_token(&row);
        expected_seen.push(held.clone());
        w.expire_token(&ins).await;
        let t0 = now_ms();
        let (s, v) = w.call(&ins).await;
        let t1 = now_ms();
        assert_eq!(s, StatusCode::OK, "round {round}: {v}");
        assert_eq!(v["data"]["id"], "pat-0001");
        assert_eq!(w.oauth.refresh_request_count(), round);
        // The provider got the refresh token the install held, and the install now holds the
        // provider's current one.
        assert_eq!(w.oauth.refresh_tokens_seen(), expected_seen);
        let next = assert_refreshed_once(&w, &ins, &row, t0, t1).await;
        let now_held = w.stored_refresh_token(&next);
        assert_ne!(now_held, held);
        assert!(w.oauth.is_refresh_token_valid(&now_held), "round {round}");
        row = next;
    }
    let seen = w.oauth.refresh_tokens_seen();
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), 5, "no refresh token was sent twice");
    // Still working, and a fresh token needs no refresh.
    let (s, v) = w.call(&ins).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(w.oauth.refresh_request_count(), 5);
}

// ---------------------------------------------------------------------------------------------
// 4. Token endpoint unavailable
// ---------------------------------------------------------------------------------------------

async fn token_endpoint_503_is_transient(backend: Backend) {
    let w = World::new(backend).await;
    let ins = w.authorized_install("acme").await;
    let rt0 = w.stored_refresh_token(&w.row(&ins).await);

    // (a) Refresh ahead of expiry (30 s left of a 1 h token, inside the 60 s margin) while the
    // endpoint answers 503: the call still succeeds with the current, valid token.
    let expires = now_ms() + 30_000;
    w.set_times(&ins, expires, Some(expires - LIFETIME_MS))
        .await;
    w.oauth.fail_token_next(1, TokenFault::Status503);
    let t0 = now_ms();
    let (s, v) = w.call(&ins).await;
    let t1 = now_ms();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(w.oauth.refresh_request_count(), 1);
    let row = w.row(&ins).await;
    assert_eq!(row.status, "authorized");
    assert_eq!(row.token_expires_at, Some(expires), "tokens untouched");
    assert_eq!(w.stored_refresh_token(&row), rt0, "refresh token kept");
    let got = w.get_install(&ins).await;
    assert_eq!(got["status"], "authorized", "{got}");
    assert_eq!(got["expires_at"], ms_to_rfc3339(expires), "{got}");
    let err = got["last_refresh_error"]
        .as_str()
        .expect("last_refresh_error");
    assert!(err.contains("503"), "{err}");
    // last_refresh_at is the time of the last refresh attempt (here: the failed one).
    let at = row.last_refresh_at.unwrap();
    assert!((t0..=t1).contains(&at));
    assert_eq!(got["last_refresh_at"], ms_to_rfc3339(at), "{got}");

    // (b) Expired token and the endpoint down: 503 upstream_unavailable (not a credential
    // error), the install stays authorized.
    w.expire_token(&ins).await;
    w.oauth.fail_token_next(1, TokenFault::Status503);
    let (s, v) = w.call(&ins).await;
    assert_problem(s, &v, 503, "upstream_unavailable");
    assert!(v["retry_after"].is_u64(), "{v}");
    assert_eq!(w.oauth.refresh_request_count(), 2);
    let got = w.get_install(&ins).await;
    assert_eq!(got["status"], "authorized", "{got}");
    assert_eq!(got["last_error"], Value::Null, "{got}");
    assert!(
        got["last_refresh_error"].as_str().unwrap().contains("503"),
        "{got}"
    );
    let row = w.row(&ins).await;
    assert_eq!(w.stored_refresh_token(&row), rt0);
    assert_eq!((row.lease_owner, row.lease_until), (None, None));

    // (c) The endpoint is back: the next call refreshes and succeeds; the error is cleared.
    let before = w.row(&ins).await;
    let t0 = now_ms();
    let (s, v) = w.call(&ins).await;
    let t1 = now_ms();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(w.oauth.refresh_request_count(), 3);
    let after = assert_refreshed_once(&w, &ins, &before, t0, t1).await;
    assert!(w
        .oauth
        .is_refresh_token_valid(&w.stored_refresh_token(&after)));
}

/// While the token endpoint is down, concurrent calls that need the refresh share ONE attempt
/// and its outcome instead of each asking the endpoint again: the still valid token while there
/// is one, then the error.
async fn outage_under_concurrency_makes_one_attempt(backend: Backend) {
    let w = World::new(backend).await;
    let ins = w.authorized_install("acme").await;
    // Down, and slow to say so: the attempt is in flight while the whole burst queues.
    w.oauth.fail_token_next(
        1000,
        TokenFault::DelayThen(Duration::from_millis(500), Box::new(TokenFault::Status503)),
    );
    let tokens = w.oauth.token_request_count();

    // (a) 30 s left of a 1 h token (inside the refresh margin): everyone gets the valid token.
    let expires = now_ms() + 30_000;
    w.set_times(&ins, expires, Some(expires - LIFETIME_MS))
        .await;
    let results = burst(&w.app.base, &w.app.api_key, &ins, 100).await;
    assert_all_ok(&results);
    assert_eq!(w.oauth.token_request_count() - tokens, 1, "one attempt");
    let row = w.row(&ins).await;
    assert_eq!(row.token_expires_at, Some(expires));
    assert!(row.last_refresh_error.is_some());

    // (b) Expired: everyone gets 503 upstream_unavailable from the one attempt.
    w.expire_token(&ins).await;
    let results = burst(&w.app.base, &w.app.api_key, &ins, 100).await;
    for (s, body) in &results {
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        assert_problem(
            StatusCode::from_u16(*s).unwrap(),
            &v,
            503,
            "upstream_unavailable",
        );
    }
    assert_eq!(
        w.oauth.token_request_count() - tokens,
        2,
        "one more attempt"
    );
    let got = w.get_install(&ins).await;
    assert_eq!(got["status"], "authorized", "{got}");
    assert!(got["last_refresh_error"].is_string(), "{got}");

    w.oauth.clear_token_faults();
    let (s, v) = w.call(&ins).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(w.oauth.token_request_count() - tokens, 3);
    assert_eq!(w.get_install(&ins).await["last_refresh_error"], Value::Null);
}

// ---------------------------------------------------------------------------------------------
// 5. invalid_grant: needs re-authorization, recovered without a restart
// ---------------------------------------------------------------------------------------------

async fn invalid_grant_needs_reauthorization(backend: Backend) {
    let w = World::new(backend).await;
    let ins = w.authorized_install("acme").await;
    let before = w.row(&ins).await;
    w.expire_token(&ins).await;
    w.oauth.fail_token_next(1, TokenFault::InvalidGrant);
    let authorize_path = format!("{}/authorize", ins.path());

    let (s, v) = w.call(&ins).await;
    assert_problem(s, &v, 409, "install_not_authorized");
    assert_eq!(v["install_status"], "needs_reauthorization", "{v}");
    assert!(v["hint"].as_str().unwrap().contains("/authorize"), "{v}");
    assert_eq!(w.oauth.refresh_request_count(), 1);

    let got = w.get_install(&ins).await;
    assert_eq!(got["status"], "needs_reauthorization", "{got}");
    let last_error = got["last_error"].as_str().expect("last_error");
    assert!(last_error.contains("invalid_grant"), "{last_error}");
    assert_eq!(
        got["expires_at"],
        ms_to_rfc3339(w.row(&ins).await.token_expires_at.unwrap())
    );
    let row = w.row(&ins).await;
    assert_eq!(row.token_version, before.token_version, "no token write");
    assert_eq!((row.lease_owner, row.lease_until), (None, None));

    // Later calls: 409 with the exact re-authorization path, and no more token requests.
    let (s, v) = w.call(&ins).await;
    assert_problem(s, &v, 409, "install_not_authorized");
    assert!(
        v["detail"].as_str().unwrap().contains(&authorize_path),
        "{v}"
    );
    assert_eq!(
        w.oauth.token_request_count(),
        2,
        "code exchange + one refresh"
    );

    // Re-authorize: same process, no restart.
    let (s, v) = w.app.post(&authorize_path, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let t0 = now_ms();
    complete_authorization(&w.app.base, v["authorize_url"].as_str().unwrap()).await;
    let t1 = now_ms();
    let got = w.get_install(&ins).await;
    assert_eq!(got["status"], "authorized", "{got}");
    assert_eq!(got["last_error"], Value::Null, "{got}");
    let row = w.row(&ins).await;
    let at = row.last_refresh_at.unwrap();
    assert!((t0..=t1).contains(&at));
    assert_eq!(
        got["expires_at"],
        ms_to_rfc3339(row.token_expires_at.unwrap())
    );
    let (s, v) = w.call(&ins).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        w.oauth.refresh_request_count(),
        1,
        "a fresh grant needs no refresh"
    );
    assert!(w
        .oauth
        .is_refresh_token_valid(&w.stored_refresh_token(&row)));
}

// ---------------------------------------------------------------------------------------------
// 6. Crash during a refresh
// ---------------------------------------------------------------------------------------------

/// The real binary is SIGKILLed after the provider rotated the refresh token but before its
/// answer arrived, then restarted on the same database. The new refresh token is lost with the
/// process (it never reached it); the restarted host waits out the dead process's lease, tries
/// the last refresh token it has, the provider treats that as reuse and revokes the grant, and
/// the install says so: `needs_reauthorization` with a clear `last_error`, calls answered 409
/// with the way out, and re-authorization through the restarted process works.
async fn crash_during_refresh_never_leaves_a_silent_break(backend: Backend) {
    let (port, w, ins, key_file, work) = child_server_world(backend).await;
    let rt0 = w.stored_refresh_token(&w.row(&ins).await);
    // A short lease so the restarted process may take over after 3 s; the configuration requires
    // it to exceed the token request timeout (so a live refresher always ends first).
    let env = [
        ("SWITCHBOARD__TOKENS__LEASE_TTL_MS", "3000"),
        ("SWITCHBOARD__UPSTREAM__REQUEST_TIMEOUT_MS", "2000"),
        ("SWITCHBOARD__TOKENS__WAIT_TIMEOUT_MS", "20000"),
    ];
    let mut first = ChildServer::start(port, &w.app.db_url, &key_file, work.path(), &env).await;

    w.expire_token(&ins).await;
    w.oauth
        .fail_token_next(1, TokenFault::RespondAfter(Duration::from_secs(60)));
    let url = format!("{}{}", first.base, ins.method());
    let key = w.app.api_key.clone();
    let pending = actix_web::rt::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .bearer_auth(key)
            .json(&json!({"params": {"id": "pat-0001"}}))
            .send()
            .await
            .map(|r| r.status())
    });
    // Wait until the provider has rotated rt0 (the answer is held back).
    let deadline = Instant::now() + Duration::from_secs(20);
    while w.oauth.is_refresh_token_valid(&rt0) {
        assert!(
            Instant::now() < deadline,
            "the refresh never reached the provider"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(w.oauth.refresh_tokens_seen(), vec![rt0.clone()]);
    let row = w.row(&ins).await;
    assert!(row.lease_owner.is_some(), "the refresh holds the lease");
    first.kill();
    let outcome = pending.await.unwrap();
    assert!(
        !matches!(outcome, Ok(s) if s.is_success()),
        "the in-flight call cannot have succeeded: {outcome:?}"
    );
    let after_crash = w.row(&ins).await;
    assert_eq!(
        after_crash.token_version, row.token_version,
        "nothing was written"
    );
    assert_eq!(after_crash.status, "authorized");

    let second = ChildServer::start(port, &w.app.db_url, &key_file, work.path(), &env).await;
    let call = |base: String| {
        let (key, path) = (w.app.api_key.clone(), ins.method());
        async move {
            let r = reqwest::Client::new()
                .post(format!("{base}{path}"))
                .bearer_auth(key)
                .json(&json!({"params": {"id": "pat-0001"}}))
                .send()
                .await
                .unwrap();
            let s = r.status();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, v) = call(second.base.clone()).await;
    // Either outcome is honest; with a provider that rotated, it is re-authorization.
    assert_problem(s, &v, 409, "install_not_authorized");
    assert_eq!(v["install_status"], "needs_reauthorization", "{v}");
    assert!(v["hint"].as_str().unwrap().contains("/authorize"), "{v}");
    let got = w.get_install(&ins).await;
    assert_eq!(got["status"], "needs_reauthorization", "{got}");
    assert!(
        got["last_error"]
            .as_str()
            .unwrap()
            .contains("invalid_grant"),
        "{got}"
    );
    let row = w.row(&ins).await;
    assert_eq!((row.lease_owner, row.lease_until), (None, None));
    assert_eq!(w.oauth.refresh_tokens_seen(), vec![rt0.clone(), rt0]);

    // The way out works through the restarted process.
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}{}/authorize", second.base, ins.path()))
        .bearer_auth(&w.app.api_key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    complete_authorization(&second.base, v["authorize_url"].as_str().unwrap()).await;
    let got = w.get_install(&ins).await;
    let row = w.row(&ins).await;
    assert_eq!(got["status"], "authorized", "{got}");
    assert_eq!(got["last_error"], Value::Null, "{got}");
    assert_eq!(
        got["expires_at"],
        ms_to_rfc3339(row.token_expires_at.unwrap())
    );
    assert_eq!(
        got["last_refresh_at"],
        ms_to_rfc3339(row.last_refresh_at.unwrap())
    );
    let (s, v) = call(second.base.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(w
        .oauth
        .is_refresh_token_valid(&w.stored_refresh_token(&row)));
    drop(second);
}

// ---------------------------------------------------------------------------------------------
// 7. Client credentials: one new token under concurrency
// ---------------------------------------------------------------------------------------------

async fn client_credentials_token_fetched_once(backend: Backend) {
    let w = World::new(backend).await;
    w.app.create_account("acme").await;
    let (s, v) = w
        .app
        .post(
            "/v1/accounts/acme/installs",
            json!({"connector": "canvas", "auth_type": "oauth2_client_credentials"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["status"], "authorized", "{v}");
    let ins = Install {
        account: "acme".into(),
        id: v["id"].as_str().unwrap().to_owned(),
    };
    assert_eq!(w.oauth.token_request_count(), 1, "first token at creation");
    let before = w.row(&ins).await;
    assert!(before.refresh_token.is_none());
    w.expire_token(&ins).await;
    let fhir_from = w.fhir.request_count();

    slow_token_endpoint(&w.oauth);
    let t0 = now_ms();
    let results = burst(&w.app.base, &w.app.api_key, &ins, 50).await;
    let t1 = now_ms();
    w.oauth.clear_token_faults();
    assert_all_ok(&results);
    assert_eq!(w.oauth.token_request_count(), 2, "one new token");
    assert_eq!(w.oauth.refresh_request_count(), 0);
    let last = w.oauth.token_requests().pop().unwrap();
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&last.body)
        .into_owned()
        .collect();
    assert!(form.contains(&("grant_type".into(), "client_credentials".into())));
    assert_eq!(bearers_since(&w.fhir, fhir_from).len(), 1);

    let after = w.row(&ins).await;
    assert_eq!(after.token_version, before.token_version + 1);
    assert_eq!(
        (after.lease_owner.as_deref(), after.lease_until),
        (None, None)
    );
    let at = after.last_refresh_at.unwrap();
    assert!((t0..=t1).contains(&at));
    let expires = after.token_expires_at.unwrap();
    assert!((expires - at - LIFETIME_MS).abs() < 1_000);
    let got = w.get_install(&ins).await;
    assert_eq!(got["status"], "authorized", "{got}");
    assert_eq!(got["expires_at"], ms_to_rfc3339(expires), "{got}");
    assert_eq!(got["last_refresh_at"], ms_to_rfc3339(at), "{got}");
    assert_eq!(got["last_refresh_error"], Value::Null, "{got}");
}

/// The background refresher keeps an idle install alive: with no method call at all, a token
/// expiring within the horizon is refreshed once (rotating the refresh token), and a token far
/// from expiry is left alone.
/// Waits for the background refresher's next completed pass.
async fn next_pass(passes: &mut tokio::sync::watch::Receiver<u64>) {
    tokio::time::timeout(Duration::from_secs(15), passes.changed())
        .await
        .expect("a background refresh pass within 15 s")
        .expect("the refresher is alive");
}

async fn background_refresher_keeps_idle_installs_alive(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.tokens.background_refresh_interval_secs = 1;
        s.tokens.background_refresh_horizon_secs = 300;
        // The policy before issue 10: every install whose token expires within the horizon.
        s.tokens.background_refresh_policy = BackgroundRefreshPolicy::Eager;
    })
    .await;
    let w = World::with_app(app, &[]).await;
    let due = w.authorized_install("idle-due").await;
    let later = w.authorized_install("idle-later").await;
    let due_before = w.row(&due).await;
    let later_before = w.row(&later).await;
    let rt_before = w.stored_refresh_token(&due_before);
    // Due: expires within the 300 s horizon. Later: an hour away.
    w.set_times(&due, now_ms() + 120_000, None).await;
    w.set_times(&later, now_ms() + 3_600_000, None).await;
    let base_refreshes = w.oauth.refresh_request_count();

    // The refresher runs every second on its own timer; the test waits for its passes (an event
    // per completed pass), never for a guessed amount of time.
    let mut passes = w.app.services.tokens.background_passes();
    while w.row(&due).await.token_version == due_before.token_version {
        next_pass(&mut passes).await;
    }
    let due_after = w.row(&due).await;
    assert_eq!(due_after.status, "authorized");
    assert!(
        due_after.token_expires_at.unwrap() > now_ms() + 300_000,
        "a fresh token"
    );
    assert_ne!(w.stored_refresh_token(&due_after), rt_before, "rotated");
    assert!(w
        .oauth
        .is_refresh_token_valid(&w.stored_refresh_token(&due_after)));
    assert_eq!(w.oauth.refresh_request_count(), base_refreshes + 1);
    // Two more complete passes: nothing else is due, so nothing else is refreshed.
    let seen = *passes.borrow_and_update();
    while *passes.borrow_and_update() < seen + 2 {
        next_pass(&mut passes).await;
    }
    assert_eq!(w.oauth.refresh_request_count(), base_refreshes + 1);
    assert_eq!(
        w.row(&later).await.token_version,
        later_before.token_version,
        "a token an hour from expiry is left alone"
    );
    // The refreshed install serves calls with its new token, no further refresh.
    let (s, v) = w.call(&due).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(w.oauth.refresh_request_count(), base_refreshes + 1);
}

/// Transient token-endpoint failures are retried with exponential backoff, not on every call:
/// within the backoff window calls get 503 `upstream_unavailable` with the remaining wait as
/// `retry_after` and no token request is made; the next attempt waits twice as long; once the
/// endpoint is back, the first attempt after the window refreshes and clears the error. The
/// token lifecycle runs on a manual clock, so the windows are exact and nothing sleeps.
async fn token_endpoint_backoff_between_attempts(backend: Backend) {
    let clock = ManualClock::new(now_ms());
    let app = TestApp::spawn_with_clock(backend, clock.clone(), |s| {
        s.tokens.refresh_backoff_initial_ms = 1_000;
        s.tokens.refresh_backoff_max_ms = 60_000;
    })
    .await;
    let w = World::with_app(app, &[]).await;
    let ins = w.authorized_install("acme").await;
    w.expire_token(&ins).await;
    // The token expired one second before this instant.
    clock.set(now_ms());
    w.oauth.fail_token_next(1_000, TokenFault::Status503);
    let base = w.oauth.token_request_count();

    // First failure: one attempt, then a 1 s window.
    let (s, v) = w.call(&ins).await;
    assert_problem(s, &v, 503, "upstream_unavailable");
    assert_eq!(v["retry_after"], 1, "{v}");
    assert_eq!(w.oauth.token_request_count() - base, 1);
    // Calls inside the window (the clock has not moved, then 900 ms on).
    for step in [0, 0, 900] {
        clock.advance(Duration::from_millis(step));
        let (s, v) = w.call(&ins).await;
        assert_problem(s, &v, 503, "upstream_unavailable");
        assert_eq!(v["retry_after"], 1, "{v}");
    }
    assert_eq!(
        w.oauth.token_request_count() - base,
        1,
        "no attempt inside the backoff window"
    );

    // After the window: a second attempt, which fails and doubles the window to 2 s.
    clock.advance(Duration::from_millis(100));
    let (s, v) = w.call(&ins).await;
    assert_problem(s, &v, 503, "upstream_unavailable");
    assert_eq!(w.oauth.token_request_count() - base, 2);
    assert_eq!(v["retry_after"], 2, "{v}");
    let (s, v) = w.call(&ins).await;
    assert_problem(s, &v, 503, "upstream_unavailable");
    assert_eq!(v["retry_after"], 2, "{v}");
    let got = w.get_install(&ins).await;
    assert_eq!(got["status"], "authorized", "{got}");
    assert!(
        got["last_refresh_error"].as_str().unwrap().contains("503"),
        "{got}"
    );

    // The endpoint recovers inside the window: still no attempt until the window ends.
    w.oauth.clear_token_faults();
    clock.advance(Duration::from_millis(1_500));
    let (s, v) = w.call(&ins).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["retry_after"], 1, "{v}");
    assert_eq!(w.oauth.token_request_count() - base, 2);
    clock.advance(Duration::from_millis(500));
    let (s, v) = w.call(&ins).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(w.oauth.token_request_count() - base, 3);
    assert_eq!(w.get_install(&ins).await["last_refresh_error"], Value::Null);
}

/// The token lifecycle's status changes reach a webhook receiver (verified with the Standard
/// Webhooks reference library), in order: `install.authorized` from the callback,
/// `install.refresh_failing` after `webhooks.refresh_failing_after` transient failures in a
/// row (once), `install.recovered` when a refresh works again, `install.needs_reauthorization`
/// on `invalid_grant`.
async fn status_changes_send_webhooks(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.webhooks.poll_interval_ms = 10;
        s.webhooks.refresh_failing_after = 2;
    })
    .await;
    let w = World::with_app(app, &[]).await;
    let receiver = crate::webhooks::Receiver::start();
    let (_, secret) = crate::webhooks::create_webhook(
        &w.app,
        &receiver.url("t"),
        json!([
            "install.authorized",
            "install.refresh_failing",
            "install.recovered",
            "install.needs_reauthorization"
        ]),
    )
    .await;
    receiver.configure("t", &secret, 0, false).await;
    let ins = w.authorized_install("acme").await;

    // Three transient failures (one event after the second), then a refresh that works.
    w.expire_token(&ins).await;
    w.oauth.fail_token_next(3, TokenFault::Status503);
    for _ in 0..3 {
        let (s, v) = w.call(&ins).await;
        assert_problem(s, &v, 503, "upstream_unavailable");
    }
    let (s, v) = w.call(&ins).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // invalid_grant: needs re-authorization.
    w.expire_token(&ins).await;
    w.oauth.fail_token_next(1, TokenFault::InvalidGrant);
    let (s, v) = w.call(&ins).await;
    assert_problem(s, &v, 409, "install_not_authorized");

    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.accepted("t").await.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            receiver.received("t").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = receiver.received("t").await;
    let types: Vec<&str> = got
        .iter()
        .map(|r| r["payload"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "install.authorized",
            "install.refresh_failing",
            "install.recovered",
            "install.needs_reauthorization"
        ]
    );
    assert!(got
        .iter()
        .all(|r| r["verified"] == true && r["status"] == 204));
    assert!(got
        .iter()
        .all(|r| r["payload"]["data"]["install"] == ins.id.as_str()));
    assert_eq!(got[3]["payload"]["data"]["status"], "needs_reauthorization");
    assert_eq!(got[1]["payload"]["data"]["status"], "authorized");
}

crate::both_backends! {
    webhooks_of_status_changes => status_changes_send_webhooks;
    token_endpoint_backoff => token_endpoint_backoff_between_attempts;
    background_refresher => background_refresher_keeps_idle_installs_alive;
    thousand_concurrent_expired_calls => thousand_concurrent_calls_refresh_once;
    five_rotations => five_rotations_never_reuse_a_refresh_token;
    token_endpoint_503 => token_endpoint_503_is_transient;
    token_endpoint_outage_concurrent => outage_under_concurrency_makes_one_attempt;
    invalid_grant => invalid_grant_needs_reauthorization;
    crash_during_refresh => crash_during_refresh_never_leaves_a_silent_break;
    client_credentials_expiry => client_credentials_token_fetched_once;
}

// ---------------------------------------------------------------------------------------------
// 8. Issue 10: crash recovery in seconds, Retry-After, detached refresh, polite refresh
// ---------------------------------------------------------------------------------------------

/// A call's status, `Retry-After` header and body.
async fn call_at(base: &str, key: &str, ins: &Install) -> (StatusCode, Option<String>, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}{}", ins.method()))
        .bearer_auth(key)
        .json(&json!({"params": {"id": "pat-0001"}}))
        .send()
        .await
        .unwrap();
    let s = r.status();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (
        s,
        retry_after,
        r.json::<Value>().await.unwrap_or(Value::Null),
    )
}

/// Every 503 carries `Retry-After` (header and `retry_after`, the same whole seconds).
fn assert_503_says_when(s: StatusCode, retry_after: &Option<String>, v: &Value) {
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    let secs: u64 = retry_after
        .as_deref()
        .unwrap_or_else(|| panic!("503 without Retry-After: {v}"))
        .parse()
        .unwrap();
    assert!(secs >= 1, "{v}");
    assert_eq!(v["retry_after"], secs, "{v}");
}

/// Waits (polling the provider's counter) until `n` refresh requests have reached it.
async fn until_refresh_requests(oauth: &FakeOAuth, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while oauth.refresh_request_count() < n {
        assert!(
            Instant::now() < deadline,
            "the refresh never reached the provider"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn instance_rows(w: &World) -> i64 {
    w.app.db(switchboard_db::repo::instances::count).await
}

/// The real binary is SIGKILLed while its refresh request is held at the provider (not yet
/// processed: the refresh token is not spent), then restarted with the default 60 s lease: the
/// restarted process takes the dead instance's lease over as soon as its heartbeat is stale, and
/// the install answers successfully within 5 s of the restart. Every 503 in between carries
/// `Retry-After`; the provider never sees a spent refresh token again (the grant survives).
async fn crash_mid_refresh_recovers_within_five_seconds(backend: Backend) {
    let (port, w, ins, key_file, work) = child_server_world(backend).await;
    let rt0 = w.stored_refresh_token(&w.row(&ins).await);
    // Default lease (60 s) and heartbeat (1 s, stale after 3 s); a short wait so callers see
    // the 503 instead of waiting in the server.
    let env = [("SWITCHBOARD__TOKENS__WAIT_TIMEOUT_MS", "300")];
    let mut first = ChildServer::start(port, &w.app.db_url, &key_file, work.path(), &env).await;
    assert_eq!(instance_rows(&w).await, 2, "the test app and the child");

    w.expire_token(&ins).await;
    let refreshes = w.oauth.refresh_request_count();
    // Held before the provider looks at it: the refresh token stays unspent.
    w.oauth
        .fail_token_next(1, TokenFault::Delay(Duration::from_secs(600)));
    let (base, key, path) = (first.base.clone(), w.app.api_key.clone(), ins.method());
    let pending = actix_web::rt::spawn(async move {
        reqwest::Client::new()
            .post(format!("{base}{path}"))
            .bearer_auth(key)
            .json(&json!({"params": {"id": "pat-0001"}}))
            .send()
            .await
            .map(|r| r.status())
    });
    until_refresh_requests(&w.oauth, refreshes + 1).await;
    let held = w.row(&ins).await;
    assert!(held.lease_owner.is_some(), "the refresh holds the lease");
    assert!(
        held.lease_until.unwrap() > now_ms() + 50_000,
        "a 60 s lease"
    );
    first.kill();
    let outcome = pending.await.unwrap();
    assert!(
        !matches!(outcome, Ok(s) if s.is_success()),
        "the in-flight call cannot have succeeded: {outcome:?}"
    );

    let restarted = Instant::now();
    let second = ChildServer::start(port, &w.app.db_url, &key_file, work.path(), &env).await;
    let mut unavailable = 0;
    loop {
        let (s, retry_after, v) = call_at(&second.base, &w.app.api_key, &ins).await;
        if s == StatusCode::OK {
            break;
        }
        assert_503_says_when(s, &retry_after, &v);
        unavailable += 1;
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "still {s} {v} after {:?}",
            restarted.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = restarted.elapsed();
    eprintln!(
        "token_lifecycle: recovered {recovered:?} after the restart ({unavailable} x 503 with Retry-After)"
    );
    assert!(recovered < Duration::from_secs(5), "{recovered:?}");
    // The held request was never processed; the one refresh after the restart spent rt0 once.
    assert_eq!(
        w.oauth.refresh_tokens_seen(),
        vec![rt0.clone(), rt0.clone()]
    );
    assert_eq!(w.oauth.refresh_request_count(), refreshes + 2);
    let row = w.row(&ins).await;
    assert_eq!(row.status, "authorized");
    assert_eq!(row.token_version, held.token_version + 1);
    assert_eq!((&row.lease_owner, row.lease_until), (&None, None));
    let rt1 = w.stored_refresh_token(&row);
    assert_ne!(rt1, rt0);
    assert!(w.oauth.is_refresh_token_valid(&rt1), "the grant survived");
    drop(second);
}

/// Two applications on one database and one manual clock. The first holds the lease while its
/// token request is slow; the clock moves past the lease TTL, but the holder's heartbeat is
/// fresh, so the second never takes the lease over: it answers 503 with `Retry-After`, then uses
/// the first's new token. One token request in all.
async fn live_slow_refresh_is_not_stolen(backend: Backend) {
    let clock = ManualClock::new(now_ms());
    let tweak = |s: &mut switchboard_config::Settings| {
        s.tokens.lease_ttl_ms = 3_000;
        s.upstream.request_timeout_ms = 2_500;
        s.tokens.wait_timeout_ms = 300;
        // The manual clock jumps; a heartbeat is stale only after a minute of it.
        s.tokens.instance_stale_ms = 60_000;
    };
    let app = TestApp::spawn_with_clock(backend, clock.clone(), tweak).await;
    let w = World::with_app(app, &[]).await;
    let ins = w.authorized_install("acme").await;
    let key_file = w.app.dir.path().join("secret.key");
    let second = TestApp::spawn_on_clock(
        backend,
        tempfile::tempdir().unwrap(),
        w.app.db_url.clone(),
        |s| {
            tweak(s);
            s.secrets.key_file = key_file.clone();
        },
        std::sync::Arc::new(clock.clone()),
    )
    .await;
    let before = w.row(&ins).await;
    w.expire_token(&ins).await;
    clock.set(now_ms());
    let refreshes = w.oauth.refresh_request_count();
    w.oauth
        .fail_token_next(1, TokenFault::Delay(Duration::from_millis(2_000)));
    let (base, key) = (w.app.base.clone(), w.app.api_key.clone());
    let same = Install {
        account: ins.account.clone(),
        id: ins.id.clone(),
    };
    let first_call = actix_web::rt::spawn(async move { call_at(&base, &key, &same).await });
    until_refresh_requests(&w.oauth, refreshes + 1).await;
    let held = w.row(&ins).await;
    assert_eq!(
        held.lease_owner.as_deref(),
        Some(w.app.services.tokens.instance_id())
    );
    // Past the holder's lease by the clock; its heartbeat is fresh.
    clock.advance(Duration::from_millis(5_000));
    assert!(held.lease_until.unwrap() < clock.now_ms());
    let (s, retry_after, v) = call_at(&second.base, &w.app.api_key, &ins).await;
    assert_503_says_when(s, &retry_after, &v);
    assert_eq!(v["code"], "service_unavailable", "{v}");
    assert_eq!(w.oauth.refresh_request_count(), refreshes + 1, "not stolen");
    let (s, _, v) = first_call.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _, v) = call_at(&second.base, &w.app.api_key, &ins).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        w.oauth.refresh_request_count(),
        refreshes + 1,
        "one refresh"
    );
    let row = w.row(&ins).await;
    assert_eq!(row.token_version, before.token_version + 1);
    assert!(w
        .oauth
        .is_refresh_token_valid(&w.stored_refresh_token(&row)));
}

/// A graceful shutdown (SIGTERM) while a refresh is at a slow provider and its client has gone:
/// the refresh runs detached, the server awaits it, and the rotated refresh token is committed
/// before the process exits; the instance row is removed.
async fn shutdown_mid_refresh_commits(backend: Backend) {
    let (port, w, ins, key_file, work) = child_server_world(backend).await;
    let before = w.row(&ins).await;
    let rt0 = w.stored_refresh_token(&before);
    let mut child = ChildServer::start(port, &w.app.db_url, &key_file, work.path(), &[]).await;
    assert_eq!(instance_rows(&w).await, 2);
    w.expire_token(&ins).await;
    let refreshes = w.oauth.refresh_request_count();
    w.oauth
        .fail_token_next(1, TokenFault::Delay(Duration::from_millis(2_000)));
    let (base, key, path) = (child.base.clone(), w.app.api_key.clone(), ins.method());
    // The client gives up after 300 ms and disconnects.
    let gone = actix_web::rt::spawn(async move {
        reqwest::Client::new()
            .post(format!("{base}{path}"))
            .bearer_auth(key)
            .timeout(Duration::from_millis(300))
            .json(&json!({"params": {"id": "pat-0001"}}))
            .send()
            .await
            .map(|r| r.status())
    });
    until_refresh_requests(&w.oauth, refreshes + 1).await;
    assert!(gone.await.unwrap().is_err(), "the client timed out");
    let term = Command::new("kill")
        .args(["-TERM", &child.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit:\n{}", child.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}:\n{}", child.log_text());
    let row = w.row(&ins).await;
    assert_eq!(row.token_version, before.token_version + 1, "committed");
    let rt1 = w.stored_refresh_token(&row);
    assert_ne!(rt1, rt0);
    assert!(
        w.oauth.is_refresh_token_valid(&rt1),
        "the rotated token is stored"
    );
    assert_eq!((row.lease_owner, row.lease_until), (None, None));
    assert_eq!(
        instance_rows(&w).await,
        1,
        "the child removed its instance row"
    );
    assert_eq!(w.oauth.refresh_tokens_seen(), vec![rt0]);
}

/// The polite background refresher over one simulated day (passes every minute on the manual
/// clock, 10-minute access tokens): an idle install is refreshed once, by the daily check, never
/// before; an install in use keeps working on its on-demand refreshes and is not checked.
async fn polite_background_refresh_over_a_day(backend: Backend) {
    let clock = ManualClock::new(now_ms());
    let app = TestApp::spawn_with_clock(backend, clock.clone(), |_| {}).await;
    let w = World::with_app(app, &[]).await;
    w.oauth.set_expires_in(600);
    let idle = w.authorized_install("idle").await;
    let used = w.authorized_install("used").await;
    clock.set(now_ms());
    let idle_before = w.row(&idle).await;
    let used_before = w.row(&used).await;
    let tokens = w.app.services.tokens.clone();
    for minute in 1..=1_440 {
        clock.advance(Duration::from_secs(60));
        if minute % 30 == 0 {
            let (s, v) = w.call(&used).await;
            assert_eq!(s, StatusCode::OK, "minute {minute}: {v}");
        }
        tokens.refresh_due_installs().await.unwrap();
        if minute == 1_439 {
            assert_eq!(
                w.row(&idle).await.token_version,
                idle_before.token_version,
                "an idle install is left alone for a day"
            );
        }
    }
    let idle_after = w.row(&idle).await;
    assert_eq!(
        idle_after.token_version,
        idle_before.token_version + 1,
        "the daily check"
    );
    assert_eq!(idle_after.status, "authorized");
    assert!(w
        .oauth
        .is_refresh_token_valid(&w.stored_refresh_token(&idle_after)));
    let used_after = w.row(&used).await;
    // Refreshed by its own calls (its token had expired by the clock at each), never checked.
    assert_eq!(used_after.token_version, used_before.token_version + 48);
    let (s, v) = w.call(&used).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let seen = w.oauth.refresh_tokens_seen();
    let distinct: HashSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "no refresh token sent twice");
}

crate::both_backends! {
    crash_mid_refresh_recovers => crash_mid_refresh_recovers_within_five_seconds;
    live_slow_refresh_not_stolen => live_slow_refresh_is_not_stolen;
    shutdown_mid_refresh => shutdown_mid_refresh_commits;
    polite_background_refresh => polite_background_refresh_over_a_day;
}
