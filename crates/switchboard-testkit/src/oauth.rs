//! `FakeOAuth`: a strict local OAuth 2.0 authorization + token server (RFC 6749, 7636, 7009,
//! 9207, SMART token responses) for token-lifecycle tests: single-use codes with reuse
//! revocation, exact redirect URIs, mandatory PKCE S256, rotating refresh tokens with reuse
//! detection, per-client authentication method, faults on demand, and full inspection.
//!
//! ```no_run
//! use switchboard_testkit::fhir::FakeFhir;
//! use switchboard_testkit::oauth::{FakeOAuth, OAuthClient, TokenFault};
//! let oauth = FakeOAuth::builder()
//!     .client(OAuthClient::basic("app", "s3cret", "http://127.0.0.1:8080/connector/callback"))
//!     .with_iss(true)
//!     .start();
//! let fhir = FakeFhir::builder().accept_tokens_from(oauth.token_validator()).start();
//! oauth.fail_token_next(1, TokenFault::Status503);
//! let seeded = oauth.issue_tokens_directly("app", "openid fhirUser patient/*.read");
//! assert!(oauth.is_access_token_valid(&seeded.access_token));
//! # drop(fhir);
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rand::RngCore as _;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::fhir::{lock, RecordedRequest, ServerThread, TokenCheck};

/// How a registered client authenticates at the token and revocation endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuthMethod {
    /// `Authorization: Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
    ClientSecretBasic,
    /// `client_id` + `client_secret` in the form body.
    ClientSecretPost,
    /// Public client: `client_id` in the body, no secret, PKCE mandatory.
    None,
}

/// The constructors and builders a registered client type shares (`OAuthClient` here,
/// `oidc::OidcClient`): `basic`, `post`, `public`, `redirect_uri`, `grant_types`. Expanded
/// inside the type's `impl`, which supplies `fn new(id, secret, method, redirect) -> Self` and
/// the fields `redirect_uris` and `grant_types`.
macro_rules! client_constructors {
    () => {
        /// Confidential client using `client_secret_basic`.
        pub fn basic(id: &str, secret: &str, redirect_uri: &str) -> Self {
            Self::new(
                id,
                Some(secret),
                $crate::oauth::ClientAuthMethod::ClientSecretBasic,
                redirect_uri,
            )
        }

        /// Confidential client using `client_secret_post`.
        pub fn post(id: &str, secret: &str, redirect_uri: &str) -> Self {
            Self::new(
                id,
                Some(secret),
                $crate::oauth::ClientAuthMethod::ClientSecretPost,
                redirect_uri,
            )
        }

        /// Public client (`token_endpoint_auth_method=none`): PKCE only.
        pub fn public(id: &str, redirect_uri: &str) -> Self {
            Self::new(
                id,
                None,
                $crate::oauth::ClientAuthMethod::None,
                redirect_uri,
            )
        }

        /// Registers one more exact redirect URI.
        pub fn redirect_uri(mut self, uri: &str) -> Self {
            self.redirect_uris.push(uri.to_owned());
            self
        }

        /// Replaces the allowed grant types.
        pub fn grant_types(mut self, grants: &[&str]) -> Self {
            self.grant_types = grants.iter().map(|g| (*g).to_owned()).collect();
            self
        }
    };
}
pub(crate) use client_constructors;

/// A registered client.
#[derive(Clone)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret: Option<String>,
    pub auth_method: ClientAuthMethod,
    /// Exact, case-sensitive redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Allowed grant types; empty = all of authorization_code, refresh_token, client_credentials
    /// (client_credentials never for public clients).
    pub grant_types: Vec<String>,
    /// Issue a refresh token with authorization_code grants.
    pub issue_refresh_tokens: bool,
}

impl fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthClient")
            .field("client_id", &self.client_id)
            .field("auth_method", &self.auth_method)
            .field("redirect_uris", &self.redirect_uris)
            .finish_non_exhaustive()
    }
}

impl OAuthClient {
    fn new(id: &str, secret: Option<&str>, method: ClientAuthMethod, redirect: &str) -> Self {
        OAuthClient {
            client_id: id.to_owned(),
            client_secret: secret.map(str::to_owned),
            auth_method: method,
            redirect_uris: if redirect.is_empty() {
                Vec::new()
            } else {
                vec![redirect.to_owned()]
            },
            grant_types: Vec::new(),
            issue_refresh_tokens: true,
        }
    }

    client_constructors!();

    pub fn without_refresh_tokens(mut self) -> Self {
        self.issue_refresh_tokens = false;
        self
    }

    fn allows(&self, grant: &str) -> bool {
        if grant == "client_credentials" && self.auth_method == ClientAuthMethod::None {
            return false;
        }
        self.grant_types.is_empty() || self.grant_types.iter().any(|g| g == grant)
    }
}

/// A fault for the next token (or revocation) request.
#[derive(Clone, Debug)]
pub enum TokenFault {
    /// 503 `{"error":"temporarily_unavailable"}` with `Retry-After: 1`.
    Status503,
    /// This status with a JSON `{"error":"server_error"}` body.
    Status(u16),
    /// 400 `invalid_grant` without looking at the request (nothing is consumed).
    InvalidGrant,
    /// Wait, then handle the request normally.
    Delay(Duration),
    /// Handle the request normally (a refresh token is rotated, tokens are issued), then hold
    /// the answer this long: the client may time out or die after the provider committed, the
    /// case where a rotated refresh token is lost unless the client is careful.
    RespondAfter(Duration),
    /// Wait, then answer with the inner fault (a slow failure, e.g. a 503 after 500 ms).
    DelayThen(Duration, Box<TokenFault>),
    /// 200 `text/html`.
    NonJson,
    /// 200 JSON without `access_token` (nothing is consumed).
    MissingAccessToken,
}

/// Tokens issued to a client.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSet {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub token_type: String,
    pub expires_in: u64,
    pub scope: String,
    pub id_token: Option<String>,
    pub patient: Option<String>,
    pub encounter: Option<String>,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("access_token", &"[redacted]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .field("patient", &self.patient)
            .field("encounter", &self.encounter)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    scope: String,
    nonce: Option<String>,
    created: Instant,
    used: bool,
    grant: Option<u64>,
}

struct Grant {
    client_id: String,
    scope: String,
    revoked: bool,
    current_refresh: Option<String>,
}

struct Access {
    grant: Option<u64>,
    expires_at: Instant,
    revoked: bool,
}

struct Settings {
    with_iss: bool,
    iss_override: Option<String>,
    rotating: bool,
    expires_in: u64,
    code_ttl: Duration,
    token_type: String,
    patient: Option<String>,
    encounter: Option<String>,
    fhir_user: String,
    expect_aud: Option<String>,
}

struct State {
    clients: HashMap<String, OAuthClient>,
    settings: Settings,
    deny_next: usize,
    codes: HashMap<String, Code>,
    grants: HashMap<u64, Grant>,
    next_grant: u64,
    /// Every refresh token ever issued -> its grant.
    refresh_index: HashMap<String, u64>,
    access: HashMap<String, Access>,
    token_faults: VecDeque<TokenFault>,
    revoke_faults: VecDeque<TokenFault>,
    authorize_requests: Vec<RecordedRequest>,
    token_requests: Vec<RecordedRequest>,
    revoke_requests: Vec<RecordedRequest>,
    refresh_requests: usize,
    refresh_seen: Vec<String>,
    revoked_seen: Vec<String>,
}

struct Shared {
    prefix: String,
    origin: Mutex<String>,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn issuer(&self) -> String {
        issuer_of(&lock(&self.origin), &self.prefix)
    }
}

fn issuer_of(origin: &str, prefix: &str) -> String {
    format!("{origin}{}", prefix.trim_end_matches('/'))
}

fn random_token(kind: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{kind}-{}", URL_SAFE_NO_PAD.encode(bytes))
}

