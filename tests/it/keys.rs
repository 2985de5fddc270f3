//! Key custody end to end: `switchboard keys rotate|status|prune` (the real binary, like
//! `cli.rs`) and in-process, on both backends; the start-up refusals of `serve`;
//! `SWITCHBOARD__SECRETS__KEY`; and a rotation while two replicas on one PostgreSQL serve
//! 500 method calls whose tokens expire during the rotation.
//!
//! Data is authorization-code installs of the Canvas connector (rotating refresh tokens:
//! FakeOAuth refuses a spent refresh token and then revokes the grant), a setup with a secret
//! `client_secret`, pending authorizations (PKCE verifiers) and a tenant's audit key. "Under
//! which key" is read raw from every column of the registry, not through the services.

use crate::support::{post_install, postgres_available, repo_root, Backend, TestApp};
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use switchboard_config::Settings;
use switchboard_crypto::KeyRing;
use switchboard_db::repo::rotation as repo;
use switchboard_service::rotation::{RotateOptions, REGISTRY};
use switchboard_testkit::fhir::FakeFhir;
use switchboard_testkit::oauth::{FakeOAuth, OAuthClient};

const CLIENT_ID: &str = "canvas-app";
const CLIENT_SECRET: &str = "canvas-s3cret";

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

struct World {
    app: TestApp,
    oauth: FakeOAuth,
    fhir: FakeFhir,
}

fn callback_of(base: &str) -> String {
    format!("{base}/connector/callback")
}

fn fast_reload(s: &mut Settings) {
    s.secrets.reload_interval_ms = 100;
}

impl World {
    async fn new(backend: Backend, expires_in: u64, extra_callbacks: &[String]) -> World {
        let app = TestApp::spawn_with(backend, fast_reload).await;
        let mut client = OAuthClient::post(CLIENT_ID, CLIENT_SECRET, &callback_of(&app.base));
        for r in extra_callbacks {
            client = client.redirect_uri(r);
        }
        let oauth = FakeOAuth::builder()
            .prefix("/auth/")
            .client(client)
            .expires_in(expires_in)
            .start();
        let fhir = FakeFhir::builder()
            .prefix("/")
            .seed_patients(2)
            .accept_tokens_from(oauth.token_validator())
            .start();
        let body = json!({"settings": {
            "instance_url": format!("{}/", oauth.origin()),
            "fhir_base_url": fhir.base_url(),
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        }});
        let (s, v) = app.put("/v1/connectors/canvas/setup", body).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        World { app, oauth, fhir }
    }

    fn key_file(&self) -> std::path::PathBuf {
        self.app.dir.path().join("secret.key")
    }

    /// A Canvas install in a new account: authorized through the real redirect flow, or left
    /// pending (its PKCE verifier stays stored).
    async fn install(&self, account: &str, authorize: bool) -> String {
        self.app.create_account(account).await;
        let v = post_install(&self.app, account, json!({"connector": "canvas"})).await;
        if authorize {
            complete_authorization(&self.app.base, v["authorize_url"].as_str().unwrap()).await;
        }
        v["id"].as_str().unwrap().to_owned()
    }

    fn method_path(account: &str, id: &str) -> String {
        format!("/v1/accounts/{account}/installs/{id}/methods/get_patient")
    }

    async fn call(&self, base: &str, account: &str, id: &str) -> (u16, String) {
        let res = self
            .app
            .http
            .post(format!("{base}{}", Self::method_path(account, id)))
            .bearer_auth(&self.app.api_key)
            .json(&json!({"params": {"id": "pat-0001"}}))
            .send()
            .await;
        match res {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    }
}

async fn complete_authorization(app_base: &str, authorize_url: &str) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = http.get(authorize_url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FOUND, "authorize should redirect");
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&callback_of(app_base)), "{location}");
    let res = http.get(&location).send().await.unwrap();
    let body = res.text().await.unwrap();
    assert!(body.contains("Connected"), "{body}");
}

