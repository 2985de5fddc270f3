//! Shared test harness: `TestApp::spawn(Backend)`, HTTP helpers (tuple and raw), the one
//! problem assertion (`assert_problem` / `problem`), the fixtures the resource files share,
//! database inspection and the log capture. `Backend` and `both_backends!` are the testkit's.

#![allow(dead_code)]

use diesel::prelude::*;
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use switchboard::Application;
use switchboard_config::Settings;
use switchboard_core::ErrorCode;
use switchboard_crypto::KeyRing;
use switchboard_db::schema;
use switchboard_service::{Clock, ManualClock, Services, SystemClock};

/// The workspace's one backend enum and its PostgreSQL probe (`both_backends!` is the
/// testkit's too, imported at the crate root so `crate::both_backends!` names it).
pub use switchboard_testkit::backends::{database_url, postgres_available, Backend};

/// The ids of the shipped connectors (`connectors/*.toml`), in catalogue order. Issue 11 added
/// athenahealth, epic_backend, oracle_health and the generic smart connector.
pub const SHIPPED_CONNECTORS: [&str; 7] = [
    "athenahealth",
    "canvas",
    "epic",
    "epic_backend",
    "medplum",
    "oracle_health",
    "smart",
];

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Settings for a test server: fresh database and key file, the shipped connectors, loopback
/// upstreams allowed, `public_url` = the server's own address.
/// Copy one entry of a connector directory: a file, or a library directory (`_fhir/`) with
/// everything under it, so a copied directory still resolves its `[[include]]`s.
pub fn copy_entry(from: &Path, to: &Path) -> std::io::Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_entry(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        std::fs::copy(from, to).map(|_| ())
    }
}

/// Copies the shipped connectors next to the app's key file (the app's own temp dir) and
/// returns that folder: a test adds or edits connectors there, then points `connectors.dir`
/// at it.
pub fn copy_shipped_connectors(s: &Settings) -> PathBuf {
    let dir = s
        .secrets
        .key_file
        .parent()
        .expect("key file has a parent")
        .join("connectors");
    copy_entry(&repo_root().join("connectors"), &dir).expect("copy the shipped connectors");
    dir
}

pub fn test_settings(db_url: &str, dir: &Path, port: u16) -> Settings {
    let env = vec![
        ("SWITCHBOARD__DATABASE__URL".to_string(), db_url.to_string()),
        (
            "SWITCHBOARD__DATABASE__POOL_SIZE".to_string(),
            "8".to_string(),
        ),
        (
            "SWITCHBOARD__SERVER__BIND".to_string(),
            format!("127.0.0.1:{port}"),
        ),
        (
            "SWITCHBOARD__SERVER__PUBLIC_URL".to_string(),
            format!("http://127.0.0.1:{port}"),
        ),
        ("SWITCHBOARD__SERVER__WORKERS".to_string(), "2".to_string()),
        (
            "SWITCHBOARD__CONNECTORS__DIR".to_string(),
            repo_root().join("connectors").display().to_string(),
        ),
        (
            "SWITCHBOARD__SECRETS__KEY_FILE".to_string(),
            dir.join("secret.key").display().to_string(),
        ),
        (
            "SWITCHBOARD__SECURITY__ALLOW_INSECURE_UPSTREAMS".to_string(),
            "true".to_string(),
        ),
        (
            "SWITCHBOARD__SECURITY__ALLOWED_RETURN_URLS".to_string(),
            "https://console.example/".to_string(),
        ),
        // The origins the suite's tenants add return-URL prefixes under.
        (
            "SWITCHBOARD__SECURITY__TENANT_RETURN_URL_ORIGINS".to_string(),
            "https://partner.example,https://tenant.example,https://x.example".to_string(),
        ),
        (
            "SWITCHBOARD__TOKENS__BACKGROUND_REFRESH_INTERVAL_SECS".to_string(),
            "0".to_string(),
        ),
        (
            "SWITCHBOARD__UPSTREAM__MAX_RETRY_WAIT_MS".to_string(),
            "3000".to_string(),
        ),
        // Tests retry a recovered token endpoint at once; the backoff has its own test
        // (token_lifecycle::token_endpoint_backoff), which turns it back on.
        (
            "SWITCHBOARD__TOKENS__REFRESH_BACKOFF_INITIAL_MS".to_string(),
            "0".to_string(),
        ),
    ];
    Settings::load_from(&dir.join("no-config-dir"), env).expect("test settings")
}