fn epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Builder of a [`FakeOAuth`].
pub struct FakeOAuthBuilder {
    prefix: String,
    clients: Vec<OAuthClient>,
    settings: Settings,
}

impl FakeOAuthBuilder {
    /// Endpoint prefix (default `/`): endpoints are `{prefix}authorize`, `{prefix}token`,
    /// `{prefix}revoke`; e.g. `/oauth2/` (Epic) or `/auth/` (Canvas; a trailing `/` on the
    /// endpoint is accepted too). The issuer is origin + prefix without its trailing `/`.
    pub fn prefix(mut self, prefix: &str) -> Self {
        let trimmed = prefix.trim_matches('/');
        self.prefix = if trimmed.is_empty() {
            "/".to_owned()
        } else {
            format!("/{trimmed}/")
        };
        self
    }

    pub fn client(mut self, client: OAuthClient) -> Self {
        self.clients.push(client);
        self
    }

    /// Put `iss` in every authorization response (RFC 9207).
    pub fn with_iss(mut self, on: bool) -> Self {
        self.settings.with_iss = on;
        self
    }

    /// Rotate refresh tokens (default true). When false the refresh response has no
    /// `refresh_token` and the old one stays valid.
    pub fn rotating_refresh(mut self, on: bool) -> Self {
        self.settings.rotating = on;
        self
    }

    /// Access-token lifetime (default 3600 s).
    pub fn expires_in(mut self, secs: u64) -> Self {
        self.settings.expires_in = secs;
        self
    }

    /// `token_type` in responses (default `Bearer`; Epic sends `bearer`).
    pub fn token_type(mut self, t: &str) -> Self {
        self.settings.token_type = t.to_owned();
        self
    }

    /// SMART launch context in user-facing token responses (default patient `pat-0001`).
    pub fn context(mut self, patient: Option<&str>, encounter: Option<&str>) -> Self {
        self.settings.patient = patient.map(str::to_owned);
        self.settings.encounter = encounter.map(str::to_owned);
        self
    }

    /// `fhirUser` claim of id_tokens (default `Practitioner/prac-0001`).
    pub fn fhir_user(mut self, fhir_user: &str) -> Self {
        self.settings.fhir_user = fhir_user.to_owned();
        self
    }

    /// Require `aud` on /authorize to equal this FHIR base (Epic since May 2023).
    pub fn expect_aud(mut self, aud: &str) -> Self {
        self.settings.expect_aud = Some(aud.to_owned());
        self
    }

    pub fn start(self) -> FakeOAuth {
        let state = State {
            clients: self
                .clients
                .into_iter()
                .map(|c| (c.client_id.clone(), c))
                .collect(),
            settings: self.settings,
            deny_next: 0,
            codes: HashMap::new(),
            grants: HashMap::new(),
            next_grant: 1,
            refresh_index: HashMap::new(),
            access: HashMap::new(),
            token_faults: VecDeque::new(),
            revoke_faults: VecDeque::new(),
            authorize_requests: Vec::new(),
            token_requests: Vec::new(),
            revoke_requests: Vec::new(),
            refresh_requests: 0,
            refresh_seen: Vec::new(),
            revoked_seen: Vec::new(),
        };
        let shared = Arc::new(Shared {
            prefix: self.prefix,
            origin: Mutex::new(String::new()),
            state: Mutex::new(state),
        });
        let data = web::Data::from(shared.clone());
        let server = ServerThread::spawn("oauth", move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(data.clone()).default_service(web::to(handle));
        });
        let origin = format!("http://{}", server.addr());
        *lock(&shared.origin) = origin.clone();
        FakeOAuth {
            shared,
            origin,
            _server: server,
        }
    }
}

/// A running fake OAuth 2.0 server; stops when dropped.
pub struct FakeOAuth {
    shared: Arc<Shared>,
    origin: String,
    _server: ServerThread,
}

impl fmt::Debug for FakeOAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeOAuth")
            .field("issuer", &self.issuer())
            .finish()
    }
}

impl FakeOAuth {
    /// Starts with no clients, prefix `/`.
    pub fn start() -> FakeOAuth {
        Self::builder().start()
    }

    pub fn builder() -> FakeOAuthBuilder {
        FakeOAuthBuilder {
            prefix: "/".to_owned(),
            clients: Vec::new(),
            settings: Settings {
                with_iss: false,
                iss_override: None,
                rotating: true,
                expires_in: 3600,
                code_ttl: Duration::from_secs(300),
                token_type: "Bearer".to_owned(),
                patient: Some("pat-0001".to_owned()),
                encounter: None,
                fhir_user: "Practitioner/prac-0001".to_owned(),
                expect_aud: None,
            },
        }
    }

    // --- addresses ---

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Origin + prefix without trailing `/` (`http://127.0.0.1:PORT` with the default prefix).
    pub fn issuer(&self) -> String {
        self.shared.issuer()
    }

    pub fn authorize_url(&self) -> String {
        format!("{}{}authorize", self.origin, self.shared.prefix)
    }

    pub fn token_url(&self) -> String {
        format!("{}{}token", self.origin, self.shared.prefix)
    }

    pub fn revocation_url(&self) -> String {
        format!("{}{}revoke", self.origin, self.shared.prefix)
    }

    /// A SMART `.well-known/smart-configuration` document for this server (serve it from
    /// `FakeFhir::builder().smart_configuration(..)`). Also served here at
    /// `{prefix}.well-known/openid-configuration` and `{prefix}.well-known/smart-configuration`.
    pub fn smart_configuration(&self) -> Value {
        smart_configuration(&self.shared)
    }

    // --- configuration at run time ---

    pub fn register_client(&self, client: OAuthClient) {
        self.shared
            .state()
            .clients
            .insert(client.client_id.clone(), client);
    }

    /// The next authorization request is answered with `error=access_denied`.
    pub fn deny_next(&self) {
        self.shared.state().deny_next += 1;
    }

    pub fn set_with_iss(&self, on: bool) {
        self.shared.state().settings.with_iss = on;
    }

    /// Send this `iss` instead of the real issuer (mix-up attack tests). Implies `with_iss`.
    pub fn set_iss_override(&self, iss: Option<&str>) {
        let mut s = self.shared.state();
        s.settings.with_iss = s.settings.with_iss || iss.is_some();
        s.settings.iss_override = iss.map(str::to_owned);
    }

    pub fn set_rotating_refresh(&self, on: bool) {
        self.shared.state().settings.rotating = on;
    }

    pub fn set_expires_in(&self, secs: u64) {
        self.shared.state().settings.expires_in = secs;
    }

    /// Lifetime of authorization codes (default 5 minutes).
    pub fn set_code_ttl(&self, ttl: Duration) {
        self.shared.state().settings.code_ttl = ttl;
    }

    pub fn set_context(&self, patient: Option<&str>, encounter: Option<&str>) {
        let mut s = self.shared.state();
        s.settings.patient = patient.map(str::to_owned);
        s.settings.encounter = encounter.map(str::to_owned);
    }

    /// Makes every access token issued so far expired (refresh tokens stay valid).
    pub fn expire_access_tokens(&self) {
        let past = Instant::now()
            .checked_sub(Duration::from_secs(1))
            .unwrap_or_else(Instant::now);
        for a in self.shared.state().access.values_mut() {
            a.expires_at = past;
        }
    }

    /// The next `n` token requests get this fault.
    pub fn fail_token_next(&self, n: usize, fault: TokenFault) {
        let mut s = self.shared.state();
        for _ in 0..n {
            s.token_faults.push_back(fault.clone());
        }
    }

    /// Drops the token faults not used yet.
    pub fn clear_token_faults(&self) {
        self.shared.state().token_faults.clear();
    }

