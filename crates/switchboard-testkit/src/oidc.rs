//! `OidcProvider`: the real npm `oidc-provider` (folder `tests/oauth-server/`) as a child
//! process on 127.0.0.1, plus a scripted "browser" that logs in and consents through its dev
//! interactions so tests get a real authorization-code callback URL.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use switchboard_testkit::oidc::{OidcClient, OidcProvider};
//! let op = OidcProvider::start(vec![OidcClient::basic(
//!     "app", "s3cret", "http://127.0.0.1:8080/connector/callback",
//! )])?;
//! let authorize = format!("{}?client_id=app&...", op.authorize_url());
//! let callback = op.complete_login(&OidcProvider::browser_client(), &authorize).await?;
//! # let _ = callback; Ok(()) }
//! ```

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context as _};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::{json, Value};
use url::Url;

use crate::oauth::ClientAuthMethod;

/// A client registered with the provider.
#[derive(Clone)]
pub struct OidcClient {
    pub client_id: String,
    pub client_secret: Option<String>,
    pub auth_method: ClientAuthMethod,
    /// Exact redirect URIs (http://127.0.0.1 allowed).
    pub redirect_uris: Vec<String>,
    /// e.g. `authorization_code`, `refresh_token`, `client_credentials`.
    pub grant_types: Vec<String>,
    /// Space-separated scopes the client may request.
    pub scope: String,
}

impl std::fmt::Debug for OidcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcClient")
            .field("client_id", &self.client_id)
            .field("auth_method", &self.auth_method)
            .field("redirect_uris", &self.redirect_uris)
            .field("grant_types", &self.grant_types)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Scopes every client may request unless told otherwise.
pub const DEFAULT_SCOPE: &str = "openid fhirUser profile offline_access online_access launch launch/patient patient/*.read patient/*.rs patient/Patient.read patient/Patient.rs user/*.read user/*.rs system/*.read system/*.rs";

impl OidcClient {
    fn new(id: &str, secret: Option<&str>, method: ClientAuthMethod, redirect: &str) -> Self {
        let mut grant_types = vec!["authorization_code".to_owned(), "refresh_token".to_owned()];
        if method != ClientAuthMethod::None {
            grant_types.push("client_credentials".to_owned());
        }
        OidcClient {
            client_id: id.to_owned(),
            client_secret: secret.map(str::to_owned),
            auth_method: method,
            redirect_uris: vec![redirect.to_owned()],
            grant_types,
            scope: DEFAULT_SCOPE.to_owned(),
        }
    }

    crate::oauth::client_constructors!();

    pub fn scope(mut self, scope: &str) -> Self {
        self.scope = scope.to_owned();
        self
    }

    fn to_json(&self) -> Value {
        let method = match self.auth_method {
            ClientAuthMethod::ClientSecretBasic => "client_secret_basic",
            ClientAuthMethod::ClientSecretPost => "client_secret_post",
            ClientAuthMethod::None => "none",
        };
        json!({
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "token_endpoint_auth_method": method,
            "redirect_uris": self.redirect_uris,
            "grant_types": self.grant_types,
            "scope": self.scope,
        })
    }
}

/// Provider-wide options.
#[derive(Clone, Debug)]
pub struct OidcOptions {
    /// `fhirUser` claim of every account (default `Practitioner/prac-0001`).
    pub fhir_user: String,
    /// `patient` added to authorization_code / refresh_token responses (default `pat-0001`).
    pub patient: Option<String>,
    pub encounter: Option<String>,
    /// Access-token lifetime in seconds (default 3600).
    pub access_token_ttl: u64,
    /// Clock skew accepted in client assertions, seconds (default 15, oidc-provider's).
    pub clock_tolerance_secs: u64,
    /// Path of the token endpoint (default `/token`; `/oauth2/token` lays it out like Epic).
    pub token_path: Option<String>,
}

impl Default for OidcOptions {
    fn default() -> Self {
        OidcOptions {
            fhir_user: "Practitioner/prac-0001".to_owned(),
            patient: Some("pat-0001".to_owned()),
            encounter: None,
            access_token_ttl: 3600,
            clock_tolerance_secs: 15,
            token_path: None,
        }
    }
}