pub struct TestApp {
    pub backend: Backend,
    pub base: String,
    pub port: u16,
    pub db_url: String,
    pub http: reqwest::Client,
    pub services: Services,
    pub dir: tempfile::TempDir,
    /// The first tenant and its key, created at spawn.
    pub tenant: String,
    pub api_key: String,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Spawns with a hook to adjust the settings before the server is built.
    pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let db_url = database_url(backend, dir.path());
        Self::spawn_on(backend, dir, db_url, tweak).await
    }

    /// Spawns on an existing database and key directory (e.g. a second replica or a restart).
    pub async fn spawn_on(
        backend: Backend,
        dir: tempfile::TempDir,
        db_url: String,
        tweak: impl FnOnce(&mut Settings),
    ) -> TestApp {
        Self::spawn_on_clock(backend, dir, db_url, tweak, Arc::new(SystemClock)).await
    }

    /// Spawns with the token lifecycle on `clock` (a `ManualClock` moves expiry, lease and
    /// backoff time without sleeping).
    pub async fn spawn_with_clock(
        backend: Backend,
        clock: ManualClock,
        tweak: impl FnOnce(&mut Settings),
    ) -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let db_url = database_url(backend, dir.path());
        Self::spawn_on_clock(backend, dir, db_url, tweak, Arc::new(clock)).await
    }

    /// Spawns on an existing database with the token lifecycle on `clock` (e.g. a second
    /// replica sharing a `ManualClock`).
    pub async fn spawn_on_clock(
        backend: Backend,
        dir: tempfile::TempDir,
        db_url: String,
        tweak: impl FnOnce(&mut Settings),
        clock: Arc<dyn Clock>,
    ) -> TestApp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let mut settings = test_settings(&db_url, dir.path(), port);
        tweak(&mut settings);
        let app = Application::build_with_clock(settings, listener, clock)
            .await
            .expect("application builds");
        let services = app.services().clone();
        actix_web::rt::spawn(app.run_until_stopped());
        let created = services
            .keys
            .create_tenant("Test Console")
            .await
            .expect("tenant");
        TestApp {
            backend,
            base: format!("http://127.0.0.1:{port}"),
            port,
            db_url,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                // Drop idle connections well before the server's 5 s keep-alive closes them, so
                // a request is never sent on a connection the server is closing at that moment
                // (hyper `IncompleteMessage` on a loaded machine).
                .pool_idle_timeout(std::time::Duration::from_secs(2))
                .build()
                .unwrap(),
            services,
            dir,
            tenant: created.tenant,
            api_key: created.api_key,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Another tenant with its own key.
    pub async fn new_tenant(&self, name: &str) -> (String, String) {
        let t = self
            .services
            .keys
            .create_tenant(name)
            .await
            .expect("tenant");
        (t.tenant, t.api_key)
    }

    /// Sends a request with this app's API key; returns status and JSON (Null when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_as(&self.api_key, method, path, body).await
    }

    pub async fn call_as(
        &self,
        key: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let text = res.text().await.expect("body");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(body)).await
    }
    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None).await
    }

    pub async fn create_account(&self, id: &str) -> Value {
        let (s, v) = self
            .post(
                "/v1/accounts",
                json!({"id": id, "name": format!("Account {id}")}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v
    }

    /// Every byte the database holds, as text (SQLite file + WAL, or a pg_dump of the test
    /// database): for "no secret in plaintext" assertions.
    pub fn dump_database(&self) -> String {
        match self.backend {
            Backend::Sqlite => {
                let path = self.db_url.trim_start_matches("sqlite://");
                let mut out = Vec::new();
                for suffix in ["", "-wal", "-shm"] {
                    if let Ok(bytes) = std::fs::read(format!("{path}{suffix}")) {
                        out.extend_from_slice(&bytes);
                    }
                }
                String::from_utf8_lossy(&out).into_owned()
            }
            Backend::Postgres => switchboard_testkit::pg::cluster()
                .expect("PostgreSQL cluster")
                .dump(&self.db_url),
        }
    }

    /// Runs a closure on a database connection (for state assertions).
    pub async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut switchboard_db::AnyConnection) -> Result<T, switchboard_db::DbError>
            + Send
            + 'static,
    ) -> T {
        self.services.db().run(f).await.expect("db query")
    }
}