/// Every value of every registered column, read raw: column -> key id -> count.
async fn raw_kids(app: &TestApp) -> BTreeMap<String, BTreeMap<String, u64>> {
    app.db(|c| {
        let mut out = BTreeMap::new();
        for reg in REGISTRY {
            let counts: &mut BTreeMap<String, u64> = out.entry(reg.column.name()).or_default();
            for (_, blob) in repo::scan(c, &reg.column, None, i64::MAX)? {
                for kid in kids_in(&blob) {
                    *counts.entry(kid).or_default() += 1;
                }
            }
        }
        Ok(out)
    })
    .await
}

fn kids_in(blob: &repo::StoredBlob) -> Vec<String> {
    use base64::Engine as _;
    let kid = |b: &[u8]| switchboard_crypto::blob_kid(b).unwrap_or("?").to_owned();
    match blob {
        repo::StoredBlob::Bytes(b) => vec![kid(b)],
        repo::StoredBlob::Text(t) => {
            let v: Value = serde_json::from_str(t).unwrap();
            v.as_object()
                .unwrap()
                .values()
                .filter_map(|x| x.get("enc")?.as_str().map(str::to_owned))
                .map(|e| kid(&base64::engine::general_purpose::STANDARD.decode(e).unwrap()))
                .collect()
        }
    }
}

/// The key ids in use over all columns.
fn used(kids: &BTreeMap<String, BTreeMap<String, u64>>) -> BTreeSet<String> {
    kids.values().flat_map(|m| m.keys().cloned()).collect()
}

fn keys_cli(app: &TestApp, key_file: &Path, args: &[&str]) -> Command {
    let mut cmd = switchboard_cmd(app, key_file);
    cmd.arg("keys").args(args);
    cmd
}

/// `keys rotate` one row per batch with a pause of `pause_ms` after each, waiting `wait_ms`
/// after each key file change: a rotation slow enough to interrupt or to run calls beside.
fn paced_rotation(app: &TestApp, key_file: &Path, pause_ms: &str, wait_ms: &str) -> Command {
    keys_cli(
        app,
        key_file,
        &[
            "rotate",
            "--batch-size",
            "1",
            "--pause-ms",
            pause_ms,
            "--wait-ms",
            wait_ms,
        ],
    )
}