    /// The next `n` revocation requests get this fault.
    pub fn fail_revoke_next(&self, n: usize, fault: TokenFault) {
        let mut s = self.shared.state();
        for _ in 0..n {
            s.revoke_faults.push_back(fault.clone());
        }
    }

    // --- inspection ---

    pub fn authorize_request_count(&self) -> usize {
        self.shared.state().authorize_requests.len()
    }

    pub fn authorize_requests(&self) -> Vec<RecordedRequest> {
        self.shared.state().authorize_requests.clone()
    }

    /// Every POST to the token endpoint (faulted ones included).
    pub fn token_request_count(&self) -> usize {
        self.shared.state().token_requests.len()
    }

    pub fn token_requests(&self) -> Vec<RecordedRequest> {
        self.shared.state().token_requests.clone()
    }

    /// Token requests with `grant_type=refresh_token` (faulted ones included).
    pub fn refresh_request_count(&self) -> usize {
        self.shared.state().refresh_requests
    }

    /// Every refresh token ever presented, in order (assert none was sent twice).
    pub fn refresh_tokens_seen(&self) -> Vec<String> {
        self.shared.state().refresh_seen.clone()
    }

    pub fn revocation_count(&self) -> usize {
        self.shared.state().revoke_requests.len()
    }

    pub fn revocation_requests(&self) -> Vec<RecordedRequest> {
        self.shared.state().revoke_requests.clone()
    }

    /// Every token presented to the revocation endpoint, in order.
    pub fn revoked_tokens_seen(&self) -> Vec<String> {
        self.shared.state().revoked_seen.clone()
    }

    pub fn is_access_token_valid(&self, token: &str) -> bool {
        access_valid(&self.shared.state(), token)
    }

    /// True when this refresh token would be accepted now.
    pub fn is_refresh_token_valid(&self, token: &str) -> bool {
        let s = self.shared.state();
        s.refresh_index
            .get(token)
            .and_then(|g| s.grants.get(g))
            .is_some_and(|g| !g.revoked && g.current_refresh.as_deref() == Some(token))
    }

    /// A hook for `FakeFhir::accept_tokens_from`: valid = issued here, not expired, not revoked.
    pub fn token_validator(&self) -> TokenCheck {
        let shared = self.shared.clone();
        Arc::new(move |token: &str| access_valid(&shared.state(), token))
    }

    /// Issues tokens as a completed authorization_code grant would (refresh token when the
    /// client gets them), without any HTTP. Panics on an unknown client.
    pub fn issue_tokens_directly(&self, client_id: &str, scopes: &str) -> TokenSet {
        let mut s = self.shared.state();
        let client = s
            .clients
            .get(client_id)
            .cloned()
            .unwrap_or_else(|| panic!("FakeOAuth: unknown client {client_id}"));
        let issuer = self.issuer();
        issue_user_tokens(&mut s, &issuer, &client, scopes, None, None).0
    }
}

fn access_valid(s: &State, token: &str) -> bool {
    s.access.get(token).is_some_and(|a| {
        !a.revoked
            && a.expires_at > Instant::now()
            && a.grant
                .and_then(|g| s.grants.get(&g))
                .is_none_or(|g| !g.revoked)
    })
}

fn smart_configuration(shared: &Shared) -> Value {
    let origin = lock(&shared.origin).clone();
    let with_iss = shared.state().settings.with_iss;
    let p = &shared.prefix;
    json!({
        "issuer": issuer_of(&origin, p),
        "authorization_endpoint": format!("{origin}{p}authorize"),
        "token_endpoint": format!("{origin}{p}token"),
        "revocation_endpoint": format!("{origin}{p}revoke"),
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "fhirUser", "launch", "launch/patient", "offline_access", "patient/*.read", "user/*.read", "system/*.read"],
        "capabilities": ["launch-standalone", "client-public", "client-confidential-symmetric", "permission-offline", "permission-patient", "permission-v1", "permission-v2", "context-standalone-patient", "sso-openid-connect"],
        "authorization_response_iss_parameter_supported": with_iss
    })
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

async fn handle(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let path = req.uri().path();
    let Some(rest) = path.strip_prefix(shared.prefix.as_str()) else {
        return HttpResponse::NotFound().finish();
    };
    let endpoint = rest.trim_end_matches('/');
    match endpoint {
        "authorize" => authorize(&req, &body, &shared),
        "token" => token(&req, &body, &shared).await,
        "revoke" => revoke(&req, &body, &shared).await,
        ".well-known/openid-configuration" | ".well-known/smart-configuration" => {
            HttpResponse::Ok()
                .content_type("application/json")
                .body(smart_configuration(&shared).to_string())
        }
        _ => HttpResponse::NotFound().finish(),
    }
}

/// Parses a form, rejecting repeated parameters (RFC 6749 §3.1, §3.2).
fn parse_form(bytes: &[u8]) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(bytes).into_owned() {
        if out.insert(k.clone(), v).is_some() {
            return Err(format!("parameter {k} repeated"));
        }
    }
    Ok(out)
}

fn json_no_store(status: StatusCode, body: &Value) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, "application/json;charset=UTF-8"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .body(body.to_string())
}

/// An RFC 6749 §5.2 error.
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    basic_challenge: bool,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status: StatusCode::BAD_REQUEST,
            error,
            description: description.into(),
            basic_challenge: false,
        }
    }

    fn invalid_client(description: impl Into<String>) -> Self {
        OAuthError {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description: description.into(),
            basic_challenge: true,
        }
    }

    fn response(&self) -> HttpResponse {
        let mut b = HttpResponse::build(self.status);
        b.insert_header((header::CONTENT_TYPE, "application/json;charset=UTF-8"))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((header::PRAGMA, "no-cache"));
        if self.basic_challenge {
            b.insert_header((header::WWW_AUTHENTICATE, r#"Basic realm="fake-oauth""#));
        }
        b.body(json!({ "error": self.error, "error_description": self.description }).to_string())
    }
}

fn form_decode(part: &str) -> Result<String, ()> {
    let plus = part.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ())
}

/// Decodes `Authorization: Basic` per RFC 6749 §2.3.1: base64, then split at the first `:`,
/// then form-urldecode each half.
pub fn decode_basic_credentials(header_value: &str) -> Option<(String, String)> {
    let (scheme, b64) = header_value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = STANDARD.decode(b64.trim()).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (id, secret) = raw.split_once(':')?;
    Some((form_decode(id).ok()?, form_decode(secret).ok()?))
}

/// Authenticates the client of a token/revocation request with its registered method only.
fn authenticate(
    s: &State,
    req: &HttpRequest,
    form: &HashMap<String, String>,
) -> Result<OAuthClient, OAuthError> {
    let basic = match req.headers().get(header::AUTHORIZATION) {
        Some(v) => {
            let v = v.to_str().unwrap_or_default();
            Some(
                decode_basic_credentials(v)
                    .ok_or_else(|| OAuthError::invalid_client("malformed Basic credentials"))?,
            )
        }
        None => None,
    };
    let body_id = form.get("client_id");
    let body_secret = form.get("client_secret");
    if basic.is_some() && body_secret.is_some() {
        return Err(OAuthError::new(
            "invalid_request",
            "more than one client authentication method used",
        ));
    }
    let (client_id, secret, method) = match (&basic, body_secret) {
        (Some((id, secret)), _) => {
            if body_id.is_some_and(|b| b != id) {
                return Err(OAuthError::new(
                    "invalid_request",
                    "client_id in body differs from Basic credentials",
                ));
            }
            (
                id.clone(),
                Some(secret.clone()),
                ClientAuthMethod::ClientSecretBasic,
            )
        }
        (None, Some(secret)) => {
            let id = body_id.ok_or_else(|| OAuthError::invalid_client("client_id missing"))?;
            (
                id.clone(),
                Some(secret.clone()),
                ClientAuthMethod::ClientSecretPost,
            )
        }
        (None, None) => {
            let id = body_id
                .ok_or_else(|| OAuthError::invalid_client("client authentication missing"))?;
            (id.clone(), None, ClientAuthMethod::None)
        }
    };
    let client = s
        .clients
        .get(&client_id)
        .ok_or_else(|| OAuthError::invalid_client("unknown client"))?;
    if client.auth_method != method {
        return Err(OAuthError::invalid_client(format!(
            "client must authenticate with {:?}, not {:?}",
            client.auth_method, method
        )));
    }
    if method != ClientAuthMethod::None && client.client_secret != secret {
        return Err(OAuthError::invalid_client("client authentication failed"));
    }
    Ok(client.clone())
}