// ---------------------------------------------------------------------------------------------
// Raw requests (headers, content type and body as sent and as received)
// ---------------------------------------------------------------------------------------------

/// A response as the client sees it.
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Resp {
    /// Reads a whole response (the body as text, and as JSON where it parses; else Null).
    pub async fn read(res: reqwest::Response) -> Resp {
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

    pub fn content_type(&self) -> &str {
        self.headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends a raw request: `auth` is the whole Authorization header value (None: no header),
/// `content_type` is sent verbatim when given.
pub async fn send_raw(
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
    Resp::read(req.send().await.expect("request")).await
}

/// A JSON request with `key` as the bearer API key.
pub async fn req_as(
    app: &TestApp,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Resp {
    let auth = format!("Bearer {key}");
    let (ct, body) = match body {
        Some(b) => (Some("application/json"), Some(b.to_string().into_bytes())),
        None => (None, None),
    };
    send_raw(app, method, path, Some(&auth), ct, body).await
}

/// A JSON request with the app's first API key.
pub async fn req(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> Resp {
    req_as(app, &app.api_key, method, path, body).await
}

// ---------------------------------------------------------------------------------------------
// The problem assertion
// ---------------------------------------------------------------------------------------------

/// Asserts an RFC 9457 problem body: the status, the `code`, the members `type`, `title`,
/// `status`, `detail`, `code` (non-empty), that the code, its status and its title come from THE
/// error table (`switchboard_core::ErrorCode`), and that it echoes no API key. With a whole
/// response at hand, use `problem`, which also checks the `application/problem+json` content
/// type. Chain `.hides(&[..])` for the secrets a test sent that must not come back.
pub fn assert_problem(
    status: StatusCode,
    body: &Value,
    want_status: u16,
    want_code: &str,
) -> ProblemBody {
    assert_eq!(
        status.as_u16(),
        want_status,
        "unexpected status; body: {body}"
    );
    assert_eq!(body["code"], want_code, "unexpected code; body: {body}");
    assert_eq!(body["status"], want_status, "{body}");
    for member in ["type", "title", "detail", "code"] {
        assert!(
            body[member].as_str().is_some_and(|s| !s.is_empty()),
            "problem member `{member}` missing or empty: {body}"
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
        body["title"],
        entry.title(),
        "title of `{want_code}` per the table"
    );
    let text = body.to_string();
    assert!(
        !text.contains("sbk_"),
        "a problem echoes an API key: {text}"
    );
    ProblemBody(text)
}

/// `assert_problem` on a whole response, plus the `application/problem+json` content type.
pub fn problem(r: &Resp, want_status: u16, want_code: &str) -> ProblemBody {
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
    assert_problem(r.status, &r.json, want_status, want_code);
    ProblemBody(r.text.clone())
}

/// A problem that passed `assert_problem`, for the secrets it must not echo.
pub struct ProblemBody(String);

impl ProblemBody {
    /// Asserts that none of `secrets` (values the request sent) appears in the problem.
    pub fn hides(&self, secrets: &[&str]) {
        for secret in secrets {
            assert!(!secret.is_empty(), "an empty secret matches everything");
            assert!(
                !self.0.contains(secret),
                "the problem echoes {secret:?}: {}",
                self.0
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// The `field` names of a problem's `errors` list.
pub fn error_fields(r: &Resp) -> BTreeSet<String> {
    r.json["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("problem has no errors list: {}", r.text))
        .iter()
        .map(|e| e["field"].as_str().expect("errors[].field").to_owned())
        .collect()
}

pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A value no test or fixture could contain by chance.
pub fn distinctive(label: &str) -> String {
    format!("{label}-{}", switchboard_core::random_token(12))
}

/// Everything a request could change: row counts per table, every setup's stored settings and
/// every tenant's allowed return URLs.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub counts: [i64; 6],
    pub setups: Vec<(String, String, String)>,
    pub tenants: Vec<(String, String)>,
}

pub async fn snapshot(app: &TestApp) -> Snapshot {
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
        let mut setups: Vec<(String, String, String)> = schema::connector_setups::table
            .select((
                schema::connector_setups::tenant_id,
                schema::connector_setups::connector_id,
                schema::connector_setups::settings,
            ))
            .load(conn)?;
        setups.sort();
        let mut tenants: Vec<(String, String)> = schema::tenants::table
            .select((schema::tenants::id, schema::tenants::allowed_return_urls))
            .load(conn)?;
        tenants.sort();
        Ok(Snapshot {
            counts,
            setups,
            tenants,
        })
    })
    .await
}

/// The install row, read straight from the database (any tenant).
pub async fn install_row(app: &TestApp, id: &str) -> Option<switchboard_db::Install> {
    let id = id.to_owned();
    app.db(move |conn| switchboard_db::repo::installs::find_by_id(conn, &id))
        .await
}

/// The key ring the server seals with (its key file in the app's directory).
pub fn key_ring(app: &TestApp) -> KeyRing {
    KeyRing::load(&app.dir.path().join("secret.key")).expect("key ring")
}

/// The plaintext tokens of an install (decrypted with the app's key ring and the documented AAD).
pub fn open_tokens(
    app: &TestApp,
    row: &switchboard_db::Install,
) -> (Option<String>, Option<String>) {
    let ring = key_ring(app);
    let open = |blob: &Option<Vec<u8>>, which: &str| {
        blob.as_ref().map(|b| {
            ring.decrypt_str(b, format!("install:{}:{which}", row.id))
                .expect("token decrypts with its AAD")
        })
    };
    (
        open(&row.access_token, "access_token"),
        open(&row.refresh_token, "refresh_token"),
    )
}

pub async fn oauth_states_of(app: &TestApp, install_id: &str) -> i64 {
    let id = install_id.to_owned();
    app.db(move |conn| {
        Ok(schema::oauth_states::table
            .filter(schema::oauth_states::install_id.eq(id))
            .count()
            .get_result::<i64>(conn)?)
    })
    .await
}

/// Creates an install in `account` with the app's API key; asserts the 201 and returns its body.
pub async fn post_install(app: &TestApp, account: &str, body: Value) -> Value {
    let (s, v) = app
        .post(&format!("/v1/accounts/{account}/installs"), body)
        .await;
    assert_eq!(s, StatusCode::CREATED, "create install: {v}");
    v
}

/// Drives a fake authorization server's `/authorize` like a browser: asserts the 302 to the
/// app's callback and returns the callback URL it redirects to.
pub async fn authorize_redirect(app: &TestApp, authorize_url: &str) -> url::Url {
    let res = switchboard_testkit::oidc::OidcProvider::browser_client()
        .get(authorize_url)
        .send()
        .await
        .expect("authorize request");
    assert_eq!(
        res.status(),
        StatusCode::FOUND,
        "authorize: {authorize_url}"
    );
    let loc = url::Url::parse(res.headers()["location"].to_str().unwrap()).unwrap();
    assert!(
        loc.as_str().starts_with(&app.url("/connector/callback")),
        "{loc}"
    );
    loc
}

/// Sets up Canvas for static bearer installs (a tenant-wide `api_token`; installs may override
/// it) with a loopback FHIR base where nothing listens.
pub async fn canvas_bearer_setup(app: &TestApp, token: &str) {
    let r = req(
        app,
        Method::PUT,
        "/v1/connectors/canvas/setup",
        Some(json!({"settings": {"api_token": token, "fhir_base_url": "http://127.0.0.1:9/"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

pub async fn create_bearer_install(app: &TestApp, key: &str, account: &str) -> Value {
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

/// In-memory copy of what Switchboard logs (`switchboard*` targets at TRACE, everything else at
/// WARN), captured by ONE global subscriber installed on first use and shared by every test of
/// this binary (so it may also hold other tests' lines). For "never in the logs" assertions;
/// prove the capture is live by also asserting something your test did get logged.
#[derive(Clone, Default)]
pub struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn text(&self) -> String {
        let buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&buf).into_owned()
    }
}

pub struct LogCaptureWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogCaptureWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCaptureWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LogCaptureWriter(self.0.clone())
    }
}

/// The process-wide log capture (installed as the global tracing subscriber on first call;
/// panics if something else already installed one).
pub fn log_capture() -> LogCapture {
    static CAPTURE: std::sync::OnceLock<LogCapture> = std::sync::OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let capture = LogCapture::default();
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("warn,switchboard=trace"))
                .with_writer(capture.clone())
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect(
                "another global tracing subscriber is installed; use support::log_capture()",
            );
            capture
        })
        .clone()
}