/// A running `oidc-provider` child process; killed on drop.
pub struct OidcProvider {
    child: Child,
    _stdin: Option<ChildStdin>,
    issuer: String,
    metadata: Value,
    _config: tempfile::NamedTempFile,
    stderr: Arc<Mutex<String>>,
}

impl std::fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProvider")
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tests/oauth-server` of this workspace.
pub fn server_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/oauth-server")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/oauth-server"))
}

static NPM_LOCK: Mutex<()> = Mutex::new(());

/// Runs `npm ci` in `tests/oauth-server` when `node_modules` is missing. Serialised within the
/// process by a mutex and across processes by a lock directory.
pub fn ensure_node_modules() -> anyhow::Result<()> {
    let dir = server_dir();
    let marker = dir.join("node_modules/oidc-provider/package.json");
    if marker.exists() {
        return Ok(());
    }
    let _guard = NPM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let lock_dir = std::env::temp_dir().join("switchboard-oauth-server-npm-ci.lock");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        match std::fs::create_dir(&lock_dir) {
            Ok(()) => break,
            Err(_) if marker.exists() => return Ok(()),
            Err(_) => {
                let stale = std::fs::metadata(&lock_dir)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age > Duration::from_secs(600));
                if stale {
                    let _ = std::fs::remove_dir(&lock_dir);
                    continue;
                }
                if Instant::now() > deadline {
                    bail!(
                        "timed out waiting for another `npm ci` in {}",
                        dir.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
    let result = (|| {
        if marker.exists() {
            return Ok(());
        }
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .context("running `npm ci` (is Node.js/npm installed?)")?;
        if !out.status.success() {
            bail!(
                "`npm ci` in {} failed: {}\n{}",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir(&lock_dir);
    result
}

impl OidcProvider {
    /// Starts the provider with these clients and default options.
    pub fn start(clients: Vec<OidcClient>) -> anyhow::Result<OidcProvider> {
        Self::start_with(clients, OidcOptions::default())
    }

    pub fn start_with(clients: Vec<OidcClient>, options: OidcOptions) -> anyhow::Result<Self> {
        ensure_node_modules()?;
        let config = json!({
            "clients": clients.iter().map(OidcClient::to_json).collect::<Vec<_>>(),
            "fhir_user": options.fhir_user,
            "patient": options.patient,
            "encounter": options.encounter,
            "access_token_ttl": options.access_token_ttl,
            "clock_tolerance": options.clock_tolerance_secs,
            "token_path": options.token_path,
        });
        let mut file = tempfile::NamedTempFile::new().context("temp config file")?;
        file.write_all(config.to_string().as_bytes())?;
        file.flush()?;

        let dir = server_dir();
        let mut child = Command::new("node")
            .arg("server.mjs")
            .args(["--port", "0"])
            .env("OIDC_CONFIG", file.path())
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning `node server.mjs` in {}", dir.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr_pipe = child.stderr.take().expect("piped stderr");

        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&text);
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining so the child never blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // After the ready line nobody listens: keep reading and discarding.
                let _ = tx.send(line);
            }
        });

        let mut provider_guard = Killer(Some(child));
        // node loads oidc-provider in about 0.5 s; 60 s is ample even on a loaded 2-core machine.
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(e) => {
                let err = stderr.lock().unwrap_or_else(|e| e.into_inner()).clone();
                bail!("oidc-provider did not become ready ({e}); stderr:\n{err}");
            }
        };
        let metadata: Value = serde_json::from_str(&line)
            .with_context(|| format!("oidc-provider ready line is not JSON: {line}"))?;
        let issuer = metadata["issuer"]
            .as_str()
            .ok_or_else(|| anyhow!("ready line without issuer: {line}"))?
            .to_owned();
        Ok(OidcProvider {
            child: provider_guard.0.take().expect("child"),
            _stdin: stdin,
            issuer,
            metadata,
            _config: file,
            stderr,
        })
    }

    /// `http://127.0.0.1:PORT` (no trailing slash); also the `iss` of authorization responses.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    fn endpoint(&self, key: &str, path: &str) -> String {
        self.metadata[key]
            .as_str()
            .map_or_else(|| format!("{}{path}", self.issuer), str::to_owned)
    }

    pub fn authorize_url(&self) -> String {
        self.endpoint("authorization_endpoint", "/auth")
    }

    pub fn token_url(&self) -> String {
        self.endpoint("token_endpoint", "/token")
    }

    pub fn revocation_url(&self) -> String {
        self.endpoint("revocation_endpoint", "/token/revocation")
    }

    pub fn introspection_url(&self) -> String {
        self.endpoint("introspection_endpoint", "/token/introspection")
    }

    pub fn jwks_url(&self) -> String {
        self.endpoint("jwks_uri", "/jwks")
    }

    /// `{issuer}/.well-known/openid-configuration`
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// Registers a client at run time (test route of `server.mjs`), e.g. a `private_key_jwt`
    /// client whose `jwks_uri` is Switchboard's hosted JWK Set URL.
    pub async fn register_client(&self, metadata: Value) -> anyhow::Result<()> {
        let res = reqwest::Client::new()
            .post(format!("{}/test/clients", self.issuer))
            .json(&metadata)
            .send()
            .await?;
        if res.status() != reqwest::StatusCode::CREATED {
            bail!("client registration failed: {}", res.text().await?);
        }
        Ok(())
    }

    /// A `private_key_jwt` client (`client_credentials` only) whose keys are read from
    /// `jwks_uri`, signing with `alg`.
    pub async fn register_jwt_client(
        &self,
        client_id: &str,
        jwks_uri: &str,
        alg: &str,
    ) -> anyhow::Result<()> {
        self.register_client(json!({
            "client_id": client_id,
            "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": alg,
            "jwks_uri": jwks_uri,
            "grant_types": ["client_credentials"],
            "response_types": [],
            "redirect_uris": [],
            "scope": DEFAULT_SCOPE,
        }))
        .await
    }

    /// Marks the client's cached JWK Set as expired: its next assertion with an unknown `kid`
    /// makes the provider fetch `jwks_uri` again (as a verifier does once `max-age` passed).
    pub async fn expire_client_jwks(&self, client_id: &str) -> anyhow::Result<()> {
        let res = reqwest::Client::new()
            .post(format!(
                "{}/test/clients/{client_id}/jwks-stale",
                self.issuer
            ))
            .send()
            .await?;
        if res.status() != reqwest::StatusCode::NO_CONTENT {
            bail!("jwks-stale failed: {}", res.status());
        }
        Ok(())
    }

    /// What the provider wrote on stderr so far (warnings, crashes).
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A client suited to [`Self::complete_login`]: no redirects followed.
    pub fn browser_client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("reqwest client")
    }

    /// Drives the dev interactions like a browser: GET the authorize URL, log in (any
    /// login/password), consent, and follow redirects until one leaves the provider's origin;
    /// returns that URL (the callback with `code`/`state`/`iss`, or with `error`).
    /// `http` must not follow redirects ([`Self::browser_client`]); cookies are handled here.
    pub async fn complete_login(
        &self,
        http: &reqwest::Client,
        authorize_url: &str,
    ) -> anyhow::Result<Url> {
        self.drive(http, authorize_url, true).await
    }

    /// Like [`Self::complete_login`] but the user aborts at the first interaction: the callback
    /// carries `error=access_denied`.
    pub async fn deny_login(
        &self,
        http: &reqwest::Client,
        authorize_url: &str,
    ) -> anyhow::Result<Url> {
        self.drive(http, authorize_url, false).await
    }

    async fn drive(
        &self,
        http: &reqwest::Client,
        start: &str,
        approve: bool,
    ) -> anyhow::Result<Url> {
        let origin = Url::parse(&self.issuer)?.origin();
        let mut jar = CookieJar::default();
        let mut url = Url::parse(start).context("authorize URL")?;
        let mut form: Option<Vec<(&str, &str)>> = None;
        for _ in 0..30 {
            if url.origin() != origin {
                return Ok(url);
            }
            let mut req = match form.take() {
                Some(f) => http.post(url.clone()).form(&f),
                None => http.get(url.clone()),
            };
            if let Some(cookies) = jar.header_for(&url) {
                req = req.header(COOKIE, cookies);
            }
            let resp = req
                .send()
                .await
                .with_context(|| format!("request to {url}"))?;
            if resp.url() != &url {
                bail!("the reqwest client followed a redirect; use OidcProvider::browser_client()");
            }
            jar.store(&url, resp.headers().get_all(SET_COOKIE).iter());
            let status = resp.status();
            if status.is_redirection() {
                let location = resp
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| anyhow!("{status} without Location from {url}"))?;
                url = url.join(location)?;
                continue;
            }
            let body = resp.text().await.unwrap_or_default();
            if !status.is_success() {
                bail!("{status} from {url}: {}", truncate(&body, 500));
            }
            let Some(uid) = url.path().strip_prefix("/interaction/") else {
                bail!("unexpected page at {url}: {}", truncate(&body, 300));
            };
            let uid = uid.trim_end_matches('/').to_owned();
            if !approve {
                url = Url::parse(&format!("{}/interaction/{uid}/abort", self.issuer))?;
                continue;
            }
            let action = form_action(&body).unwrap_or_else(|| url.to_string());
            if body.contains(r#"name="prompt" value="login""#) {
                form = Some(vec![
                    ("prompt", "login"),
                    ("login", "test-user"),
                    ("password", "any-password"),
                ]);
            } else if body.contains(r#"name="prompt" value="consent""#) {
                form = Some(vec![("prompt", "consent")]);
            } else {
                bail!(
                    "unknown interaction page at {url}: {}",
                    truncate(&body, 300)
                );
            }
            url = url.join(&action)?;
        }
        bail!("too many steps driving the login at {start}")
    }
}