fn token_fault_response(fault: &TokenFault) -> HttpResponse {
    match fault {
        TokenFault::Status503 => HttpResponse::ServiceUnavailable()
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .insert_header((header::RETRY_AFTER, "1"))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(r#"{"error":"temporarily_unavailable"}"#),
        TokenFault::Status(code) => {
            HttpResponse::build(StatusCode::from_u16(*code).unwrap_or(StatusCode::BAD_GATEWAY))
                .insert_header((header::CONTENT_TYPE, "application/json"))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .body(r#"{"error":"server_error"}"#)
        }
        TokenFault::InvalidGrant => OAuthError::new("invalid_grant", "grant is invalid").response(),
        TokenFault::NonJson => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body("<html><body><h1>Something went wrong</h1></body></html>"),
        TokenFault::MissingAccessToken => json_no_store(
            StatusCode::OK,
            &json!({ "token_type": "Bearer", "expires_in": 3600, "scope": "openid" }),
        ),
        TokenFault::Delay(_) | TokenFault::RespondAfter(_) | TokenFault::DelayThen(..) => {
            HttpResponse::InternalServerError().finish()
        }
    }
}

// --- /authorize ---

fn authorize(req: &HttpRequest, body: &[u8], shared: &Shared) -> HttpResponse {
    let mut s = shared.state();
    s.authorize_requests
        .push(RecordedRequest::capture(req, body));
    let raw = match req.method().as_str() {
        "GET" => req.uri().query().unwrap_or_default().as_bytes().to_vec(),
        "POST" => body.to_vec(),
        _ => return HttpResponse::MethodNotAllowed().finish(),
    };
    let bad_page = |msg: &str| {
        HttpResponse::BadRequest()
            .content_type("text/plain; charset=utf-8")
            .body(format!("authorization request rejected: {msg}"))
    };
    let params = match parse_form(&raw) {
        Ok(p) => p,
        Err(e) => return bad_page(&e),
    };
    // Without a valid client and an exactly registered redirect_uri nothing is redirected
    // (RFC 6749 §4.1.2.1: no open redirector).
    let Some(client) = params
        .get("client_id")
        .and_then(|id| s.clients.get(id))
        .cloned()
    else {
        return bad_page("unknown or missing client_id");
    };
    let Some(redirect_uri) = params.get("redirect_uri").cloned() else {
        return bad_page("redirect_uri is required");
    };
    if !client.redirect_uris.contains(&redirect_uri) {
        return bad_page("redirect_uri does not exactly match a registered one");
    }
    let Ok(mut location) = url::Url::parse(&redirect_uri) else {
        return bad_page("redirect_uri is not an absolute URL");
    };
    let state_param = params.get("state").cloned();
    let iss = s
        .settings
        .with_iss
        .then(|| s.settings.iss_override.clone())
        .map(|o| o.unwrap_or_else(|| shared.issuer()));

    let error = if params.get("response_type").map(String::as_str) != Some("code") {
        Some(("unsupported_response_type", "response_type must be code"))
    } else if !client.allows("authorization_code") {
        Some((
            "unauthorized_client",
            "client may not use authorization_code",
        ))
    } else if !params.contains_key("code_challenge") {
        Some(("invalid_request", "code_challenge is required (PKCE)"))
    } else if params.get("code_challenge_method").map(String::as_str) != Some("S256") {
        Some(("invalid_request", "code_challenge_method must be S256"))
    } else if !is_pkce_challenge(&params["code_challenge"]) {
        Some(("invalid_request", "code_challenge is malformed"))
    } else if s
        .settings
        .expect_aud
        .as_ref()
        .is_some_and(|aud| params.get("aud") != Some(aud))
    {
        Some((
            "invalid_request",
            "aud is missing or is not this server's FHIR base",
        ))
    } else if s.deny_next > 0 {
        s.deny_next -= 1;
        Some(("access_denied", "the user denied the request"))
    } else {
        None
    };

    {
        let mut q = location.query_pairs_mut();
        match error {
            Some((code, description)) => {
                q.append_pair("error", code);
                q.append_pair("error_description", description);
            }
            None => {
                let code = random_token("code");
                s.codes.insert(
                    code.clone(),
                    Code {
                        client_id: client.client_id.clone(),
                        redirect_uri: redirect_uri.clone(),
                        challenge: params["code_challenge"].clone(),
                        scope: params.get("scope").cloned().unwrap_or_default(),
                        nonce: params.get("nonce").cloned(),
                        created: Instant::now(),
                        used: false,
                        grant: None,
                    },
                );
                q.append_pair("code", &code);
            }
        }
        if let Some(st) = &state_param {
            q.append_pair("state", st);
        }
        if let Some(iss) = &iss {
            q.append_pair("iss", iss);
        }
    }
    HttpResponse::Found()
        .insert_header((header::LOCATION, location.as_str()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

fn is_pkce_challenge(c: &str) -> bool {
    c.len() == 43
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_pkce_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// `BASE64URL(SHA256(verifier))` without padding (RFC 7636 §4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

// --- /token ---

fn form_request(req: &HttpRequest) -> Result<(), OAuthError> {
    if req.method() != actix_web::http::Method::POST {
        return Err(OAuthError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            ..OAuthError::new("invalid_request", "POST required")
        });
    }
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !ct
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return Err(OAuthError::new(
            "invalid_request",
            "Content-Type must be application/x-www-form-urlencoded",
        ));
    }
    Ok(())
}

/// Serves the waits of (nested) `DelayThen` faults; returns the fault left to apply.
async fn delay_through(mut fault: Option<TokenFault>) -> Option<TokenFault> {
    while let Some(TokenFault::DelayThen(d, inner)) = fault {
        actix_web::rt::time::sleep(d).await;
        fault = Some(*inner);
    }
    fault
}

async fn token(req: &HttpRequest, body: &[u8], shared: &Shared) -> HttpResponse {
    let fault = {
        let mut s = shared.state();
        s.token_requests.push(RecordedRequest::capture(req, body));
        let form = url::form_urlencoded::parse(body).into_owned();
        let mut is_refresh = false;
        for (k, v) in form {
            if k == "grant_type" && v == "refresh_token" {
                is_refresh = true;
            }
            if k == "refresh_token" {
                s.refresh_seen.push(v);
            }
        }
        if is_refresh {
            s.refresh_requests += 1;
        }
        s.token_faults.pop_front()
    };
    let fault = delay_through(fault).await;
    let mut hold = None;
    match fault {
        None => {}
        Some(TokenFault::Delay(d)) => actix_web::rt::time::sleep(d).await,
        Some(TokenFault::RespondAfter(d)) => hold = Some(d),
        Some(f) => return token_fault_response(&f),
    }
    let response = match token_inner(req, body, shared) {
        Ok(v) => json_no_store(StatusCode::OK, &v),
        Err(e) => e.response(),
    };
    if let Some(d) = hold {
        actix_web::rt::time::sleep(d).await;
    }
    response
}

fn token_inner(req: &HttpRequest, body: &[u8], shared: &Shared) -> Result<Value, OAuthError> {
    form_request(req)?;
    let form = parse_form(body).map_err(|e| OAuthError::new("invalid_request", e))?;
    let mut s = shared.state();
    let client = authenticate(&s, req, &form)?;
    let grant_type = form
        .get("grant_type")
        .ok_or_else(|| OAuthError::new("invalid_request", "grant_type missing"))?;
    if !matches!(
        grant_type.as_str(),
        "authorization_code" | "refresh_token" | "client_credentials"
    ) {
        return Err(OAuthError::new(
            "unsupported_grant_type",
            "unsupported grant_type",
        ));
    }
    if !client.allows(grant_type) {
        return Err(OAuthError::new(
            "unauthorized_client",
            "client may not use this grant_type",
        ));
    }
    let issuer = shared.issuer();
    match grant_type.as_str() {
        "authorization_code" => exchange_code(&mut s, &issuer, &client, &form),
        "refresh_token" => refresh(&mut s, &issuer, &client, &form),
        _ => {
            let scope = form.get("scope").cloned().unwrap_or_default();
            let access_token = random_token("at");
            let expires_in = s.settings.expires_in;
            s.access.insert(
                access_token.clone(),
                Access {
                    grant: None,
                    expires_at: Instant::now() + Duration::from_secs(expires_in),
                    revoked: false,
                },
            );
            let mut out = json!({
                "access_token": access_token,
                "token_type": s.settings.token_type,
                "expires_in": expires_in,
            });
            if !scope.is_empty() {
                out["scope"] = json!(scope);
            }
            Ok(out)
        }
    }
}

fn revoke_grant(s: &mut State, grant_id: u64) {
    if let Some(g) = s.grants.get_mut(&grant_id) {
        g.revoked = true;
        g.current_refresh = None;
    }
    for a in s.access.values_mut() {
        if a.grant == Some(grant_id) {
            a.revoked = true;
        }
    }
}

fn exchange_code(
    s: &mut State,
    issuer: &str,
    client: &OAuthClient,
    form: &HashMap<String, String>,
) -> Result<Value, OAuthError> {
    let code_value = form
        .get("code")
        .ok_or_else(|| OAuthError::new("invalid_request", "code missing"))?;
    let code_ttl = s.settings.code_ttl;
    let Some(code) = s.codes.get(code_value) else {
        return Err(OAuthError::new(
            "invalid_grant",
            "unknown authorization code",
        ));
    };
    if code.used {
        // RFC 6749 §4.1.2 / RFC 9700: a replayed code revokes what it issued.
        if let Some(g) = code.grant {
            revoke_grant(s, g);
        }
        return Err(OAuthError::new(
            "invalid_grant",
            "authorization code already used",
        ));
    }
    if code.created.elapsed() > code_ttl {
        return Err(OAuthError::new(
            "invalid_grant",
            "authorization code expired",
        ));
    }
    if code.client_id != client.client_id {
        return Err(OAuthError::new(
            "invalid_grant",
            "code was issued to another client",
        ));
    }
    if form.get("redirect_uri") != Some(&code.redirect_uri) {
        return Err(OAuthError::new(
            "invalid_grant",
            "redirect_uri does not match the authorization request",
        ));
    }
    let verifier = form
        .get("code_verifier")
        .ok_or_else(|| OAuthError::new("invalid_grant", "code_verifier missing"))?;
    if !is_pkce_verifier(verifier) {
        return Err(OAuthError::new(
            "invalid_request",
            "code_verifier is malformed",
        ));
    }
    if pkce_challenge(verifier) != code.challenge {
        return Err(OAuthError::new(
            "invalid_grant",
            "code_verifier does not match code_challenge",
        ));
    }
    let scope = code.scope.clone();
    let nonce = code.nonce.clone();
    let (tokens, grant) = issue_user_tokens(s, issuer, client, &scope, nonce.as_deref(), None);
    if let Some(code) = s.codes.get_mut(code_value) {
        code.used = true;
        code.grant = Some(grant);
    }
    Ok(token_set_json(&tokens))
}

fn refresh(
    s: &mut State,
    issuer: &str,
    client: &OAuthClient,
    form: &HashMap<String, String>,
) -> Result<Value, OAuthError> {
    let presented = form
        .get("refresh_token")
        .ok_or_else(|| OAuthError::new("invalid_request", "refresh_token missing"))?;
    let Some(&grant_id) = s.refresh_index.get(presented) else {
        return Err(OAuthError::new("invalid_grant", "unknown refresh token"));
    };
    let grant = &s.grants[&grant_id];
    if grant.client_id != client.client_id {
        return Err(OAuthError::new(
            "invalid_grant",
            "refresh token was issued to another client",
        ));
    }
    if grant.revoked {
        return Err(OAuthError::new("invalid_grant", "grant revoked"));
    }
    if grant.current_refresh.as_deref() != Some(presented.as_str()) {
        // Reuse of a rotated refresh token: assume theft, revoke the whole grant.
        revoke_grant(s, grant_id);
        return Err(OAuthError::new(
            "invalid_grant",
            "refresh token already used; grant revoked",
        ));
    }
    let granted = grant.scope.clone();
    let scope = match form.get("scope") {
        Some(requested) => {
            let have: HashSet<&str> = granted.split_whitespace().collect();
            if requested.split_whitespace().any(|sc| !have.contains(sc)) {
                return Err(OAuthError::new(
                    "invalid_scope",
                    "requested scope exceeds the grant",
                ));
            }
            requested.clone()
        }
        None => granted,
    };
    let (tokens, _) = issue_user_tokens(s, issuer, client, &scope, None, Some(grant_id));
    Ok(token_set_json(&tokens))
}

/// Issues an access token (and refresh token / id_token) for a user-facing grant; with
/// `existing` it refreshes that grant (rotating or not per settings).
fn issue_user_tokens(
    s: &mut State,
    issuer: &str,
    client: &OAuthClient,
    scope: &str,
    nonce: Option<&str>,
    existing: Option<u64>,
) -> (TokenSet, u64) {
    let grant_id = existing.unwrap_or_else(|| {
        let id = s.next_grant;
        s.next_grant += 1;
        s.grants.insert(
            id,
            Grant {
                client_id: client.client_id.clone(),
                scope: scope.to_owned(),
                revoked: false,
                current_refresh: None,
            },
        );
        id
    });
    let refresh_token = match existing {
        None if client.issue_refresh_tokens => Some(random_token("rt")),
        None => None,
        Some(_) if s.settings.rotating => Some(random_token("rt")),
        Some(_) => None,
    };
    if let Some(rt) = &refresh_token {
        s.refresh_index.insert(rt.clone(), grant_id);
        if let Some(g) = s.grants.get_mut(&grant_id) {
            g.current_refresh = Some(rt.clone());
        }
    }
    let access_token = random_token("at");
    let expires_in = s.settings.expires_in;
    s.access.insert(
        access_token.clone(),
        Access {
            grant: Some(grant_id),
            expires_at: Instant::now() + Duration::from_secs(expires_in),
            revoked: false,
        },
    );
    let id_token = scope
        .split_whitespace()
        .any(|sc| sc == "openid")
        .then(|| id_token(issuer, client, &s.settings.fhir_user, nonce));
    let tokens = TokenSet {
        access_token,
        refresh_token,
        token_type: s.settings.token_type.clone(),
        expires_in,
        scope: scope.to_owned(),
        id_token,
        patient: s.settings.patient.clone(),
        encounter: s.settings.encounter.clone(),
    };
    (tokens, grant_id)
}

/// HS256 with the client secret for confidential clients, unsigned (`alg: none`) for public
/// ones. The client is not expected to trust it beyond reading `fhirUser`.
fn id_token(issuer: &str, client: &OAuthClient, fhir_user: &str, nonce: Option<&str>) -> String {
    let now = epoch_secs();
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(issuer));
    claims.insert(
        "sub".into(),
        json!(fhir_user.rsplit('/').next().unwrap_or(fhir_user)),
    );
    claims.insert("aud".into(), json!(client.client_id));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + 300));
    claims.insert("fhirUser".into(), json!(fhir_user));
    if let Some(n) = nonce {
        claims.insert("nonce".into(), json!(n));
    }
    let claims = Value::Object(claims);
    match &client.client_secret {
        Some(secret) => jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode id_token"),
        None => format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        ),
    }
}