/// The real binary on the app's database, configured only through the environment.
fn switchboard_cmd(app: &TestApp, key_file: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.current_dir(app.dir.path());
    for (k, _) in std::env::vars() {
        if k.starts_with("SWITCHBOARD") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.env("SWITCHBOARD__DATABASE__URL", &app.db_url)
        .env("SWITCHBOARD__SECRETS__KEY_FILE", key_file)
        .env("SWITCHBOARD__SECRETS__RELOAD_INTERVAL_MS", "100")
        .env(
            "SWITCHBOARD__CONNECTORS__DIR",
            repo_root().join("connectors"),
        )
        .stdin(Stdio::null());
    cmd
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run(mut cmd: Command) -> Out {
    let out = cmd.output().expect("run switchboard");
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn json_of(out: &Out) -> Value {
    assert!(out.ok, "failed: {}", out.stderr);
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|_| panic!("JSON: {}", out.stdout))
}

fn ring_kids(path: &Path) -> Vec<String> {
    KeyRing::load(path).unwrap().kids().collect()
}

/// Until the server's ring (reloaded from its key file every 100 ms) satisfies `ok`.
async fn reloaded(app: &TestApp, ok: impl Fn(&KeyRing) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok(app.services.key_ring()) {
        assert!(
            Instant::now() < deadline,
            "the server did not reload its key ring"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Until a call through `app` succeeds (its ring reloads from the key file on an interval).
async fn eventually_ok(w: &World, account: &str, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, body) = w.call(&w.app.base, account, id).await;
        if s == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "{s}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The rotation core, in process: every column re-encrypted, the server keeps working
// ---------------------------------------------------------------------------------------------

async fn rotation_reencrypts_every_registered_column(backend: Backend) {
    let w = World::new(backend, 3600, &[]).await;
    let a = w.install("acme", true).await;
    let _pending = w.install("pending", false).await;
    let (s, body) = w.call(&w.app.base, "acme", &a).await;
    assert_eq!(s, 200, "{body}");
    // A backend-services setup (its generated private signing key) and a webhook endpoint (its
    // signing secret) hold ciphertexts too.
    let (s, v) = w
        .app
        .put(
            "/v1/connectors/epic_backend/setup",
            json!({"settings": {"endpoint": "http://127.0.0.1:9/", "client_id": "backend-app"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = w
        .app
        .post("/v1/webhooks", json!({"url": "http://127.0.0.1:9/hook"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let before = raw_kids(&w.app).await;
    assert_eq!(used(&before), BTreeSet::from(["k1".to_owned()]));
    for col in [
        "connector_setups.settings",
        "installs.access_token",
        "installs.refresh_token",
        "oauth_states.verifier",
        "setup_signing_keys.private_key",
        "webhook_endpoints.secret",
    ] {
        assert!(before[col]["k1"] >= 1, "{col}: {before:?}");
    }
    let total: u64 = before.values().flat_map(|m| m.values()).sum();
    let row = crate::support::install_row(&w.app, &a).await.unwrap();

    let custody = w.app.services.custody();
    let opts = RotateOptions {
        batch_size: 2,
        reload_wait: Duration::ZERO,
        pause: Duration::ZERO,
    };
    let report = custody.rotate(&opts).await.expect("rotation");
    assert_eq!(report.primary, "k2");
    assert!(!report.resumed);
    assert_eq!(report.rewritten.values().sum::<i64>() as u64, total);

    let after = raw_kids(&w.app).await;
    assert_eq!(used(&after), BTreeSet::from(["k2".to_owned()]), "{after:?}");
    assert_eq!(ring_kids(&w.key_file()), ["k1", "k2"]);
    // Re-encrypting touched no fencing column and no other column.
    let row2 = crate::support::install_row(&w.app, &a).await.unwrap();
    assert_eq!(row2.token_version, row.token_version);
    assert_eq!(row2.token_expires_at, row.token_expires_at);
    assert_eq!(row2.lease_owner, row.lease_owner);
    assert_ne!(row2.refresh_token, row.refresh_token);
    assert_eq!(
        crate::support::open_tokens(&w.app, &row2),
        crate::support::open_tokens(&w.app, &row)
    );
    // The running server decrypts the new ciphertexts (its cache dropped by a setup write).
    let status = custody.status().await.unwrap();
    assert_eq!(status["primary"], "k2", "{status}");
    assert_eq!(status["rotation"]["state"], "complete", "{status}");
    let (s, body) = w.call(&w.app.base, "acme", &a).await;
    assert_eq!(s, 200, "{body}");

    // Twice is a no-op.
    let again = custody.reencrypt(&opts).await.unwrap();
    assert_eq!(again.rewritten.values().sum::<i64>(), 0, "{again:?}");
    assert_eq!(raw_kids(&w.app).await, after);

    // Recorded in the tenant's audit trail as an administrative change.
    w.app.services.audit.flush().await;
    let (s, v) = w.app.get("/v1/audit?limit=500").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(
        v.to_string().contains("\"keys.rotated:k2\""),
        "no keys.rotated record: {v}"
    );

    // Prune: k1 is no longer used.
    let (pruned, removed) = custody.prune().await.unwrap();
    assert_eq!(removed, ["k1"]);
    assert_eq!(pruned.kids().collect::<Vec<_>>(), ["k2"]);
}

// ---------------------------------------------------------------------------------------------
// 2. The CLI: SIGKILL halfway, rerun, run again; prune refuses then succeeds
// ---------------------------------------------------------------------------------------------

async fn rotation_killed_halfway_resumes_and_prune_waits(backend: Backend) {
    let w = World::new(backend, 3600, &[]).await;
    let a = w.install("acme", true).await;
    for i in 0..12 {
        w.install(&format!("pending-{i}"), false).await;
    }
    let key_file = w.key_file();
    let total: u64 = raw_kids(&w.app)
        .await
        .values()
        .flat_map(|m| m.values())
        .sum();

    // One value per batch, 150 ms apart: killed after some batches, long before the end.
    let mut child = paced_rotation(&w.app, &key_file, "150", "300")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = json_of(&run(keys_cli(&w.app, &key_file, &["status"])));
        let done = status["rotation"]["rewritten"].as_i64().unwrap_or(0);
        if done > 0 {
            assert!((done as u64) < total, "{status}");
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "rotation ended early");
        assert!(Instant::now() < deadline, "no progress: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let status = json_of(&run(keys_cli(&w.app, &key_file, &["status"])));
    assert_eq!(status["primary"], "k2", "{status}");
    assert_eq!(status["rotation"]["state"], "reencrypting", "{status}");
    let halfway = raw_kids(&w.app).await;
    assert_eq!(
        used(&halfway),
        BTreeSet::from(["k1".to_owned(), "k2".to_owned()])
    );
    // Prune refuses while the rotation is unfinished.
    let out = run(keys_cli(&w.app, &key_file, &["prune"]));
    assert!(
        !out.ok && out.stderr.contains("unfinished"),
        "{}",
        out.stderr
    );

    // The rerun finishes the same rotation (no new key).
    let out = json_of(&run(keys_cli(
        &w.app,
        &key_file,
        &["rotate", "--wait-ms", "0"],
    )));
    assert_eq!(out["primary"], "k2", "{out}");
    assert_eq!(out["resumed"], true, "{out}");
    assert_eq!(
        used(&raw_kids(&w.app).await),
        BTreeSet::from(["k2".to_owned()])
    );
    assert_eq!(ring_kids(&key_file), ["k1", "k2"]);
    let status = json_of(&run(keys_cli(&w.app, &key_file, &["status"])));
    assert_eq!(status["rotation"]["state"], "complete", "{status}");
    assert_eq!(
        status["columns"]["installs.refresh_token"],
        json!({"k2": 1})
    );

    // Run again: nothing left to do.
    let out = json_of(&run(keys_cli(
        &w.app,
        &key_file,
        &["rotate", "--reencrypt-only", "--wait-ms", "0"],
    )));
    let rewritten: i64 = out["rewritten"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(rewritten, 0, "{out}");
    assert_eq!(ring_kids(&key_file), ["k1", "k2"]);

    // Stage and promote k3 without re-encrypting: prune names what is still under k2.
    // Each step waits for the server's reload, as the procedure says.
    assert!(run(keys_cli(&w.app, &key_file, &["rotate", "--stage"])).ok);
    reloaded(&w.app, |r| r.contains("k3")).await;
    assert!(run(keys_cli(&w.app, &key_file, &["rotate", "--promote", "k3"])).ok);
    reloaded(&w.app, |r| r.primary_kid() == "k3").await;
    let out = run(keys_cli(&w.app, &key_file, &["prune"]));
    assert!(!out.ok, "prune must refuse");
    assert!(
        out.stderr.contains("\"k2\"") && out.stderr.contains("installs.refresh_token: 1"),
        "{}",
        out.stderr
    );
    assert_eq!(ring_kids(&key_file), ["k1", "k2", "k3"]);
    assert!(
        run(keys_cli(
            &w.app,
            &key_file,
            &["rotate", "--reencrypt-only", "--wait-ms", "0"]
        ))
        .ok
    );
    let out = json_of(&run(keys_cli(&w.app, &key_file, &["prune"])));
    assert_eq!(out["removed"], json!(["k1", "k2"]), "{out}");
    assert_eq!(ring_kids(&key_file), ["k3"]);

    // The running server reloads the file on its own and still serves the install.
    reloaded(&w.app, |r| r.kids().collect::<Vec<_>>() == ["k3"]).await;
    eventually_ok(&w, "acme", &a).await;
    let (s, v) = w
        .app
        .put(
            "/v1/connectors/canvas/setup",
            json!({"settings": {
                "instance_url": format!("{}/", w.oauth.origin()),
                "fhir_base_url": w.fhir.base_url(),
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            }}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        used(&raw_kids(&w.app).await),
        BTreeSet::from(["k3".to_owned()])
    );
}

crate::both_backends! {
    rotation_reencrypts_every_registered_column_ => rotation_reencrypts_every_registered_column;
    rotation_killed_halfway_resumes_and_prune_waits_ => rotation_killed_halfway_resumes_and_prune_waits;
}

// ---------------------------------------------------------------------------------------------
// 3. serve refuses a missing key file or a ring lacking a used key; SWITCHBOARD__SECRETS__KEY
// ---------------------------------------------------------------------------------------------

fn serve_cmd(app: &TestApp, key_file: &Path, port: u16) -> Command {
    let mut cmd = switchboard_cmd(app, key_file);
    cmd.arg("serve")
        .env("SWITCHBOARD__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env(
            "SWITCHBOARD__SERVER__PUBLIC_URL",
            format!("http://127.0.0.1:{port}"),
        )
        .env("SWITCHBOARD__SECURITY__ALLOW_INSECURE_UPSTREAMS", "true");
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `serve` expecting it to refuse: not 0, quickly, message on stderr.
fn refused(cmd: Command) -> String {
    let out = run(cmd);
    assert!(!out.ok, "serve started: {}", out.stderr);
    out.stderr
}

#[actix_web::test]
async fn serve_refuses_unknown_keys_and_accepts_the_ring_from_the_environment() {
    let w = World::new(Backend::Sqlite, 3600, &[]).await;
    let a = w.install("acme", true).await;
    let elsewhere = tempfile::tempdir().unwrap();

    // The key file is missing but the database holds secrets: refused, naming k1; no new file.
    let missing = elsewhere.path().join("secret.key");
    let err = refused(serve_cmd(&w.app, &missing, free_port()));
    assert!(err.contains("missing") && err.contains("\"k1\""), "{err}");
    assert!(!missing.exists(), "a new key file was created");
    // So do the other commands that load the ring.
    let out = run(keys_cli(&w.app, &missing, &["status"]));
    assert!(!out.ok && out.stderr.contains("\"k1\""), "{}", out.stderr);

    // A ring lacking k1 (only a k2): refused, naming k1.
    let (two, _) = KeyRing::generate().with_new_key();
    let only_k2 = two.with_primary("k2").unwrap().without(&["k1".to_owned()]);
    let wrong = elsewhere.path().join("wrong.key");
    only_k2.save(&wrong).unwrap();
    let err = refused(serve_cmd(&w.app, &wrong, free_port()));
    assert!(err.contains("\"k1\"") && err.contains("lacks"), "{err}");

    // The ring's document in SWITCHBOARD__SECRETS__KEY: served, the file is neither read nor
    // created, stored secrets decrypt.
    let doc = std::fs::read_to_string(w.key_file()).unwrap();
    let port = free_port();
    let mut cmd = serve_cmd(&w.app, &missing, port);
    cmd.env("SWITCHBOARD__SECRETS__KEY", &doc)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(child.try_wait().unwrap().is_none(), "serve exited");
        if let Ok(r) = w.app.http.get(format!("{base}/readyz")).send().await {
            if r.status() == StatusCode::OK {
                break;
            }
        }
        assert!(Instant::now() < deadline, "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, body) = w.call(&base, "acme", &a).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(s, 200, "{body}");
    assert!(!missing.exists(), "the key file was created");
    let mut status = keys_cli(&w.app, &missing, &["status"]);
    status.env("SWITCHBOARD__SECRETS__KEY", &doc);
    let status = json_of(&run(status));
    assert_eq!(status["source"], "env", "{status}");
    assert_eq!(status["primary"], "k1", "{status}");

    // Containers: --stage prints the ring to deploy (k2 not primary), nothing is written.
    let mut stage = keys_cli(&w.app, &missing, &["rotate", "--stage"]);
    stage.env("SWITCHBOARD__SECRETS__KEY", &doc);
    let out = run(stage);
    assert!(out.ok, "{}", out.stderr);
    let staged = KeyRing::from_json(out.stdout.as_bytes(), Path::new("stdout")).unwrap();
    assert_eq!(staged.kids().collect::<Vec<_>>(), ["k1", "k2"]);
    assert_eq!(staged.primary_kid(), "k1");
    assert!(!missing.exists());
    // ... and a plain `keys rotate` explains the procedure instead of writing anything.
    let mut rotate = keys_cli(&w.app, &missing, &["rotate"]);
    rotate.env("SWITCHBOARD__SECRETS__KEY", &doc);
    let out = run(rotate);
    assert!(!out.ok && out.stderr.contains("--stage"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------------------------
// 4. Two replicas on one PostgreSQL keep serving through a rotation
// ---------------------------------------------------------------------------------------------

#[actix_web::test]
async fn rotation_while_two_replicas_serve_500_calls_with_expiring_tokens() {
    if !postgres_available() {
        return;
    }
    // Replica B listens on a port known up front so its callback URL can be registered.
    let port_b = free_port();
    // Access tokens live 2 s: they expire (and rotating refresh tokens are spent) during the
    // rotation, on both replicas.
    let w = World::new(
        Backend::Postgres,
        2,
        &[callback_of(&format!("http://127.0.0.1:{port_b}"))],
    )
    .await;
    let key_file = w.key_file();
    let replica = {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port_b)).unwrap();
        let mut settings = crate::support::test_settings(&w.app.db_url, w.app.dir.path(), port_b);
        settings.secrets.key_file = key_file.clone();
        fast_reload(&mut settings);
        let app = switchboard::Application::build_with_listener(settings, listener)
            .await
            .expect("replica builds");
        let services = app.services().clone();
        actix_web::rt::spawn(app.run_until_stopped());
        (format!("http://127.0.0.1:{port_b}"), services)
    };
    let mut installs = Vec::new();
    for i in 0..10 {
        let account = format!("acme-{i}");
        let id = w.install(&account, true).await;
        installs.push((account, id));
    }

    let refreshes_before = w.oauth.refresh_request_count();
    let mut rotation = paced_rotation(&w.app, &key_file, "50", "400")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let mut refreshes_during = None;
    // 500 calls in 10 waves of 50 (both replicas, every install), 400 ms apart: tokens expire
    // and are refreshed while keys are staged, promoted and values re-encrypted.
    let mut results = Vec::new();
    for wave in 0..10 {
        let calls = (0..50).map(|n| {
            let (account, id) = &installs[n % installs.len()];
            let base = if (n + wave) % 2 == 0 {
                w.app.base.clone()
            } else {
                replica.0.clone()
            };
            let w = &w;
            async move { w.call(&base, account, id).await }
        });
        results.extend(join_all(calls).await);
        if refreshes_during.is_none() && rotation.try_wait().unwrap().is_some() {
            refreshes_during = Some(w.oauth.refresh_request_count() - refreshes_before);
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let out = rotation.wait_with_output().unwrap();
    // Tokens expired and were refreshed (rotating the refresh tokens) while it ran.
    let refreshes_during =
        refreshes_during.unwrap_or_else(|| w.oauth.refresh_request_count() - refreshes_before);
    assert!(
        refreshes_during >= installs.len(),
        "only {refreshes_during} refreshes while the rotation ran"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rotation failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["primary"], "k2", "{report}");

    let failed: Vec<_> = results.iter().filter(|(s, _)| *s != 200).collect();
    assert_eq!(results.len(), 500);
    assert!(
        failed.is_empty(),
        "{} of 500 calls failed; first: {:?}",
        failed.len(),
        failed.first()
    );
    // No refresh token lost: each install's stored one still works at the provider.
    let ring = KeyRing::load(&key_file).unwrap();
    for (_, id) in &installs {
        let row = crate::support::install_row(&w.app, id).await.unwrap();
        assert_eq!(row.status, "authorized", "{id}: {:?}", row.last_error);
        let rt = ring
            .decrypt_str(
                row.refresh_token.as_ref().unwrap(),
                format!("install:{id}:refresh_token"),
            )
            .unwrap();
        assert!(
            w.oauth.is_refresh_token_valid(&rt),
            "{id}: refresh token lost"
        );
    }
    // Nothing is left under the old key in any registered column.
    let kids = raw_kids(&w.app).await;
    assert_eq!(used(&kids), BTreeSet::from(["k2".to_owned()]), "{kids:?}");
    // Both replicas swapped their ring in place.
    assert_eq!(w.app.services.key_ring().primary_kid(), "k2");
    assert_eq!(replica.1.key_ring().primary_kid(), "k2");
}