/// Kills the child if start-up fails half way.
struct Killer(Option<Child>);

impl Drop for Killer {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn form_action(html: &str) -> Option<String> {
    let start = html.find("<form")?;
    let tag_end = start + html[start..].find('>')?;
    let tag = &html[start..tag_end];
    let a = tag.find("action=\"")? + "action=\"".len();
    let end = a + tag[a..].find('"')?;
    Some(
        tag[a..end]
            .replace("&amp;", "&")
            .replace("&#x2F;", "/")
            .replace("&#39;", "'")
            .replace("&quot;", "\""),
    )
}

/// The smallest cookie jar that handles oidc-provider's path-scoped interaction cookies.
#[derive(Default)]
struct CookieJar {
    cookies: Vec<(String, String, String)>, // name, value, path
}

impl CookieJar {
    fn store<'a>(
        &mut self,
        url: &Url,
        headers: impl Iterator<Item = &'a reqwest::header::HeaderValue>,
    ) {
        for h in headers {
            let Ok(h) = h.to_str() else { continue };
            let mut parts = h.split(';').map(str::trim);
            let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else {
                continue;
            };
            let mut path = default_path(url);
            let mut expired = false;
            for attr in parts {
                let (k, v) = attr.split_once('=').unwrap_or((attr, ""));
                match k.to_ascii_lowercase().as_str() {
                    "path" if v.starts_with('/') => path = v.to_owned(),
                    "max-age" => expired = v.parse::<i64>().is_ok_and(|n| n <= 0),
                    "expires" => {
                        expired = httpdate::parse_http_date(v).is_ok_and(|t| t <= SystemTime::now())
                    }
                    _ => {}
                }
            }
            self.cookies.retain(|(n, _, p)| !(n == name && *p == path));
            if !expired {
                self.cookies.push((name.to_owned(), value.to_owned(), path));
            }
        }
    }

    fn header_for(&self, url: &Url) -> Option<String> {
        let path = url.path();
        let matching: Vec<String> = self
            .cookies
            .iter()
            .filter(|(_, _, p)| path_matches(path, p))
            .map(|(n, v, _)| format!("{n}={v}"))
            .collect();
        (!matching.is_empty()).then(|| matching.join("; "))
    }
}

fn default_path(url: &Url) -> String {
    let p = url.path();
    match p.rfind('/') {
        Some(0) | None => "/".to_owned(),
        Some(i) => p[..i].to_owned(),
    }
}

fn path_matches(request: &str, cookie: &str) -> bool {
    request == cookie
        || (request.starts_with(cookie)
            && (cookie.ends_with('/') || request.as_bytes().get(cookie.len()) == Some(&b'/')))
}