fn token_set_json(t: &TokenSet) -> Value {
    let mut out = json!({
        "access_token": t.access_token,
        "token_type": t.token_type,
        "expires_in": t.expires_in,
        "scope": t.scope,
    });
    if let Some(rt) = &t.refresh_token {
        out["refresh_token"] = json!(rt);
    }
    if let Some(it) = &t.id_token {
        out["id_token"] = json!(it);
    }
    if let Some(p) = &t.patient {
        out["patient"] = json!(p);
    }
    if let Some(e) = &t.encounter {
        out["encounter"] = json!(e);
    }
    out
}

// --- /revoke ---

async fn revoke(req: &HttpRequest, body: &[u8], shared: &Shared) -> HttpResponse {
    let fault = {
        let mut s = shared.state();
        s.revoke_requests.push(RecordedRequest::capture(req, body));
        if let Some((_, t)) = url::form_urlencoded::parse(body).find(|(k, _)| k == "token") {
            s.revoked_seen.push(t.into_owned());
        }
        s.revoke_faults.pop_front()
    };
    let fault = delay_through(fault).await;
    match fault {
        None => {}
        Some(TokenFault::Delay(d)) => actix_web::rt::time::sleep(d).await,
        Some(f) => return token_fault_response(&f),
    }
    match revoke_inner(req, body, shared) {
        Ok(()) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish(),
        Err(e) => e.response(),
    }
}

