//! Shared test harness: `TestApp::spawn(Backend)`, HTTP helpers, database inspection, and the
//! `both_backends!` macro that runs a test body on SQLite and on PostgreSQL.

#![allow(dead_code)]

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use switchboard::Application;
use switchboard_config::Settings;
use switchboard_service::{Clock, ManualClock, Services, SystemClock};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs `$body(backend).await` as two tests: `sqlite` and `postgres`. The PostgreSQL variant
/// skips with a visible message where no PostgreSQL binaries exist, and fails under CI=true.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident => $body:ident;)+) => {
        $(
            mod $name {
                #[actix_web::test]
                async fn sqlite() {
                    super::$body($crate::support::Backend::Sqlite).await
                }
                #[actix_web::test]
                async fn postgres() {
                    if !$crate::support::postgres_available() {
                        return;
                    }
                    super::$body($crate::support::Backend::Postgres).await
                }
            }
        )+
    };
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn postgres_available() -> bool {
    switchboard_testkit::pg::cluster().is_some()
}

/// A fresh database URL for `backend` (SQLite in `dir`).
pub fn database_url(backend: Backend, dir: &Path) -> String {
    match backend {
        Backend::Sqlite => switchboard_testkit::pg::sqlite_url(dir),
        Backend::Postgres => switchboard_testkit::pg::cluster()
            .expect("PostgreSQL cluster")
            .create_database(),
    }
}

/// Settings for a test server: fresh database and key file, the shipped connectors, loopback
/// upstreams allowed, `public_url` = the server's own address.
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

    async fn spawn_on_clock(
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

/// Asserts a problem+json body with the given status and code.
pub fn assert_problem(status: StatusCode, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(
        status.as_u16(),
        want_status,
        "unexpected status, body: {body}"
    );
    assert_eq!(body["code"], want_code, "unexpected code, body: {body}");
    assert_eq!(body["status"], want_status, "{body}");
    assert!(
        body["type"].is_string() && body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
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