fn revoke_inner(req: &HttpRequest, body: &[u8], shared: &Shared) -> Result<(), OAuthError> {
    form_request(req)?;
    let form = parse_form(body).map_err(|e| OAuthError::new("invalid_request", e))?;
    let mut s = shared.state();
    let client = authenticate(&s, req, &form)?;
    let token = form
        .get("token")
        .ok_or_else(|| OAuthError::new("invalid_request", "token missing"))?;
    // RFC 7009 §2.2: unknown, invalid or foreign tokens still get 200.
    if let Some(&grant_id) = s.refresh_index.get(token) {
        if s.grants[&grant_id].client_id == client.client_id {
            revoke_grant(&mut s, grant_id);
        }
        return Ok(());
    }
    let owner = s.access.get(token).map(|a| a.grant);
    if let Some(grant) = owner {
        let mine = grant
            .and_then(|g| s.grants.get(&g))
            .is_none_or(|g| g.client_id == client.client_id);
        if mine {
            if let Some(a) = s.access.get_mut(token) {
                a.revoked = true;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REDIRECT: &str = "http://127.0.0.1:9/callback";
    /// Needs form-urlencoding inside Basic (RFC 6749 §2.3.1).
    const SPECIAL_ID: &str = "cl a/b:c";
    const SPECIAL_SECRET: &str = "a/b:c+%&=é";

    fn http() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    fn enc(s: &str) -> String {
        url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
    }

    fn basic_header(id: &str, secret: &str) -> String {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
        )
    }

    fn pkce() -> (String, String) {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let verifier = URL_SAFE_NO_PAD.encode(bytes);
        let challenge = pkce_challenge(&verifier);
        (verifier, challenge)
    }

    fn server() -> FakeOAuth {
        FakeOAuth::builder()
            .client(OAuthClient::basic(SPECIAL_ID, SPECIAL_SECRET, REDIRECT))
            .client(OAuthClient::post("post-client", "post-secret", REDIRECT))
            .client(OAuthClient::public("public-client", REDIRECT))
            .client(OAuthClient::basic("plain", "p+q", REDIRECT))
            .start()
    }

    /// Runs /authorize and returns the Location it redirected to.
    async fn authorize_raw(
        oauth: &FakeOAuth,
        client_id: &str,
        extra: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut url = url::Url::parse(&oauth.authorize_url()).unwrap();
        url.query_pairs_mut()
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", REDIRECT)
            .append_pair("response_type", "code")
            .append_pair(
                "scope",
                "openid fhirUser launch/patient patient/*.read offline_access",
            )
            .append_pair("state", "st-123");
        for (k, v) in extra {
            url.query_pairs_mut().append_pair(k, v);
        }
        http().get(url).send().await.unwrap()
    }

    fn location(resp: &reqwest::Response) -> url::Url {
        assert_eq!(resp.status(), 302, "expected a redirect");
        url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap()
    }

    fn param(url: &url::Url, key: &str) -> Option<String> {
        url.query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    /// Authorize with PKCE S256; returns (code, verifier).
    async fn code_for(oauth: &FakeOAuth, client_id: &str) -> (String, String) {
        let (verifier, challenge) = pkce();
        let resp = authorize_raw(
            oauth,
            client_id,
            &[
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ],
        )
        .await;
        let loc = location(&resp);
        assert_eq!(param(&loc, "state").as_deref(), Some("st-123"));
        (param(&loc, "code").expect("code"), verifier)
    }

    async fn token(oauth: &FakeOAuth, auth: Option<String>, form: &[(&str, &str)]) -> (u16, Value) {
        let mut req = http().post(oauth.token_url()).form(form);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        if status == 200 {
            assert_eq!(resp.headers()["cache-control"], "no-store");
        }
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn exchange_basic(oauth: &FakeOAuth, code: &str, verifier: &str) -> (u16, Value) {
        token(
            oauth,
            Some(basic_header(SPECIAL_ID, SPECIAL_SECRET)),
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", verifier),
            ],
        )
        .await
    }

    async fn refresh_basic(oauth: &FakeOAuth, rt: &str) -> (u16, Value) {
        token(
            oauth,
            Some(basic_header(SPECIAL_ID, SPECIAL_SECRET)),
            &[("grant_type", "refresh_token"), ("refresh_token", rt)],
        )
        .await
    }

    #[tokio::test]
    async fn code_flow_with_percent_encoded_basic_auth() {
        let oauth = server();
        let (code, verifier) = code_for(&oauth, SPECIAL_ID).await;
        let (status, body) = exchange_basic(&oauth, &code, &verifier).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3600);
        assert_eq!(body["patient"], "pat-0001");
        assert!(body["refresh_token"].is_string());
        let at = body["access_token"].as_str().unwrap();
        assert!(oauth.is_access_token_valid(at));

        // id_token: HS256 with the client secret, carrying fhirUser.
        let id_token = body["id_token"].as_str().unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_audience(&[SPECIAL_ID]);
        let claims = jsonwebtoken::decode::<Value>(
            id_token,
            &jsonwebtoken::DecodingKey::from_secret(SPECIAL_SECRET.as_bytes()),
            &validation,
        )
        .unwrap()
        .claims;
        assert_eq!(claims["fhirUser"], "Practitioner/prac-0001");
        assert_eq!(claims["iss"], oauth.issuer());

        // Same credentials without form-encoding inside Basic: `+` decodes to a space.
        let (code, verifier) = code_for(&oauth, "plain").await;
        let raw = format!("Basic {}", STANDARD.encode("plain:p+q"));
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier.as_str()),
        ];
        let (status, body) = token(&oauth, Some(raw), &form).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client"))
        );
        let (status, _) = token(&oauth, Some(basic_header("plain", "p+q")), &form).await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn authorize_enforces_pkce_redirect_uri_and_response_type() {
        let oauth = server();
        let (_, challenge) = pkce();
        // No PKCE.
        let loc = location(&authorize_raw(&oauth, "post-client", &[]).await);
        assert_eq!(param(&loc, "error").as_deref(), Some("invalid_request"));
        assert_eq!(param(&loc, "state").as_deref(), Some("st-123"));
        assert!(param(&loc, "code").is_none());
        // plain is not supported.
        let loc = location(
            &authorize_raw(
                &oauth,
                "post-client",
                &[
                    ("code_challenge", &challenge),
                    ("code_challenge_method", "plain"),
                ],
            )
            .await,
        );
        assert_eq!(param(&loc, "error").as_deref(), Some("invalid_request"));
        // Method absent.
        let loc = location(
            &authorize_raw(&oauth, "post-client", &[("code_challenge", &challenge)]).await,
        );
        assert_eq!(param(&loc, "error").as_deref(), Some("invalid_request"));

        // Wrong redirect_uri: no redirect at all.
        let mut url = url::Url::parse(&oauth.authorize_url()).unwrap();
        url.query_pairs_mut()
            .append_pair("client_id", "post-client")
            .append_pair("redirect_uri", "http://127.0.0.1:9/callback/")
            .append_pair("response_type", "code")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let resp = http().get(url).send().await.unwrap();
        assert_eq!(resp.status(), 400);
        assert!(resp.headers().get("location").is_none());
        // Unknown client: no redirect.
        let resp = authorize_raw(&oauth, "nobody", &[("code_challenge", &challenge)]).await;
        assert_eq!(resp.status(), 400);

        // deny_next + iss.
        oauth.set_with_iss(true);
        oauth.deny_next();
        let pk = [
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        let loc = location(&authorize_raw(&oauth, "post-client", &pk).await);
        assert_eq!(param(&loc, "error").as_deref(), Some("access_denied"));
        assert_eq!(param(&loc, "iss"), Some(oauth.issuer()));
        let loc = location(&authorize_raw(&oauth, "post-client", &pk).await);
        assert!(param(&loc, "code").is_some());
        assert_eq!(param(&loc, "iss"), Some(oauth.issuer()));
        oauth.set_iss_override(Some("http://127.0.0.1:1/evil"));
        let loc = location(&authorize_raw(&oauth, "post-client", &pk).await);
        assert_eq!(
            param(&loc, "iss").as_deref(),
            Some("http://127.0.0.1:1/evil")
        );
        assert_eq!(oauth.authorize_request_count(), 8);
    }

    #[tokio::test]
    async fn token_endpoint_rejects_bad_pkce_redirect_and_reuse() {
        let oauth = server();
        let (code, verifier) = code_for(&oauth, "post-client").await;
        let form = |code: &'static str, verifier: &'static str, redirect: &'static str| {
            vec![
                ("grant_type", "authorization_code"),
                ("client_id", "post-client"),
                ("client_secret", "post-secret"),
                ("code", code),
                ("redirect_uri", redirect),
                ("code_verifier", verifier),
            ]
        };
        let code: &'static str = Box::leak(code.into_boxed_str());
        let verifier: &'static str = Box::leak(verifier.into_boxed_str());
        let (_, other_verifier) = pkce();
        let other: &'static str = Box::leak(other_verifier.into_boxed_str());

        let (s, b) = token(&oauth, None, &form(code, other, REDIRECT)).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (400, Some("invalid_grant")),
            "PKCE mismatch"
        );
        let (s, b) = token(
            &oauth,
            None,
            &form(code, verifier, "http://127.0.0.1:9/other"),
        )
        .await;
        assert_eq!(
            (s, b["error"].as_str()),
            (400, Some("invalid_grant")),
            "redirect_uri"
        );
        let mut no_verifier = form(code, verifier, REDIRECT);
        no_verifier.pop();
        let (s, _) = token(&oauth, None, &no_verifier).await;
        assert_eq!(s, 400);
        // Wrong secret, wrong method (Basic for a post client).
        let mut wrong = form(code, verifier, REDIRECT);
        wrong[2] = ("client_secret", "nope");
        let (s, b) = token(&oauth, None, &wrong).await;
        assert_eq!((s, b["error"].as_str()), (401, Some("invalid_client")));
        let mut as_basic = form(code, verifier, REDIRECT);
        as_basic.remove(2);
        let (s, _) = token(
            &oauth,
            Some(basic_header("post-client", "post-secret")),
            &as_basic,
        )
        .await;
        assert_eq!(s, 401);

        let (s, first) = token(&oauth, None, &form(code, verifier, REDIRECT)).await;
        assert_eq!(s, 200, "{first}");
        let at = first["access_token"].as_str().unwrap();
        let rt = first["refresh_token"].as_str().unwrap();
        assert!(oauth.is_access_token_valid(at));

        // Replay: rejected, and what the code issued is revoked.
        let (s, b) = token(&oauth, None, &form(code, verifier, REDIRECT)).await;
        assert_eq!((s, b["error"].as_str()), (400, Some("invalid_grant")));
        assert!(!oauth.is_access_token_valid(at));
        assert!(!oauth.is_refresh_token_valid(rt));

        // Expired code.
        oauth.set_code_ttl(Duration::ZERO);
        let (code2, verifier2) = code_for(&oauth, "post-client").await;
        std::thread::sleep(Duration::from_millis(5));
        let code2: &'static str = Box::leak(code2.into_boxed_str());
        let verifier2: &'static str = Box::leak(verifier2.into_boxed_str());
        let (s, _) = token(&oauth, None, &form(code2, verifier2, REDIRECT)).await;
        assert_eq!(s, 400);

        // Duplicate parameters and wrong content type.
        let resp = http()
            .post(oauth.token_url())
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials&grant_type=client_credentials&client_id=post-client&client_secret=post-secret")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let resp = http()
            .post(oauth.token_url())
            .json(&json!({ "grant_type": "client_credentials" }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
    }

    #[tokio::test]
    async fn public_client_uses_pkce_only() {
        let oauth = server();
        let (code, verifier) = code_for(&oauth, "public-client").await;
        let (s, b) = token(
            &oauth,
            None,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", "public-client"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", &verifier),
            ],
        )
        .await;
        assert_eq!(s, 200, "{b}");
        // Unsigned id_token for public clients.
        assert!(b["id_token"].as_str().unwrap().ends_with('.'));
        let (s, b) = token(
            &oauth,
            None,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "public-client"),
            ],
        )
        .await;
        assert_eq!((s, b["error"].as_str()), (400, Some("unauthorized_client")));
    }

    #[tokio::test]
    async fn rotating_refresh_reuse_revokes_the_grant() {
        let oauth = server();
        let (code, verifier) = code_for(&oauth, SPECIAL_ID).await;
        let (_, t0) = exchange_basic(&oauth, &code, &verifier).await;
        let rt0 = t0["refresh_token"].as_str().unwrap().to_owned();

        let (s, t1) = refresh_basic(&oauth, &rt0).await;
        assert_eq!(s, 200, "{t1}");
        let rt1 = t1["refresh_token"].as_str().unwrap().to_owned();
        assert_ne!(rt0, rt1);
        assert!(!oauth.is_refresh_token_valid(&rt0));
        let (s, t2) = refresh_basic(&oauth, &rt1).await;
        assert_eq!(s, 200);
        let rt2 = t2["refresh_token"].as_str().unwrap().to_owned();
        let at2 = t2["access_token"].as_str().unwrap().to_owned();
        assert!(oauth.is_access_token_valid(&at2));

        // Reusing rt0: invalid_grant, and the whole grant (rt2, at2) dies.
        let (s, b) = refresh_basic(&oauth, &rt0).await;
        assert_eq!((s, b["error"].as_str()), (400, Some("invalid_grant")));
        assert!(!oauth.is_access_token_valid(&at2));
        let (s, _) = refresh_basic(&oauth, &rt2).await;
        assert_eq!(s, 400);
        assert_eq!(oauth.refresh_request_count(), 4);
        assert_eq!(
            oauth.refresh_tokens_seen(),
            vec![rt0.clone(), rt1, rt0, rt2]
        );

        // Scope narrowing allowed, widening not.
        let seeded = oauth.issue_tokens_directly(SPECIAL_ID, "openid patient/*.read");
        let rt = seeded.refresh_token.unwrap();
        let (s, b) = token(
            &oauth,
            Some(basic_header(SPECIAL_ID, SPECIAL_SECRET)),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &rt),
                ("scope", "user/*.read"),
            ],
        )
        .await;
        assert_eq!((s, b["error"].as_str()), (400, Some("invalid_scope")));
    }

    #[tokio::test]
    async fn respond_after_rotates_before_the_client_sees_it() {
        let oauth = server();
        let (code, verifier) = code_for(&oauth, SPECIAL_ID).await;
        let (_, t0) = exchange_basic(&oauth, &code, &verifier).await;
        let rt0 = t0["refresh_token"].as_str().unwrap().to_owned();
        oauth.fail_token_next(1, TokenFault::RespondAfter(Duration::from_secs(5)));
        oauth.fail_token_next(1, TokenFault::Status503);
        oauth.clear_token_faults();
        oauth.fail_token_next(1, TokenFault::RespondAfter(Duration::from_secs(5)));
        let err = http()
            .post(oauth.token_url())
            .header("authorization", basic_header(SPECIAL_ID, SPECIAL_SECRET))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", &rt0)])
            .timeout(Duration::from_millis(300))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout());
        // The provider rotated although the client never saw the new refresh token.
        assert!(!oauth.is_refresh_token_valid(&rt0));
        let (s, b) = refresh_basic(&oauth, &rt0).await;
        assert_eq!((s, b["error"].as_str()), (400, Some("invalid_grant")));
        assert_eq!(oauth.refresh_request_count(), 2);

        // A slow failure: the wait, then the inner fault.
        oauth.fail_token_next(
            1,
            TokenFault::DelayThen(Duration::from_millis(300), Box::new(TokenFault::Status503)),
        );
        let started = Instant::now();
        let (s, _) = refresh_basic(&oauth, &rt0).await;
        assert_eq!(s, 503);
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn non_rotating_refresh_keeps_the_old_token() {
        let oauth = FakeOAuth::builder()
            .client(OAuthClient::basic("c", "s", REDIRECT))
            .rotating_refresh(false)
            .expires_in(60)
            .start();
        let seeded = oauth.issue_tokens_directly("c", "patient/*.read");
        let rt = seeded.refresh_token.clone().unwrap();
        for _ in 0..2 {
            let (s, b) = token(
                &oauth,
                Some(basic_header("c", "s")),
                &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
            )
            .await;
            assert_eq!(s, 200);
            assert!(b.get("refresh_token").is_none());
            assert_eq!(b["expires_in"], 60);
        }
        assert!(oauth.is_refresh_token_valid(&rt));
        oauth.expire_access_tokens();
        assert!(!oauth.is_access_token_valid(&seeded.access_token));
    }

    #[tokio::test]
    async fn client_credentials_revocation_faults_and_fhir_hook() {
        let oauth = server();
        let fhir = crate::fhir::FakeFhir::builder()
            .seed_patients(1)
            .accept_tokens_from(oauth.token_validator())
            .start();
        let (s, b) = token(
            &oauth,
            None,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "post-client"),
                ("client_secret", "post-secret"),
                ("scope", "system/*.read"),
            ],
        )
        .await;
        assert_eq!(s, 200);
        assert!(b.get("refresh_token").is_none());
        let at = b["access_token"].as_str().unwrap().to_owned();
        let read = || async {
            http()
                .get(fhir.url("Patient/pat-0001"))
                .bearer_auth(&at)
                .header("accept", "application/fhir+json")
                .send()
                .await
                .unwrap()
                .status()
        };
        assert_eq!(read().await, 200);

        // RFC 7009: 200 for unknown tokens; revocation takes effect at the FHIR server.
        let revoke = |token: &str| {
            http()
                .post(oauth.revocation_url())
                .form(&[
                    ("token", token),
                    ("client_id", "post-client"),
                    ("client_secret", "post-secret"),
                ])
                .send()
        };
        assert_eq!(revoke("unknown").await.unwrap().status(), 200);
        assert_eq!(revoke(&at).await.unwrap().status(), 200);
        assert!(!oauth.is_access_token_valid(&at));
        assert_eq!(read().await, 401);
        assert_eq!(oauth.revocation_count(), 2);
        assert_eq!(
            oauth.revoked_tokens_seen(),
            vec!["unknown".to_owned(), at.clone()]
        );

        // Revoking a refresh token kills the grant's access tokens.
        let seeded = oauth.issue_tokens_directly("post-client", "openid");
        assert_eq!(
            revoke(seeded.refresh_token.as_deref().unwrap())
                .await
                .unwrap()
                .status(),
            200
        );
        assert!(!oauth.is_access_token_valid(&seeded.access_token));

        // Faults.
        let cc = [
            ("grant_type", "client_credentials"),
            ("client_id", "post-client"),
            ("client_secret", "post-secret"),
        ];
        oauth.fail_token_next(1, TokenFault::Status503);
        oauth.fail_token_next(1, TokenFault::InvalidGrant);
        oauth.fail_token_next(1, TokenFault::NonJson);
        oauth.fail_token_next(1, TokenFault::MissingAccessToken);
        oauth.fail_token_next(1, TokenFault::Status(502));
        assert_eq!(token(&oauth, None, &cc).await.0, 503);
        let (s, b) = token(&oauth, None, &cc).await;
        assert_eq!((s, b["error"].as_str()), (400, Some("invalid_grant")));
        let (s, b) = token(&oauth, None, &cc).await;
        assert_eq!((s, b), (200, Value::Null));
        let (s, b) = token(&oauth, None, &cc).await;
        assert_eq!(s, 200);
        assert!(b.get("access_token").is_none());
        assert_eq!(token(&oauth, None, &cc).await.0, 502);
        assert_eq!(token(&oauth, None, &cc).await.0, 200);

        oauth.fail_token_next(1, TokenFault::Delay(Duration::from_secs(3)));
        let err = http()
            .post(oauth.token_url())
            .form(&cc)
            .timeout(Duration::from_millis(300))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout());
        assert_eq!(oauth.token_request_count(), 8);
    }

    #[tokio::test]
    async fn aud_and_discovery() {
        let oauth = FakeOAuth::builder()
            .prefix("/oauth2")
            .client(OAuthClient::public("app", REDIRECT))
            .expect_aud("http://127.0.0.1:1/api/FHIR/R4/")
            .with_iss(true)
            .start();
        assert!(oauth.token_url().ends_with("/oauth2/token"));
        assert_eq!(oauth.issuer(), format!("{}/oauth2", oauth.origin()));
        let (_, challenge) = pkce();
        let pk = [
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        let loc = location(&authorize_raw(&oauth, "app", &pk).await);
        assert_eq!(param(&loc, "error").as_deref(), Some("invalid_request"));
        let mut with_aud = pk.to_vec();
        with_aud.push(("aud", "http://127.0.0.1:1/api/FHIR/R4/"));
        let loc = location(&authorize_raw(&oauth, "app", &with_aud).await);
        assert!(param(&loc, "code").is_some());

        let doc: Value = http()
            .get(format!(
                "{}/.well-known/openid-configuration",
                oauth.issuer()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(doc["token_endpoint"], oauth.token_url());
        assert_eq!(doc["authorization_response_iss_parameter_supported"], true);
        assert_eq!(doc, oauth.smart_configuration());
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let h = basic_header(SPECIAL_ID, SPECIAL_SECRET);
        assert_eq!(
            decode_basic_credentials(&h),
            Some((SPECIAL_ID.to_owned(), SPECIAL_SECRET.to_owned()))
        );
        assert_eq!(decode_basic_credentials("Bearer x"), None);
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
