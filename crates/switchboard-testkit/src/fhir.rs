//! `FakeFhir`: a local FHIR R4 server on 127.0.0.1 that enforces what real EHR FHIR servers
//! enforce (bearer tokens, `Accept`, search semantics, paging links, Epic's 100-match cap) and
//! injects faults on demand. Besides Patient it serves any resource type it is given (read,
//! search by reference, token and FHIR date ranges, Bundle paging, `Patient/{id}/$everything`),
//! e.g. the fictional charts of [`generate_chart`]. Also the generator of the static benchmark
//! fixtures.
//!
//! ```no_run
//! # async fn demo() {
//! use switchboard_testkit::fhir::{FakeFhir, Fault, NextLinks};
//! let fhir = FakeFhir::builder().prefix("/api/FHIR/R4/").seed_patients(30).start();
//! fhir.accept_token("tok-1");
//! fhir.fail_next(Fault::Status(500));
//! let url = format!("{}Patient?family=Smith", fhir.base_url());
//! # let _ = url;
//! assert_eq!(fhir.request_count(), 0);
//! # }
//! ```

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use actix_web::dev::ServerHandle;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpResponseBuilder, HttpServer};
use serde_json::{json, Map, Value};

/// FHIR JSON media type sent on every FHIR response.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// Identifier system of the seeded MRNs (Epic-style OID). `type.text` is `MRN`, so both
/// `identifier=MRN|200001` (Epic) and `identifier=urn:oid:...|200001` (FHIR) match.
pub const MRN_SYSTEM: &str = "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14";

/// OperationOutcome coding system of Epic's numeric error codes.
pub const EPIC_ERROR_SYSTEM: &str = "urn:oid:1.2.840.114350.1.13.0.1.7.2.657369";

/// A test hook deciding whether a bearer token is valid (e.g. `FakeOAuth::token_validator()`).
pub type TokenCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// A server on its own thread, usable from any runtime (actix_rt, tokio, or none).
// ---------------------------------------------------------------------------------------------

/// An actix-web server on 127.0.0.1 running on a dedicated thread with its own actix `System`
/// (one worker); stopped on drop. The testkit's fakes run on it, and so can a test's own stub
/// server: `configure` sets up its routes.
pub struct ServerThread {
    addr: SocketAddr,
    handle: ServerHandle,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Binds 127.0.0.1:0 and serves the routes `configure` adds.
    pub fn spawn<C>(name: &str, configure: C) -> ServerThread
    where
        C: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("testkit-{name}"))
            .spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    let server = HttpServer::new(move || App::new().configure(configure.clone()))
                        .workers(1)
                        .disable_signals()
                        .shutdown_timeout(0)
                        .listen(listener)
                        .expect("listen")
                        .run();
                    let _ = tx.send(server.handle());
                    let _ = server.await;
                });
            })
            .expect("spawn server thread");
        let handle = rx.recv().expect("test server failed to start");
        ServerThread {
            addr,
            handle,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        // The stop command is sent eagerly; the returned future only waits for completion.
        drop(self.handle.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// Value of a `Retry-After` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryAfter {
    /// `Retry-After: <seconds>`
    Seconds(u64),
    /// `Retry-After: <IMF-fixdate>`
    HttpDate(SystemTime),
}

impl RetryAfter {
    /// The header value as sent on the wire.
    pub fn header_value(&self) -> String {
        match self {
            RetryAfter::Seconds(s) => s.to_string(),
            RetryAfter::HttpDate(t) => httpdate::fmt_http_date(*t),
        }
    }
}

/// A fault injected into the next request (each queued fault is used by exactly one request,
/// in order, whatever its path).
#[derive(Clone, Debug)]
pub enum Fault {
    /// Respond with this status and a generic OperationOutcome.
    Status(u16),
    /// Respond with this status and this JSON body (e.g. an Epic OperationOutcome).
    StatusBody(u16, Value),
    /// 429 with an optional `Retry-After`.
    TooManyRequests { retry_after: Option<RetryAfter> },
    /// 503 with an optional `Retry-After`.
    Unavailable503 { retry_after: Option<RetryAfter> },
    /// Wait this long, then handle the request normally (for client timeouts).
    Delay(Duration),
    /// 200 `text/html` (a login page / proxy error page instead of JSON).
    NonJson,
    /// 200 `application/fhir+json` whose body is cut in the middle of a JSON document.
    TruncatedJson,
    /// 200 with a valid JSON body of exactly this many bytes, with `Content-Length`.
    Huge(usize),
    /// Like `Huge` but streamed with chunked transfer encoding (no `Content-Length`).
    HugeChunked(usize),
    /// 401 once, even with a good token.
    Unauthorized401,
}

/// How `next` (and `self`) links of searchset Bundles are written.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum NextLinks {
    /// `http://127.0.0.1:PORT{prefix}Patient?...` (Epic, Medplum, most servers).
    #[default]
    Absolute,
    /// Origin-relative `{prefix}Patient?...` starting with `/` (Canvas: `/Patient?..&_offset=10`).
    Relative,
    /// `next` points at another origin, e.g. `http://127.0.0.1:OTHER` (a hostile server);
    /// the host must refuse to follow it (send it no token, or not request it at all).
    OtherOrigin(String),
}

/// One request as received on the wire.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// The request target exactly as received (not normalised or decoded).
    pub path_and_query: String,
    /// Header names lower-case, in arrival order, repeated headers kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    pub(crate) fn capture(req: &HttpRequest, body: &[u8]) -> RecordedRequest {
        RecordedRequest {
            method: req.method().as_str().to_owned(),
            path_and_query: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned()),
            headers: req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.to_vec(),
        }
    }

    /// First value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path part (raw).
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(p, _)| p)
    }

    /// The raw query string, if any.
    pub fn query(&self) -> Option<&str> {
        self.path_and_query.split_once('?').map(|(_, q)| q)
    }

    /// Decoded query parameters in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The bearer token sent, if any.
    pub fn bearer(&self) -> Option<&str> {
        let v = self.header("authorization")?;
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim())
    }
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

struct Config {
    prefix: String,
}

struct State {
    accepted: HashSet<String>,
    revoked: HashSet<String>,
    accept_any: bool,
    token_hooks: Vec<TokenCheck>,
    patients: Vec<Value>,
    /// Every other resource type, by type, in insertion order.
    resources: BTreeMap<String, Vec<Value>>,
    faults: VecDeque<Fault>,
    requests: Vec<RecordedRequest>,
    next_links: NextLinks,
    epic_max: Option<usize>,
    page_size: usize,
    max_page_size: usize,
    require_accept: bool,
    smart_config: Option<Value>,
    /// Every `.well-known/smart-configuration` request (configured document or not).
    discovery_requests: Vec<RecordedRequest>,
    /// What `GET {base}metadata` answers: the CapabilityStatement (None: the default one), or
    /// an HTTP error status.
    metadata: Result<Option<Value>, u16>,
    /// Every `metadata` request (kept apart from [`FakeFhir::requests`]).
    metadata_requests: Vec<RecordedRequest>,
    /// Bulk Data exports (`crate::bulk`).
    bulk: crate::bulk::BulkState,
}

struct Shared {
    config: Config,
    origin: Mutex<String>,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// Builder of a [`FakeFhir`].
pub struct FakeFhirBuilder {
    prefix: String,
    state: State,
}

impl FakeFhirBuilder {
    /// Path prefix of the FHIR base, e.g. `/fhir/R4/` (default), `/api/FHIR/R4/` (Epic), `/`
    /// (Canvas). Leading and trailing `/` are added when missing.
    pub fn prefix(mut self, prefix: &str) -> Self {
        let trimmed = prefix.trim_matches('/');
        self.prefix = if trimmed.is_empty() {
            "/".to_owned()
        } else {
            format!("/{trimmed}/")
        };
        self
    }

    /// Seeds `n` deterministic patients `pat-0001`..
    pub fn seed_patients(mut self, n: usize) -> Self {
        self.state.patients = (1..=n).map(generate_patient).collect();
        self
    }

    /// Seeds the chart of each given patient (see [`generate_chart`]).
    pub fn seed_charts(mut self, patients: &[&str]) -> Self {
        for (i, p) in patients.iter().enumerate() {
            for r in generate_chart(p, i + 1) {
                put_resource(&mut self.state, r);
            }
        }
        self
    }

    pub fn next_links(mut self, links: NextLinks) -> Self {
        self.state.next_links = links;
        self
    }

    /// Epic behaviour: a search matching more than 100 patients fails with 4127, a search with
    /// no criteria fails with 4110, zero matches carry a 4101 warning.
    pub fn epic_mode(mut self) -> Self {
        self.state.epic_max = Some(100);
        self
    }

    /// Epic mode with another match cap.
    pub fn epic_max_results(mut self, max: usize) -> Self {
        self.state.epic_max = Some(max);
        self
    }

    /// Default `_count` (10 unless set).
    pub fn page_size(mut self, n: usize) -> Self {
        self.state.page_size = n.max(1);
        self
    }

    /// Largest `_count` honoured (100 unless set; larger values are clamped).
    pub fn max_page_size(mut self, n: usize) -> Self {
        self.state.max_page_size = n.max(1);
        self
    }

    pub fn accept_token(mut self, token: &str) -> Self {
        self.state.accepted.insert(token.to_owned());
        self
    }

    pub fn accept_any_bearer(mut self) -> Self {
        self.state.accept_any = true;
        self
    }

    pub fn accept_tokens_from(mut self, check: TokenCheck) -> Self {
        self.state.token_hooks.push(check);
        self
    }

    /// Do not require a JSON `Accept` header (default: required, else 406).
    pub fn lenient_accept(mut self) -> Self {
        self.state.require_accept = false;
        self
    }

    /// Serve this document at `{base}.well-known/smart-configuration` (no auth needed).
    pub fn smart_configuration(mut self, doc: Value) -> Self {
        self.state.smart_config = Some(doc);
        self
    }

    pub fn start(self) -> FakeFhir {
        let shared = Arc::new(Shared {
            config: Config {
                prefix: self.prefix,
            },
            origin: Mutex::new(String::new()),
            state: Mutex::new(self.state),
        });
        let data = web::Data::from(shared.clone());
        let server = ServerThread::spawn("fhir", move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(data.clone())
                .app_data(web::PayloadConfig::new(1 << 20))
                .default_service(web::to(handle));
        });
        let origin = format!("http://{}", server.addr());
        *lock(&shared.origin) = origin.clone();
        FakeFhir {
            shared,
            origin,
            server,
        }
    }
}

/// A running fake FHIR R4 server; stops when dropped.
pub struct FakeFhir {
    shared: Arc<Shared>,
    origin: String,
    server: ServerThread,
}

impl fmt::Debug for FakeFhir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeFhir")
            .field("base_url", &self.base_url())
            .finish()
    }
}

impl FakeFhir {
    /// Starts with prefix `/fhir/R4/`, no patients, no accepted tokens.
    pub fn start() -> FakeFhir {
        Self::builder().start()
    }

    pub fn builder() -> FakeFhirBuilder {
        FakeFhirBuilder {
            prefix: "/fhir/R4/".to_owned(),
            state: State {
                accepted: HashSet::new(),
                revoked: HashSet::new(),
                accept_any: false,
                token_hooks: Vec::new(),
                patients: Vec::new(),
                resources: BTreeMap::new(),
                faults: VecDeque::new(),
                requests: Vec::new(),
                next_links: NextLinks::Absolute,
                epic_max: None,
                page_size: 10,
                max_page_size: 100,
                require_accept: true,
                smart_config: None,
                discovery_requests: Vec::new(),
                metadata: Ok(None),
                metadata_requests: Vec::new(),
                bulk: Default::default(),
            },
        }
    }

    /// `http://127.0.0.1:PORT{prefix}`, always ending with `/`.
    pub fn base_url(&self) -> String {
        format!("{}{}", self.origin, self.shared.config.prefix)
    }

    /// `http://127.0.0.1:PORT`
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `base_url() + relative` (e.g. `url("Patient/pat-0001")`).
    pub fn url(&self, relative: &str) -> String {
        format!("{}{}", self.base_url(), relative.trim_start_matches('/'))
    }

    // --- tokens ---

    /// Accepts this bearer token (and un-revokes it).
    pub fn accept_token(&self, token: &str) {
        let mut s = self.shared.state();
        s.revoked.remove(token);
        s.accepted.insert(token.to_owned());
    }

    /// Rejects this token from now on, even if `accept_any_bearer` or a hook would accept it.
    pub fn revoke_token(&self, token: &str) {
        let mut s = self.shared.state();
        s.accepted.remove(token);
        s.revoked.insert(token.to_owned());
    }

    /// Accepts every non-empty bearer token that was not revoked.
    pub fn accept_any_bearer(&self) {
        self.shared.state().accept_any = true;
    }

    /// Also accepts tokens this hook accepts (e.g. `oauth.token_validator()`).
    pub fn accept_tokens_from(&self, check: TokenCheck) {
        self.shared.state().token_hooks.push(check);
    }

    // --- data ---

    /// Replaces the patients with `n` deterministic ones and returns their ids.
    pub fn seed_patients(&self, n: usize) -> Vec<String> {
        let patients: Vec<Value> = (1..=n).map(generate_patient).collect();
        let ids = patients.iter().map(resource_id).collect();
        self.shared.state().patients = patients;
        ids
    }

    /// Adds (or replaces, by id) one Patient resource.
    pub fn add_patient(&self, patient: Value) {
        let id = resource_id(&patient);
        let mut s = self.shared.state();
        s.patients.retain(|p| resource_id(p) != id);
        s.patients.push(patient);
    }

    pub fn patient(&self, id: &str) -> Option<Value> {
        self.shared
            .state()
            .patients
            .iter()
            .find(|p| resource_id(p) == id)
            .cloned()
    }

    pub fn patient_ids(&self) -> Vec<String> {
        self.shared
            .state()
            .patients
            .iter()
            .map(resource_id)
            .collect()
    }

    /// Adds (or replaces, by type and id) a resource of any type but Patient (served by read,
    /// search and `Patient/{id}/$everything`).
    pub fn add_resource(&self, resource: Value) {
        put_resource(&mut self.shared.state(), resource);
    }

    /// The stored resources of one type (seeded, added or created through `POST [type]`), in
    /// insertion order.
    pub fn resources(&self, kind: &str) -> Vec<Value> {
        self.shared
            .state()
            .resources
            .get(kind)
            .cloned()
            .unwrap_or_default()
    }

    /// How many `POST [type]` creates were received (whatever their outcome).
    pub fn create_requests(&self, kind: &str) -> usize {
        let suffix = format!("/{kind}");
        self.shared
            .state()
            .requests
            .iter()
            .filter(|r| r.method == "POST" && r.path().ends_with(&suffix))
            .count()
    }

    /// Seeds the chart of one patient (see [`generate_chart`]) and returns what was added.
    pub fn seed_chart(&self, patient: &str, seed: usize) -> Vec<Value> {
        let chart = generate_chart(patient, seed);
        let mut s = self.shared.state();
        for r in &chart {
            put_resource(&mut s, r.clone());
        }
        chart
    }

    /// Id of the `i`-th seeded patient (1-based): `pat-0001`.
    pub fn patient_id(i: usize) -> String {
        format!("pat-{i:04}")
    }

    /// MRN of the `i`-th seeded patient (1-based).
    pub fn patient_mrn(i: usize) -> String {
        (200_000 + i).to_string()
    }

    // --- behaviour ---

    pub fn set_next_links(&self, links: NextLinks) {
        self.shared.state().next_links = links;
    }

    /// `Some(cap)`: Epic behaviour (see [`FakeFhirBuilder::epic_mode`]); `None`: plain FHIR.
    pub fn set_epic_mode(&self, cap: Option<usize>) {
        self.shared.state().epic_max = cap;
    }

    pub fn set_page_size(&self, n: usize) {
        self.shared.state().page_size = n.max(1);
    }

    /// Queues a fault for the next request.
    pub fn fail_next(&self, fault: Fault) {
        self.shared.state().faults.push_back(fault);
    }

    /// Queues the same fault for the next `n` requests.
    pub fn fail_next_n(&self, n: usize, fault: Fault) {
        let mut s = self.shared.state();
        for _ in 0..n {
            s.faults.push_back(fault.clone());
        }
    }

    pub fn pending_faults(&self) -> usize {
        self.shared.state().faults.len()
    }

    // --- inspection ---

    pub fn request_count(&self) -> usize {
        self.shared.state().requests.len()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.state().requests.clone()
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.shared.state().requests.last().cloned()
    }

    /// Serves `doc` at `{base}.well-known/smart-configuration` from now on (None: 404 again).
    pub fn set_smart_configuration(&self, doc: Option<Value>) {
        self.shared.state().smart_config = doc;
    }

    /// The `.well-known/smart-configuration` requests received, with their headers (e.g.
    /// Epic's `Epic-Client-ID`). Without a configured document these 404 and are kept only
    /// here: they are not in [`FakeFhir::requests`] and take no queued fault.
    pub fn discovery_requests(&self) -> Vec<RecordedRequest> {
        self.shared.state().discovery_requests.clone()
    }

    /// What `GET {base}metadata` answers from now on: `Ok(Some(doc))` that CapabilityStatement,
    /// `Ok(None)` the default one (Patient with `_id`, `family`, `given`, `name`, `birthdate`,
    /// `gender`, `identifier`), `Err(status)` that HTTP error.
    pub fn set_capability_statement(&self, answer: Result<Option<Value>, u16>) {
        self.shared.state().metadata = answer;
    }

    /// The `metadata` requests received. They are not in [`FakeFhir::requests`] and take no
    /// queued fault (a setup save reads them, unrelated to the calls a test counts).
    pub fn metadata_requests(&self) -> Vec<RecordedRequest> {
        self.shared.state().metadata_requests.clone()
    }

    /// Forgets recorded requests and queued faults (tokens, patients and modes stay).
    /// How Bulk Data exports are answered from now on (see [`crate::bulk`]).
    pub fn set_bulk(&self, config: crate::bulk::BulkConfig) {
        self.shared.state().bulk.config = config;
    }

    /// What the Bulk Data routes received so far.
    pub fn bulk_stats(&self) -> crate::bulk::BulkStats {
        self.shared.state().bulk.stats.clone()
    }

    pub fn reset(&self) {
        let mut s = self.shared.state();
        s.requests.clear();
        s.faults.clear();
    }
}

// ---------------------------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------------------------

fn fhir_response(status: StatusCode) -> HttpResponseBuilder {
    let mut b = HttpResponse::build(status);
    b.insert_header((header::CONTENT_TYPE, FHIR_JSON));
    b
}

/// An OperationOutcome with one issue.
pub fn operation_outcome(severity: &str, code: &str, text: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": severity, "code": code, "details": { "text": text }, "diagnostics": text }]
    })
}

/// An Epic-style OperationOutcome carrying an Epic numeric error code.
pub fn epic_operation_outcome(severity: &str, code: &str, epic_code: &str, text: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": severity,
            "code": code,
            "details": {
                "coding": [{ "system": EPIC_ERROR_SYSTEM, "code": epic_code, "display": text }],
                "text": text
            },
            "diagnostics": text
        }]
    })
}

fn outcome(status: StatusCode, code: &str, text: &str) -> HttpResponse {
    fhir_response(status).body(operation_outcome("error", code, text).to_string())
}

fn status_text(status: StatusCode) -> (&'static str, &'static str) {
    match status.as_u16() {
        400 => ("invalid", "Bad request"),
        401 => ("login", "Authentication failed"),
        403 => ("forbidden", "Forbidden"),
        404 => ("not-found", "Not found"),
        409 => ("conflict", "Conflict"),
        422 => ("processable", "Unprocessable entity"),
        429 => ("throttled", "Too many requests"),
        503 => ("transient", "Service unavailable"),
        s if s >= 500 => ("exception", "Internal server error"),
        _ => ("processing", "Error"),
    }
}

fn generic_fault(status: u16) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (code, text) = status_text(status);
    outcome(status, code, text)
}

fn unauthorized(token_sent: bool) -> HttpResponse {
    let challenge = if token_sent {
        r#"Bearer realm="fake-fhir", error="invalid_token", error_description="The access token is invalid or expired""#
    } else {
        r#"Bearer realm="fake-fhir""#
    };
    let mut b = fhir_response(StatusCode::UNAUTHORIZED);
    b.insert_header((header::WWW_AUTHENTICATE, challenge));
    b.body(operation_outcome("error", "login", "Authentication failed").to_string())
}

fn huge_body(n: usize) -> Vec<u8> {
    let head = br#"{"resourceType":"Bundle","type":"searchset","total":0,"padding":""#;
    let tail = br#""}"#;
    if n < head.len() + tail.len() {
        return vec![b' '; n];
    }
    let mut body = Vec::with_capacity(n);
    body.extend_from_slice(head);
    body.resize(n - tail.len(), b'x');
    body.extend_from_slice(tail);
    body
}

fn fault_response(fault: Fault) -> HttpResponse {
    match fault {
        Fault::Status(s) => generic_fault(s),
        Fault::StatusBody(s, body) => {
            fhir_response(StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
                .body(body.to_string())
        }
        Fault::TooManyRequests { retry_after } => {
            with_retry_after(StatusCode::TOO_MANY_REQUESTS, retry_after)
        }
        Fault::Unavailable503 { retry_after } => {
            with_retry_after(StatusCode::SERVICE_UNAVAILABLE, retry_after)
        }
        Fault::NonJson => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
            .body("<!DOCTYPE html><html><head><title>Sign in</title></head><body><h1>Please sign in</h1></body></html>"),
        Fault::TruncatedJson => fhir_response(StatusCode::OK)
            .body(r#"{"resourceType":"Bundle","type":"searchset","total":3,"entry":[{"fullUrl":"#),
        Fault::Huge(n) => fhir_response(StatusCode::OK).body(huge_body(n)),
        Fault::HugeChunked(n) => {
            let body = huge_body(n);
            let chunks: Vec<Result<web::Bytes, Infallible>> = body
                .chunks(64 * 1024)
                .map(|c| Ok(web::Bytes::copy_from_slice(c)))
                .collect();
            fhir_response(StatusCode::OK).streaming(futures_util::stream::iter(chunks))
        }
        Fault::Unauthorized401 => unauthorized(true),
        Fault::Delay(_) => unreachable!("Delay is handled before"),
    }
}

async fn handle(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let recorded = RecordedRequest::capture(&req, &body);
    let well_known = format!("{}.well-known/smart-configuration", shared.config.prefix);
    if req.method() == actix_web::http::Method::GET && req.uri().path() == well_known {
        let mut s = shared.state();
        s.discovery_requests.push(recorded.clone());
        if s.smart_config.is_none() {
            return outcome(StatusCode::NOT_FOUND, "not-found", "No SMART configuration");
        }
    }
    if req.method() == actix_web::http::Method::GET
        && req.uri().path() == format!("{}metadata", shared.config.prefix)
    {
        let answer = {
            let mut s = shared.state();
            s.metadata_requests.push(recorded.clone());
            s.metadata.clone()
        };
        return match answer {
            Ok(doc) => fhir_response(StatusCode::OK)
                .body(doc.unwrap_or_else(capability_statement).to_string()),
            Err(status) => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                outcome(status, "exception", "CapabilityStatement unavailable")
            }
        };
    }
    let fault = {
        let mut s = shared.state();
        s.requests.push(recorded.clone());
        s.faults.pop_front()
    };
    match fault {
        None => {}
        Some(Fault::Delay(d)) => actix_web::rt::time::sleep(d).await,
        Some(other) => return fault_response(other),
    }
    route(&req, &recorded, &shared)
}

fn with_retry_after(status: StatusCode, retry_after: Option<RetryAfter>) -> HttpResponse {
    let (code, text) = status_text(status);
    let mut b = fhir_response(status);
    if let Some(ra) = retry_after {
        b.insert_header((header::RETRY_AFTER, ra.header_value()));
    }
    b.body(operation_outcome("error", code, text).to_string())
}

fn token_ok(state: &State, token: &str) -> bool {
    if token.is_empty() || state.revoked.contains(token) {
        return false;
    }
    state.accept_any || state.accepted.contains(token) || state.token_hooks.iter().any(|h| h(token))
}

fn accept_ok(req: &HttpRequest) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .filter_map(|v: &HeaderValue| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("json"))
}

fn route(req: &HttpRequest, recorded: &RecordedRequest, shared: &Shared) -> HttpResponse {
    let prefix = shared.config.prefix.as_str();
    let path = req.uri().path();
    let Some(rest) = path.strip_prefix(prefix) else {
        return outcome(StatusCode::NOT_FOUND, "not-found", "Unknown path");
    };
    let segments: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').collect()
    };
    let method = req.method().as_str();

    // Public endpoints: no token needed, JSON regardless of Accept.
    match (method, segments.as_slice()) {
        ("GET", [".well-known", "smart-configuration"]) => {
            return match shared.state().smart_config.clone() {
                Some(doc) => HttpResponse::Ok()
                    .content_type("application/json")
                    .body(doc.to_string()),
                None => outcome(StatusCode::NOT_FOUND, "not-found", "No SMART configuration"),
            };
        }
        ("GET", ["metadata"]) => {
            return fhir_response(StatusCode::OK).body(capability_statement().to_string());
        }
        _ => {}
    }

    let mut state = shared.state();
    // Authentication.
    let token = recorded.bearer();
    match token {
        Some(t) if token_ok(&state, t) => {}
        Some(_) => return unauthorized(true),
        None => return unauthorized(false),
    }
    if state.require_accept && !accept_ok(req) {
        return outcome(
            StatusCode::NOT_ACCEPTABLE,
            "not-supported",
            "Accept must be application/fhir+json",
        );
    }

    let base = format!("{}{prefix}", lock(&shared.origin));
    let prefer = req.headers().get("prefer").and_then(|v| v.to_str().ok());
    if let Some(resp) = crate::bulk::route(
        &mut state.bulk,
        method,
        &segments,
        recorded.query(),
        prefer,
        &base,
    ) {
        return resp;
    }
    match (method, segments.as_slice()) {
        ("GET", ["Patient"]) => {
            let params = recorded.query_pairs();
            search_patients(&state, shared, &params)
        }
        ("POST", ["Patient", "_search"]) => {
            let mut params = recorded.query_pairs();
            params.extend(url::form_urlencoded::parse(&recorded.body).into_owned());
            search_patients(&state, shared, &params)
        }
        ("GET", ["Patient", raw_id]) => {
            let id = percent_encoding::percent_decode_str(raw_id).decode_utf8_lossy();
            match state.patients.iter().find(|p| resource_id(p) == id) {
                Some(p) => fhir_response(StatusCode::OK).body(p.to_string()),
                None => outcome(
                    StatusCode::NOT_FOUND,
                    "not-found",
                    "Resource Patient with that id was not found",
                ),
            }
        }
        ("GET", ["Patient", raw_id, "$everything"]) => {
            let id = percent_encoding::percent_decode_str(raw_id).decode_utf8_lossy();
            everything(&state, shared, &id, &recorded.query_pairs())
        }
        ("GET", [kind]) if state.resources.contains_key(*kind) => {
            search_resources(&state, shared, kind, &recorded.query_pairs())
        }
        ("GET", [kind, raw_id]) if state.resources.contains_key(*kind) => {
            let id = percent_encoding::percent_decode_str(raw_id).decode_utf8_lossy();
            match state.resources[*kind].iter().find(|r| resource_id(r) == id) {
                Some(r) => fhir_response(StatusCode::OK).body(r.to_string()),
                None => outcome(
                    StatusCode::NOT_FOUND,
                    "not-found",
                    "Resource with that id was not found",
                ),
            }
        }
        ("POST", [kind])
            if kind.starts_with(|c: char| c.is_ascii_uppercase()) && *kind != "Patient" =>
        {
            create_resource(&mut state, shared, kind, recorded)
        }
        ("GET", [_, ..]) => outcome(
            StatusCode::NOT_FOUND,
            "not-supported",
            "Resource type not supported",
        ),
        (_, [_, ..]) => outcome(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            "Method not allowed",
        ),
        _ => outcome(StatusCode::NOT_FOUND, "not-found", "Unknown path"),
    }
}

fn capability_statement() -> Value {
    let search_params: Vec<Value> = [
        "_id",
        "family",
        "given",
        "name",
        "birthdate",
        "gender",
        "identifier",
    ]
    .iter()
    .map(|n| json!({ "name": n, "type": if *n == "birthdate" { "date" } else { "string" } }))
    .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2024-01-01",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "resource": [{
                "type": "Patient",
                "interaction": [{ "code": "read" }, { "code": "search-type" }],
                "searchParam": search_params
            }]
        }]
    })
}

// ---------------------------------------------------------------------------------------------
// Search
// ---------------------------------------------------------------------------------------------

enum Criterion {
    Str {
        field: StrField,
        modifier: StrModifier,
        any_of: Vec<String>,
    },
    Gender(Vec<String>),
    BirthDate(Vec<(DateCmp, String)>),
    Identifier(Vec<(Option<String>, Option<String>)>),
    Id(Vec<String>),
}

#[derive(Clone, Copy)]
enum StrField {
    Family,
    Given,
    Name,
}

#[derive(Clone, Copy)]
enum StrModifier {
    StartsWith,
    Exact,
    Contains,
}

#[derive(Clone, Copy)]
enum DateCmp {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
}

fn bad_request(text: &str, epic: bool) -> HttpResponse {
    let body = if epic {
        epic_operation_outcome("fatal", "invalid", "4100", text)
    } else {
        operation_outcome("error", "invalid", text)
    };
    fhir_response(StatusCode::BAD_REQUEST).body(body.to_string())
}

fn is_date(v: &str) -> bool {
    let b = v.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    match b.len() {
        4 => digits(0..4),
        7 => digits(0..4) && b[4] == b'-' && digits(5..7),
        10 => digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-' && digits(8..10),
        _ => false,
    }
}

fn parse_criteria(
    params: &[(String, String)],
) -> Result<(Vec<Criterion>, Option<usize>, usize), String> {
    let mut criteria = Vec::new();
    let mut count = None;
    let mut offset = 0;
    for (key, value) in params {
        let (name, modifier) = key.split_once(':').unwrap_or((key.as_str(), ""));
        let values: Vec<String> = value.split(',').map(str::to_owned).collect();
        match name {
            "family" | "given" | "name" => {
                let field = match name {
                    "family" => StrField::Family,
                    "given" => StrField::Given,
                    _ => StrField::Name,
                };
                let modifier = match modifier {
                    "" => StrModifier::StartsWith,
                    "exact" => StrModifier::Exact,
                    "contains" => StrModifier::Contains,
                    _ => return Err(format!("Unsupported modifier on {name}")),
                };
                criteria.push(Criterion::Str {
                    field,
                    modifier,
                    any_of: values,
                });
            }
            "gender" | "legal-sex" => {
                criteria.push(Criterion::Gender(
                    values.iter().map(|v| v.to_ascii_lowercase()).collect(),
                ));
            }
            "birthdate" | "birthDate" => {
                let mut any = Vec::new();
                for v in values {
                    let (cmp, date) = match v.get(..2) {
                        Some("eq") => (DateCmp::Eq, &v[2..]),
                        Some("ne") => (DateCmp::Ne, &v[2..]),
                        Some("gt") => (DateCmp::Gt, &v[2..]),
                        Some("lt") => (DateCmp::Lt, &v[2..]),
                        Some("ge") => (DateCmp::Ge, &v[2..]),
                        Some("le") => (DateCmp::Le, &v[2..]),
                        _ => (DateCmp::Eq, v.as_str()),
                    };
                    if !is_date(date) {
                        return Err(
                            "Invalid birthdate: expected YYYY, YYYY-MM or YYYY-MM-DD".to_owned()
                        );
                    }
                    any.push((cmp, date.to_owned()));
                }
                criteria.push(Criterion::BirthDate(any));
            }
            "identifier" => {
                let parsed = values
                    .iter()
                    .map(|v| match v.split_once('|') {
                        Some((s, val)) => (
                            (!s.is_empty()).then(|| s.to_owned()),
                            (!val.is_empty()).then(|| val.to_owned()),
                        ),
                        None => (None, Some(v.clone())),
                    })
                    .collect();
                criteria.push(Criterion::Identifier(parsed));
            }
            "_id" => criteria.push(Criterion::Id(values)),
            "_count" => match value.parse::<usize>() {
                Ok(n) => count = Some(n),
                Err(_) => return Err("Invalid _count".to_owned()),
            },
            "_offset" => match value.parse::<usize>() {
                Ok(n) => offset = n,
                Err(_) => return Err("Invalid _offset".to_owned()),
            },
            // Unknown parameters are ignored, as FHIR servers do by default.
            _ => {}
        }
    }
    Ok((criteria, count, offset))
}

fn str_values<'a>(p: &'a Value, field: StrField) -> Vec<&'a str> {
    let mut out = Vec::new();
    for name in p["name"].as_array().into_iter().flatten() {
        let mut push = |v: &'a Value| {
            if let Some(s) = v.as_str() {
                out.push(s);
            }
        };
        match field {
            StrField::Family => push(&name["family"]),
            StrField::Given => name["given"]
                .as_array()
                .into_iter()
                .flatten()
                .for_each(push),
            StrField::Name => {
                push(&name["family"]);
                push(&name["text"]);
                for k in ["given", "prefix", "suffix"] {
                    name[k].as_array().into_iter().flatten().for_each(&mut push);
                }
            }
        }
    }
    out
}

fn matches(p: &Value, c: &Criterion) -> bool {
    match c {
        Criterion::Str {
            field,
            modifier,
            any_of,
        } => {
            let values = str_values(p, *field);
            any_of.iter().any(|wanted| {
                let w = wanted.to_lowercase();
                values.iter().any(|v| match modifier {
                    StrModifier::Exact => *v == wanted,
                    StrModifier::StartsWith => v.to_lowercase().starts_with(&w),
                    StrModifier::Contains => v.to_lowercase().contains(&w),
                })
            })
        }
        Criterion::Gender(any_of) => p["gender"]
            .as_str()
            .is_some_and(|g| any_of.iter().any(|w| w == g)),
        Criterion::BirthDate(any_of) => {
            let Some(bd) = p["birthDate"].as_str() else {
                return false;
            };
            any_of.iter().any(|(cmp, date)| {
                let have = &bd[..date.len().min(bd.len())];
                match cmp {
                    DateCmp::Eq => have == date,
                    DateCmp::Ne => have != date,
                    DateCmp::Gt => have > date.as_str(),
                    DateCmp::Lt => have < date.as_str(),
                    DateCmp::Ge => have >= date.as_str(),
                    DateCmp::Le => have <= date.as_str(),
                }
            })
        }
        Criterion::Identifier(any_of) => {
            let ids = p["identifier"].as_array().cloned().unwrap_or_default();
            any_of.iter().any(|(system, value)| {
                ids.iter().any(|id| {
                    let system_ok = system.as_deref().is_none_or(|s| {
                        id["system"].as_str() == Some(s)
                            || id["type"]["text"].as_str() == Some(s)
                            || id["type"]["coding"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .any(|c| c["code"].as_str() == Some(s))
                    });
                    let value_ok = value
                        .as_deref()
                        .is_none_or(|v| id["value"].as_str() == Some(v));
                    system_ok && value_ok
                })
            })
        }
        Criterion::Id(any_of) => any_of.iter().any(|id| *id == resource_id(p)),
    }
}

fn link_url(
    shared: &Shared,
    resource_path: &str,
    links: &NextLinks,
    params: &[(String, String)],
    count: usize,
    offset: usize,
    is_next: bool,
) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        if k != "_count" && k != "_offset" {
            ser.append_pair(k, v);
        }
    }
    ser.append_pair("_count", &count.to_string());
    ser.append_pair("_offset", &offset.to_string());
    let path = format!("{}{resource_path}?{}", shared.config.prefix, ser.finish());
    let own_origin = lock(&shared.origin).clone();
    match links {
        NextLinks::Absolute => format!("{own_origin}{path}"),
        NextLinks::Relative => path,
        NextLinks::OtherOrigin(origin) if is_next => {
            format!("{}{path}", origin.trim_end_matches('/'))
        }
        NextLinks::OtherOrigin(_) => format!("{own_origin}{path}"),
    }
}

fn search_patients(state: &State, shared: &Shared, params: &[(String, String)]) -> HttpResponse {
    let epic = state.epic_max.is_some();
    let (criteria, count, offset) = match parse_criteria(params) {
        Ok(v) => v,
        Err(text) => return bad_request(&text, epic),
    };
    if let Some(cap) = state.epic_max {
        if criteria.is_empty() {
            let body =
                epic_operation_outcome("fatal", "required", "4110", "No parameters provided");
            return fhir_response(StatusCode::BAD_REQUEST).body(body.to_string());
        }
        let n = state
            .patients
            .iter()
            .filter(|p| criteria.iter().all(|c| matches(p, c)))
            .count();
        if n > cap {
            let body = epic_operation_outcome(
                "fatal",
                "too-costly",
                "4127",
                "Additional data may exist. The search returned more results than can be returned.",
            );
            return fhir_response(StatusCode::BAD_REQUEST).body(body.to_string());
        }
    }
    let found: Vec<&Value> = state
        .patients
        .iter()
        .filter(|p| criteria.iter().all(|c| matches(p, c)))
        .collect();
    let total = found.len();
    let count = count.unwrap_or(state.page_size).min(state.max_page_size);
    let base = format!("{}{}", lock(&shared.origin), shared.config.prefix);
    let mut entries: Vec<Value> = found
        .iter()
        .skip(offset)
        .take(count)
        .map(|p| {
            json!({
                "fullUrl": format!("{base}Patient/{}", resource_id(p)),
                "resource": p,
                "search": { "mode": "match" }
            })
        })
        .collect();
    if epic && total == 0 {
        entries.push(json!({
            "resource": epic_operation_outcome("warning", "processing", "4101",
                "Resource request returns no results."),
            "search": { "mode": "outcome" }
        }));
    }
    let mut links = vec![json!({
        "relation": "self",
        "url": link_url(shared, "Patient", &state.next_links, params, count, offset, false)
    })];
    if count > 0 && offset + count < total {
        links.push(json!({
            "relation": "next",
            "url": link_url(shared, "Patient", &state.next_links, params, count, offset + count, true)
        }));
    }
    let bundle = json!({
        "resourceType": "Bundle",
        "id": format!("search-{total}-{offset}"),
        "meta": { "lastUpdated": "2024-01-01T00:00:00Z" },
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": entries,
    });
    fhir_response(StatusCode::OK).body(bundle.to_string())
}

/// FHIR create (`POST [type]`): 201 with the stored resource (a fresh id) and `Location`; with
/// `If-None-Exist: identifier=<system>|<value>`, a resource of that type already holding the
/// identifier is answered 200 and nothing is created (R4 http.html#ccreate).
fn create_resource(
    state: &mut State,
    shared: &Shared,
    kind: &str,
    recorded: &RecordedRequest,
) -> HttpResponse {
    let Ok(Value::Object(mut resource)) = serde_json::from_slice::<Value>(&recorded.body) else {
        return outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            "Body is not a JSON object",
        );
    };
    if resource.get("resourceType").and_then(Value::as_str) != Some(kind) {
        return outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            "resourceType does not match the URL",
        );
    }
    if let Some(query) = recorded.header("if-none-exist") {
        let wanted: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let Some((system, value)) = wanted
            .iter()
            .find(|(k, _)| k == "identifier")
            .and_then(|(_, v)| v.split_once('|'))
        else {
            return outcome(
                StatusCode::BAD_REQUEST,
                "invalid",
                "Unsupported If-None-Exist",
            );
        };
        let holds = |r: &&Value| {
            r["identifier"].as_array().is_some_and(|ids| {
                ids.iter().any(|i| {
                    i["value"].as_str() == Some(value)
                        && (system.is_empty() || i["system"].as_str() == Some(system))
                })
            })
        };
        let matches: Vec<&Value> = state
            .resources
            .get(kind)
            .map(|l| l.iter().filter(holds).collect())
            .unwrap_or_default();
        match matches.as_slice() {
            [] => {}
            [one] => return fhir_response(StatusCode::OK).body(one.to_string()),
            _ => {
                return outcome(
                    StatusCode::PRECONDITION_FAILED,
                    "duplicate",
                    "If-None-Exist matches several resources",
                )
            }
        }
    }
    let n = state.resources.get(kind).map_or(0, Vec::len) + 1;
    let id = format!("{}-created-{n}", kind.to_ascii_lowercase());
    resource.insert("id".into(), Value::String(id.clone()));
    resource.insert("meta".into(), json!({"versionId": "1"}));
    let resource = Value::Object(resource);
    put_resource(state, resource.clone());
    let location = format!(
        "{}{}{kind}/{id}/_history/1",
        lock(&shared.origin),
        shared.config.prefix
    );
    fhir_response(StatusCode::CREATED)
        .insert_header((header::LOCATION, location))
        .body(resource.to_string())
}

fn put_resource(state: &mut State, resource: Value) {
    let kind = resource["resourceType"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let id = resource_id(&resource);
    let list = state.resources.entry(kind).or_default();
    list.retain(|r| resource_id(r) != id);
    list.push(resource);
}

/// The date a `date`-like search parameter of this resource type compares against.
fn date_of<'a>(r: &'a Value, param: &str) -> Option<&'a str> {
    let v = match (r["resourceType"].as_str()?, param) {
        ("Observation" | "DiagnosticReport", "date") => &r["effectiveDateTime"],
        ("Encounter", "date") => &r["period"]["start"],
        ("DocumentReference", "date") => &r["date"],
        ("Procedure", "date") => &r["performedDateTime"],
        ("Immunization", "date") => &r["occurrenceDateTime"],
        ("Appointment", "date") => &r["start"],
        ("Condition", "onset-date") => &r["onsetDateTime"],
        ("MedicationRequest", "authoredon") => &r["authoredOn"],
        _ => return None,
    };
    v.as_str()
}

fn codings(v: &Value) -> Vec<&Value> {
    // A CodeableConcept or an array of them.
    let concepts: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    concepts
        .into_iter()
        .flat_map(|c| c["coding"].as_array().into_iter().flatten())
        .collect()
}

fn token_matches(concept: &Value, wanted: &str) -> bool {
    let (system, code) = match wanted.split_once('|') {
        Some((s, c)) => ((!s.is_empty()).then_some(s), (!c.is_empty()).then_some(c)),
        None => (None, Some(wanted)),
    };
    codings(concept).iter().any(|c| {
        system.is_none_or(|s| c["system"].as_str() == Some(s))
            && code.is_none_or(|w| c["code"].as_str() == Some(w))
    })
}

fn references(v: &Value, kind: &str, id: &str) -> bool {
    let want = format!("{kind}/{id}");
    v["reference"]
        .as_str()
        .is_some_and(|r| r == want || r.ends_with(&format!("/{want}")))
}

fn patient_of(r: &Value, id: &str) -> bool {
    references(&r["subject"], "Patient", id)
        || references(&r["patient"], "Patient", id)
        || r["participant"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| references(&p["actor"], "Patient", id))
}

fn date_cmp(have: &str, value: &str) -> Result<bool, String> {
    let (cmp, date) = match value.get(..2) {
        Some(p @ ("eq" | "ne" | "gt" | "lt" | "ge" | "le")) => (p, &value[2..]),
        _ => ("eq", value),
    };
    if !is_date(date) {
        return Err("Invalid date: expected YYYY, YYYY-MM or YYYY-MM-DD".to_owned());
    }
    let have = &have[..date.len().min(have.len())];
    Ok(match cmp {
        "eq" => have == date,
        "ne" => have != date,
        "gt" => have > date,
        "lt" => have < date,
        "ge" => have >= date,
        _ => have <= date,
    })
}

/// Whether `r` passes one search parameter (unknown parameters match, as FHIR servers ignore
/// them by default).
fn resource_matches(r: &Value, name: &str, value: &str) -> Result<bool, String> {
    let any = |f: &dyn Fn(&str) -> bool| value.split(',').any(f);
    Ok(match name {
        "_id" => any(&|v| resource_id(r) == v),
        "patient" => any(&|v| patient_of(r, v.trim_start_matches("Patient/"))),
        "practitioner" => r["participant"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| any(&|v| references(&p["actor"], "Practitioner", v))),
        "encounter" => any(&|v| references(&r["encounter"], "Encounter", v)),
        "category" => any(&|v| token_matches(&r["category"], v)),
        "code" => any(&|v| token_matches(&r["code"], v) || token_matches(&r["vaccineCode"], v)),
        "type" => any(&|v| token_matches(&r["type"], v)),
        "clinical-status" => any(&|v| token_matches(&r["clinicalStatus"], v)),
        "status" => any(&|v| r["status"].as_str() == Some(v)),
        "intent" => any(&|v| r["intent"].as_str() == Some(v)),
        "class" => any(&|v| r["class"]["code"].as_str() == Some(v)),
        "identifier" => any(&|v| {
            let (system, val) = v.split_once('|').unwrap_or(("", v));
            r["identifier"].as_array().into_iter().flatten().any(|i| {
                (system.is_empty() || i["system"].as_str() == Some(system))
                    && i["value"].as_str() == Some(val)
            })
        }),
        "name" | "family" | "given" => {
            let field = match name {
                "family" => StrField::Family,
                "given" => StrField::Given,
                _ => StrField::Name,
            };
            let values = str_values(r, field);
            any(&|v| {
                values
                    .iter()
                    .any(|h| h.to_lowercase().starts_with(&v.to_lowercase()))
            })
        }
        "date" | "onset-date" | "authoredon" => match date_of(r, name) {
            Some(have) => date_cmp(have, value)?,
            None => false,
        },
        _ => true,
    })
}

/// A searchset page of `found` with `self`/`next` links on `resource_path`.
fn bundle_page(
    state: &State,
    shared: &Shared,
    resource_path: &str,
    params: &[(String, String)],
    found: &[&Value],
) -> HttpResponse {
    let mut count = None;
    let mut offset = 0;
    for (k, v) in params {
        match k.as_str() {
            "_count" => match v.parse::<usize>() {
                Ok(n) => count = Some(n),
                Err(_) => return bad_request("Invalid _count", false),
            },
            "_offset" => match v.parse::<usize>() {
                Ok(n) => offset = n,
                Err(_) => return bad_request("Invalid _offset", false),
            },
            _ => {}
        }
    }
    let total = found.len();
    let count = count.unwrap_or(state.page_size).min(state.max_page_size);
    let base = format!("{}{}", lock(&shared.origin), shared.config.prefix);
    let entries: Vec<Value> = found
        .iter()
        .skip(offset)
        .take(count)
        .map(|r| {
            json!({
                "fullUrl": format!("{base}{}/{}", r["resourceType"].as_str().unwrap_or_default(), resource_id(r)),
                "resource": r,
                "search": { "mode": "match" }
            })
        })
        .collect();
    let mut links = vec![json!({
        "relation": "self",
        "url": link_url(shared, resource_path, &state.next_links, params, count, offset, false)
    })];
    if count > 0 && offset + count < total {
        links.push(json!({
            "relation": "next",
            "url": link_url(shared, resource_path, &state.next_links, params, count, offset + count, true)
        }));
    }
    let bundle = json!({
        "resourceType": "Bundle",
        "id": format!("search-{total}-{offset}"),
        "meta": { "lastUpdated": "2024-01-01T00:00:00Z" },
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": entries,
    });
    fhir_response(StatusCode::OK).body(bundle.to_string())
}

/// Search any seeded type but Patient: every given parameter must match (a repeated one, such
/// as `date=ge..&date=lt..`, each time); comma-separated values are alternatives.
fn search_resources(
    state: &State,
    shared: &Shared,
    kind: &str,
    params: &[(String, String)],
) -> HttpResponse {
    let mut found = Vec::new();
    for r in &state.resources[kind] {
        let mut ok = true;
        for (k, v) in params {
            if k == "_count" || k == "_offset" {
                continue;
            }
            match resource_matches(r, k, v) {
                Ok(m) => ok &= m,
                Err(text) => return bad_request(&text, false),
            }
        }
        if ok {
            found.push(r);
        }
    }
    bundle_page(state, shared, kind, params, &found)
}

/// `Patient/{id}/$everything`: the patient, then every seeded resource of its compartment (by
/// `subject`, `patient` or a participant), paged like a search.
fn everything(
    state: &State,
    shared: &Shared,
    id: &str,
    params: &[(String, String)],
) -> HttpResponse {
    let Some(patient) = state.patients.iter().find(|p| resource_id(p) == id) else {
        return outcome(StatusCode::NOT_FOUND, "not-found", "Patient not found");
    };
    let mut found = vec![patient];
    for list in state.resources.values() {
        found.extend(list.iter().filter(|r| patient_of(r, id)));
    }
    bundle_page(
        state,
        shared,
        &format!("Patient/{id}/$everything"),
        params,
        &found,
    )
}

/// A fictional chart for `patient` (`seed` varies codes and dates): a practitioner, two vital
/// signs and one laboratory Observation (2023-03-01, 2024-02-01, 2024-06-15), a Condition, a
/// MedicationRequest, an AllergyIntolerance, an Encounter, a DocumentReference with its Binary,
/// an Appointment, a Procedure, a DiagnosticReport and an Immunization. Ids are
/// `{kind-prefix}-{patient}-{n}`.
pub fn generate_chart(patient: &str, seed: usize) -> Vec<Value> {
    let subject = json!({ "reference": format!("Patient/{patient}") });
    let prac = format!("prac-{seed:04}");
    let cat = |code: &str| json!([{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": code }] }]);
    let loinc = |code: &str, text: &str| json!({ "coding": [{ "system": "http://loinc.org", "code": code, "display": text }], "text": text });
    let obs = |n: usize, category: &str, code: Value, date: &str, value: f64, unit: &str| {
        json!({
            "resourceType": "Observation",
            "id": format!("obs-{patient}-{n}"),
            "status": "final",
            "category": cat(category),
            "code": code,
            "subject": subject,
            "effectiveDateTime": date,
            "valueQuantity": { "value": value, "unit": unit }
        })
    };
    vec![
        json!({
            "resourceType": "Practitioner",
            "id": prac,
            "identifier": [{ "system": "http://hl7.org/fhir/sid/us-npi", "value": format!("{}", 1_000_000_000 + seed) }],
            "name": [{ "family": "Careful", "given": ["Casey"], "text": "Casey Careful, MD" }]
        }),
        obs(
            1,
            "vital-signs",
            loinc("8867-4", "Heart rate"),
            "2023-03-01T09:00:00Z",
            60.0 + seed as f64,
            "/min",
        ),
        obs(
            2,
            "vital-signs",
            loinc("8310-5", "Body temperature"),
            "2024-02-01T09:00:00Z",
            36.6,
            "Cel",
        ),
        obs(
            3,
            "laboratory",
            loinc("2339-0", "Glucose"),
            "2024-06-15T09:00:00Z",
            95.0,
            "mg/dL",
        ),
        json!({
            "resourceType": "Condition",
            "id": format!("cond-{patient}-1"),
            "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active" }] },
            "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item" }] }],
            "code": { "coding": [{ "system": "http://snomed.info/sct", "code": "38341003", "display": "Hypertension" }] },
            "subject": subject,
            "onsetDateTime": "2020-05-01"
        }),
        json!({
            "resourceType": "MedicationRequest",
            "id": format!("medrx-{patient}-1"),
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": { "coding": [{ "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197361", "display": "Amlodipine 5 MG" }] },
            "subject": subject,
            "authoredOn": "2024-01-10"
        }),
        json!({
            "resourceType": "AllergyIntolerance",
            "id": format!("allergy-{patient}-1"),
            "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active" }] },
            "code": { "text": "Penicillin" },
            "patient": subject
        }),
        json!({
            "resourceType": "Encounter",
            "id": format!("enc-{patient}-1"),
            "status": "finished",
            "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB" },
            "subject": subject,
            "period": { "start": "2024-02-01T09:00:00Z", "end": "2024-02-01T09:30:00Z" }
        }),
        json!({
            "resourceType": "DocumentReference",
            "id": format!("doc-{patient}-1"),
            "status": "current",
            "type": loinc("11506-3", "Progress note"),
            "category": [{ "coding": [{ "system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category", "code": "clinical-note" }] }],
            "subject": subject,
            "date": "2024-02-01T10:00:00Z",
            "content": [{ "attachment": { "contentType": "text/plain", "url": format!("Binary/bin-{patient}-1") } }]
        }),
        json!({
            "resourceType": "Binary",
            "id": format!("bin-{patient}-1"),
            "contentType": "text/plain",
            // "Fictional progress note."
            "data": "RmljdGlvbmFsIHByb2dyZXNzIG5vdGUu"
        }),
        json!({
            "resourceType": "Appointment",
            "id": format!("appt-{patient}-1"),
            "status": "booked",
            "start": "2024-09-01T15:00:00Z",
            "end": "2024-09-01T15:20:00Z",
            "participant": [
                { "actor": subject, "status": "accepted" },
                { "actor": { "reference": format!("Practitioner/{prac}") }, "status": "accepted" }
            ]
        }),
        json!({
            "resourceType": "Procedure",
            "id": format!("proc-{patient}-1"),
            "status": "completed",
            "code": { "coding": [{ "system": "http://snomed.info/sct", "code": "80146002", "display": "Appendectomy" }] },
            "subject": subject,
            "performedDateTime": "2015-07-04"
        }),
        json!({
            "resourceType": "DiagnosticReport",
            "id": format!("dr-{patient}-1"),
            "status": "final",
            "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB" }] }],
            "code": loinc("24323-8", "Comprehensive metabolic panel"),
            "subject": subject,
            "effectiveDateTime": "2024-06-15T09:00:00Z",
            "result": [{ "reference": format!("Observation/obs-{patient}-3") }]
        }),
        json!({
            "resourceType": "Immunization",
            "id": format!("imm-{patient}-1"),
            "status": "completed",
            "vaccineCode": { "coding": [{ "system": "http://hl7.org/fhir/sid/cvx", "code": "140", "display": "Influenza" }] },
            "patient": subject,
            "occurrenceDateTime": "2023-10-01"
        }),
    ]
}

fn resource_id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_owned()
}

// ---------------------------------------------------------------------------------------------
// Deterministic data
// ---------------------------------------------------------------------------------------------

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

const FAMILIES: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "O'Brien",
    "Nguyen",
];
const GIVEN_F: &[&str] = &[
    "Mary",
    "Patricia",
    "Jennifer",
    "Linda",
    "Elizabeth",
    "Barbara",
    "Susan",
    "Jessica",
    "Sarah",
    "Karen",
    "Lisa",
    "Nancy",
    "Betty",
    "Sandra",
    "Margaret",
    "Ashley",
    "Camila",
    "Zoë",
];
const GIVEN_M: &[&str] = &[
    "James",
    "Robert",
    "John",
    "Michael",
    "David",
    "William",
    "Richard",
    "Joseph",
    "Thomas",
    "Charles",
    "Christopher",
    "Daniel",
    "Matthew",
    "Anthony",
    "Mark",
    "Donald",
    "José",
    "Wei",
];
const CITIES: &[(&str, &str, &str)] = &[
    ("Madison", "WI", "53703"),
    ("Verona", "WI", "53593"),
    ("Boston", "MA", "02118"),
    ("Austin", "TX", "78701"),
    ("Denver", "CO", "80202"),
    ("Portland", "OR", "97201"),
];
const STREETS: &[&str] = &[
    "Main St", "Oak Ave", "Maple Dr", "Cedar Ln", "Park Rd", "Elm St",
];

/// The `i`-th deterministic patient (1-based), id `pat-{i:04}`.
pub fn generate_patient(i: usize) -> Value {
    let r = |k: u64| splitmix((i as u64) << 8 | k);
    let pick = |list: &[&'static str], k: u64| list[(r(k) % list.len() as u64) as usize];
    let gender = match r(1) % 20 {
        0 => "other",
        1 => "unknown",
        n if n % 2 == 0 => "female",
        _ => "male",
    };
    let given_list = if gender == "female" { GIVEN_F } else { GIVEN_M };
    let family = pick(FAMILIES, 2);
    let given = pick(given_list, 3);
    let middle = pick(given_list, 4);
    let year = 1930 + r(5) % 90;
    let month = 1 + r(6) % 12;
    let day = 1 + r(7) % 28;
    let (city, state, zip) = CITIES[(r(8) % CITIES.len() as u64) as usize];
    let street = pick(STREETS, 9);
    let email_local: String = format!("{given}.{family}{i}")
        .to_lowercase()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    json!({
        "resourceType": "Patient",
        "id": FakeFhir::patient_id(i),
        "meta": { "versionId": "1", "lastUpdated": "2024-01-01T00:00:00Z" },
        "identifier": [
            {
                "use": "usual",
                "type": {
                    "coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                        "code": "MR",
                        "display": "Medical record number"
                    }],
                    "text": "MRN"
                },
                "system": MRN_SYSTEM,
                "value": FakeFhir::patient_mrn(i)
            },
            {
                "use": "usual",
                "type": { "text": "EPI" },
                "system": "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.0",
                "value": format!("E{}", 1000 + i)
            }
        ],
        "active": true,
        "name": [{
            "use": "official",
            "text": format!("{given} {middle} {family}"),
            "family": family,
            "given": [given, middle]
        }],
        "telecom": [
            { "system": "phone", "value": format!("555-01{:02}-{:04}", r(10) % 100, i % 10_000), "use": "home" },
            { "system": "email", "value": format!("{email_local}@example.com"), "rank": 1 }
        ],
        "gender": gender,
        "birthDate": format!("{year:04}-{month:02}-{day:02}"),
        "address": [{
            "use": "home",
            "line": [format!("{} {street}", 100 + r(11) % 900)],
            "city": city,
            "state": state,
            "postalCode": zip,
            "country": "US"
        }],
        "generalPractitioner": [{
            "reference": "Practitioner/prac-0001",
            "display": "Physician Family Medicine, MD"
        }]
    })
}

/// A richer patient (~2 KB: US Core extensions, several names, contacts) for benchmarks.
pub fn fixture_patient(i: usize) -> Value {
    let mut p = generate_patient(i);
    let birth_sex = if p["gender"] == "female" { "F" } else { "M" };
    let obj = p.as_object_mut().expect("patient object");
    obj.insert(
        "extension".into(),
        json!([
            {
                "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
                "extension": [
                    { "url": "ombCategory", "valueCoding": { "system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3", "display": "White" } },
                    { "url": "text", "valueString": "White" }
                ]
            },
            {
                "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity",
                "extension": [
                    { "url": "ombCategory", "valueCoding": { "system": "urn:oid:2.16.840.1.113883.6.238", "code": "2186-5", "display": "Not Hispanic or Latino" } },
                    { "url": "text", "valueString": "Not Hispanic or Latino" }
                ]
            },
            {
                "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex",
                "valueCode": birth_sex
            }
        ]),
    );
    obj.insert(
        "maritalStatus".into(),
        json!({
            "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M", "display": "Married" }],
            "text": "Married"
        }),
    );
    obj.insert(
        "communication".into(),
        json!([{
            "language": {
                "coding": [{ "system": "urn:ietf:bcp:47", "code": "en", "display": "English" }],
                "text": "English"
            },
            "preferred": true
        }]),
    );
    obj.insert(
        "contact".into(),
        json!([{
            "relationship": [{
                "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "C", "display": "Emergency Contact" }],
                "text": "Emergency Contact"
            }],
            "name": { "use": "usual", "text": "Alex Example", "family": "Example", "given": ["Alex"] },
            "telecom": [{ "system": "phone", "value": "555-0199-0000", "use": "mobile" }]
        }]),
    );
    p
}

/// Base URL used inside the static fixtures (loopback: nothing outside is ever named).
pub const FIXTURE_BASE: &str = "http://127.0.0.1/fhir/R4/";

/// Number of entries in `fixtures/bundle-43k.json`.
pub const FIXTURE_BUNDLE_ENTRIES: usize = 19;

/// Content of `fixtures/patient.json` (pretty JSON, ~2 KB compact).
pub fn fixture_patient_json() -> String {
    let mut s = serde_json::to_string_pretty(&fixture_patient(1)).expect("serialize");
    s.push('\n');
    s
}

/// Content of `fixtures/bundle-43k.json`: a one-page searchset of rich patients (~43 KB).
pub fn fixture_bundle_json() -> String {
    let entries: Vec<Value> = (1..=FIXTURE_BUNDLE_ENTRIES)
        .map(|i| {
            json!({
                "fullUrl": format!("{FIXTURE_BASE}Patient/{}", FakeFhir::patient_id(i)),
                "resource": fixture_patient(i),
                "search": { "mode": "match" }
            })
        })
        .collect();
    let mut bundle = Map::new();
    bundle.insert("resourceType".into(), json!("Bundle"));
    bundle.insert("id".into(), json!("fixture-searchset"));
    bundle.insert("type".into(), json!("searchset"));
    bundle.insert("total".into(), json!(FIXTURE_BUNDLE_ENTRIES));
    bundle.insert(
        "link".into(),
        json!([{ "relation": "self", "url": format!("{FIXTURE_BASE}Patient?family=S&_count={FIXTURE_BUNDLE_ENTRIES}") }]),
    );
    bundle.insert("entry".into(), Value::Array(entries));
    let mut s = serde_json::to_string(&Value::Object(bundle)).expect("serialize");
    s.push('\n');
    s
}

/// The folder holding the committed fixtures.
pub fn fixtures_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "good-token";

    fn client() -> reqwest::Client {
        reqwest::Client::new()
    }

    async fn get(url: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = client().get(url).header("accept", "application/fhir+json");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request")
    }

    async fn get_json(url: &str) -> (u16, Value) {
        let resp = get(url, Some(TOKEN)).await;
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("json body"))
    }

    fn started(n: usize) -> FakeFhir {
        FakeFhir::builder()
            .seed_patients(n)
            .accept_token(TOKEN)
            .start()
    }

    #[tokio::test]
    async fn bearer_token_is_enforced() {
        let fhir = started(3);
        let url = fhir.url("Patient/pat-0001");

        let resp = get(&url, None).await;
        assert_eq!(resp.status(), 401);
        let challenge = resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(challenge.starts_with("Bearer"));
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["resourceType"], "OperationOutcome");
        assert_eq!(body["issue"][0]["code"], "login");

        let resp = get(&url, Some("wrong")).await;
        assert_eq!(resp.status(), 401);
        assert!(resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token"));

        assert_eq!(get(&url, Some(TOKEN)).await.status(), 200);
        fhir.revoke_token(TOKEN);
        assert_eq!(get(&url, Some(TOKEN)).await.status(), 401);
        fhir.accept_any_bearer();
        assert_eq!(
            get(&url, Some(TOKEN)).await.status(),
            401,
            "revoked beats any"
        );
        assert_eq!(get(&url, Some("other")).await.status(), 200);

        let hooked = FakeFhir::builder()
            .seed_patients(1)
            .accept_tokens_from(Arc::new(|t: &str| t.starts_with("ok-")))
            .start();
        assert_eq!(
            get(&hooked.url("Patient/pat-0001"), Some("ok-1"))
                .await
                .status(),
            200
        );
        assert_eq!(
            get(&hooked.url("Patient/pat-0001"), Some("ko-1"))
                .await
                .status(),
            401
        );
        assert_eq!(fhir.request_count(), 6);
    }

    #[tokio::test]
    async fn accept_header_is_required_and_requests_are_recorded() {
        let fhir = started(2);
        let resp = client()
            .get(fhir.url("Patient/pat-0001"))
            .bearer_auth(TOKEN)
            .header("accept", "*/*")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 406);
        let resp = client()
            .get(fhir.url("Patient/pat-0001"))
            .bearer_auth(TOKEN)
            .header("accept", "application/json")
            .header("x-trace", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/fhir+json"));
        let reqs = fhir.requests();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[1].method, "GET");
        assert_eq!(reqs[1].path_and_query, "/fhir/R4/Patient/pat-0001");
        assert_eq!(reqs[1].header("X-Trace"), Some("1"));
        assert_eq!(reqs[1].bearer(), Some(TOKEN));
        fhir.reset();
        assert_eq!(fhir.request_count(), 0);
    }

    #[tokio::test]
    async fn read_patient_and_raw_paths() {
        let fhir = started(5);
        let (status, body) = get_json(&fhir.url("Patient/pat-0003")).await;
        assert_eq!(status, 200);
        assert_eq!(body["resourceType"], "Patient");
        assert_eq!(body["id"], "pat-0003");
        assert_eq!(body["identifier"][0]["value"], FakeFhir::patient_mrn(3));
        assert!(body["name"][0]["family"].is_string());
        assert!(body["birthDate"].as_str().unwrap().len() == 10);

        let (status, body) = get_json(&fhir.url("Patient/nope")).await;
        assert_eq!(status, 404);
        assert_eq!(body["issue"][0]["code"], "not-found");

        let (status, _) = get_json(&fhir.url("Patient/..%2FObservation%3Fx=1")).await;
        assert_eq!(status, 404);
        let last = fhir.last_request().unwrap();
        assert_eq!(
            last.path_and_query,
            "/fhir/R4/Patient/..%2FObservation%3Fx=1"
        );
    }

    async fn collect_all(fhir: &FakeFhir, first: &str) -> (usize, Vec<String>, Vec<String>) {
        let mut url = first.to_owned();
        let mut ids = Vec::new();
        let mut nexts = Vec::new();
        let total;
        loop {
            let (status, body) = get_json(&url).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["type"], "searchset");
            for e in body["entry"].as_array().unwrap() {
                assert_eq!(e["search"]["mode"], "match");
                assert!(e["fullUrl"].as_str().unwrap().starts_with(&fhir.base_url()));
                ids.push(e["resource"]["id"].as_str().unwrap().to_owned());
            }
            let next = body["link"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["relation"] == "next")
                .map(|l| l["url"].as_str().unwrap().to_owned());
            match next {
                Some(n) => {
                    nexts.push(n.clone());
                    url = url::Url::parse(fhir.origin())
                        .unwrap()
                        .join(&n)
                        .unwrap()
                        .to_string();
                }
                None => {
                    total = body["total"].as_u64().unwrap() as usize;
                    break;
                }
            }
        }
        (total, ids, nexts)
    }

    #[tokio::test]
    async fn search_filters_and_absolute_paging() {
        let fhir = started(60);
        let p7 = fhir.patient("pat-0007").unwrap();
        let family = p7["name"][0]["family"].as_str().unwrap().to_owned();
        let birth = p7["birthDate"].as_str().unwrap().to_owned();
        let gender = p7["gender"].as_str().unwrap().to_owned();

        let q = |s: &str| fhir.url(&format!("Patient?{s}"));
        let (_, b) = get_json(&q(&format!("identifier=MRN|{}", FakeFhir::patient_mrn(7)))).await;
        assert_eq!(b["total"], 1);
        assert_eq!(b["entry"][0]["resource"]["id"], "pat-0007");
        let (_, b) = get_json(&q(&format!(
            "identifier={}%7C{}",
            MRN_SYSTEM,
            FakeFhir::patient_mrn(7)
        )))
        .await;
        assert_eq!(b["total"], 1);
        let (_, b) = get_json(&q(&format!("identifier={}", FakeFhir::patient_mrn(7)))).await;
        assert_eq!(b["total"], 1);
        let (_, b) = get_json(&q("identifier=MRN|999")).await;
        assert_eq!(b["total"], 0);
        let (_, b) = get_json(&q("_id=pat-0001,pat-0002")).await;
        assert_eq!(b["total"], 2);

        let lower = family.to_lowercase();
        let (_, b) = get_json(&q(&format!(
            "family={}&birthdate={birth}&gender={gender}",
            &lower[..3]
        )))
        .await;
        let ids: Vec<&str> = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"]["id"].as_str().unwrap())
            .collect();
        assert!(ids.contains(&"pat-0007"), "{ids:?}");
        for e in b["entry"].as_array().unwrap() {
            assert_eq!(e["resource"]["birthDate"], birth.as_str());
        }
        let (_, b) = get_json(&q(&format!("birthDate=eq{birth}&family:exact={family}"))).await;
        assert!(b["total"].as_u64().unwrap() >= 1);
        let (status, b) = get_json(&q("birthdate=01/02/1980")).await;
        assert_eq!(status, 400);
        assert_eq!(b["resourceType"], "OperationOutcome");

        // Paging: 60 patients, 25 a page.
        let (total, ids, nexts) = collect_all(&fhir, &q("_count=25")).await;
        assert_eq!(total, 60);
        assert_eq!(ids.len(), 60);
        assert_eq!(nexts.len(), 2);
        assert!(nexts[0].starts_with(&format!("{}Patient?", fhir.base_url())));
        assert!(nexts[0].contains("_offset=25"));
        // Default page size 10.
        let (_, b) = get_json(&q("gender=female,male,other,unknown")).await;
        assert_eq!(b["entry"].as_array().unwrap().len(), 10);
        assert_eq!(b["total"], 60);
    }

    #[tokio::test]
    async fn relative_and_hostile_next_links() {
        let fhir = FakeFhir::builder()
            .prefix("/")
            .seed_patients(15)
            .accept_token(TOKEN)
            .next_links(NextLinks::Relative)
            .start();
        assert_eq!(fhir.base_url(), format!("{}/", fhir.origin()));
        let (total, ids, nexts) = collect_all(&fhir, &fhir.url("Patient?family=")).await;
        assert_eq!((total, ids.len()), (15, 15));
        assert!(nexts[0].starts_with("/Patient?"), "{}", nexts[0]);
        assert!(nexts[0].contains("&_count=10&_offset=10"));

        let epic = FakeFhir::builder()
            .prefix("api/FHIR/R4")
            .seed_patients(15)
            .accept_token(TOKEN)
            .next_links(NextLinks::Relative)
            .start();
        let (_, b) = get_json(&epic.url("Patient")).await;
        let next = b["link"][1]["url"].as_str().unwrap();
        assert!(next.starts_with("/api/FHIR/R4/Patient?"), "{next}");

        let attacker = FakeFhir::builder().accept_any_bearer().start();
        fhir.set_next_links(NextLinks::OtherOrigin(attacker.origin().to_owned()));
        let (_, b) = get_json(&fhir.url("Patient")).await;
        let next = b["link"][1]["url"].as_str().unwrap();
        assert!(next.starts_with(attacker.origin()), "{next}");
        assert_eq!(attacker.request_count(), 0);
    }

    #[tokio::test]
    async fn epic_mode_caps_results() {
        let fhir = FakeFhir::builder()
            .prefix("/api/FHIR/R4/")
            .seed_patients(250)
            .accept_token(TOKEN)
            .epic_mode()
            .start();
        let (status, b) = get_json(&fhir.url("Patient?gender=female")).await;
        assert_eq!(status, 400);
        assert_eq!(b["issue"][0]["severity"], "fatal");
        assert_eq!(b["issue"][0]["details"]["coding"][0]["code"], "4127");
        let (status, b) = get_json(&fhir.url("Patient")).await;
        assert_eq!(status, 400);
        assert_eq!(b["issue"][0]["details"]["coding"][0]["code"], "4110");
        let (status, b) = get_json(&fhir.url("Patient?family=Zzz")).await;
        assert_eq!(status, 200);
        assert_eq!(b["total"], 0);
        assert_eq!(b["entry"][0]["search"]["mode"], "outcome");
        assert_eq!(
            b["entry"][0]["resource"]["issue"][0]["details"]["coding"][0]["code"],
            "4101"
        );
        let (status, b) = get_json(&fhir.url("Patient?_id=pat-0200")).await;
        assert_eq!(status, 200);
        assert_eq!(b["total"], 1);
    }

    #[tokio::test]
    async fn faults_are_served_in_order() {
        let fhir = started(2);
        let url = fhir.url("Patient/pat-0001");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        fhir.fail_next(Fault::TooManyRequests {
            retry_after: Some(RetryAfter::Seconds(7)),
        });
        fhir.fail_next(Fault::Unavailable503 {
            retry_after: Some(RetryAfter::HttpDate(at)),
        });
        fhir.fail_next(Fault::Status(500));
        fhir.fail_next(Fault::StatusBody(
            403,
            operation_outcome("error", "forbidden", "nope"),
        ));
        fhir.fail_next(Fault::NonJson);
        fhir.fail_next(Fault::Huge(3_000_000));
        fhir.fail_next(Fault::HugeChunked(200_000));
        fhir.fail_next(Fault::TruncatedJson);
        fhir.fail_next(Fault::Unauthorized401);
        assert_eq!(fhir.pending_faults(), 9);

        let r = get(&url, Some(TOKEN)).await;
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "7");
        let r = get(&url, Some(TOKEN)).await;
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(get(&url, Some(TOKEN)).await.status(), 500);
        let r = get(&url, Some(TOKEN)).await;
        assert_eq!(r.status(), 403);
        assert_eq!(
            r.json::<Value>().await.unwrap()["issue"][0]["code"],
            "forbidden"
        );
        let r = get(&url, Some(TOKEN)).await;
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let r = get(&url, Some(TOKEN)).await;
        assert_eq!(r.content_length(), Some(3_000_000));
        let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(body["resourceType"], "Bundle");
        let r = get(&url, Some(TOKEN)).await;
        assert_eq!(r.content_length(), None);
        assert_eq!(r.bytes().await.unwrap().len(), 200_000);
        let r = get(&url, Some(TOKEN)).await;
        assert!(r.json::<Value>().await.is_err());
        assert_eq!(get(&url, Some(TOKEN)).await.status(), 401);
        assert_eq!(get(&url, Some(TOKEN)).await.status(), 200);

        fhir.fail_next(Fault::Delay(Duration::from_secs(3)));
        let timed_out = client()
            .get(&url)
            .bearer_auth(TOKEN)
            .header("accept", "application/fhir+json")
            .timeout(Duration::from_millis(300))
            .send()
            .await;
        assert!(timed_out.unwrap_err().is_timeout());
        fhir.fail_next_n(2, Fault::Status(502));
        assert_eq!(get(&url, Some(TOKEN)).await.status(), 502);
        assert_eq!(get(&url, Some(TOKEN)).await.status(), 502);
        assert_eq!(get(&url, Some(TOKEN)).await.status(), 200);
    }

    #[tokio::test]
    async fn public_endpoints_need_no_token() {
        let fhir = FakeFhir::builder()
            .smart_configuration(json!({ "token_endpoint": "http://127.0.0.1:1/token" }))
            .start();
        let r = client()
            .get(fhir.url(".well-known/smart-configuration"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.json::<Value>().await.unwrap()["token_endpoint"],
            "http://127.0.0.1:1/token"
        );
        let r = client().get(fhir.url("metadata")).send().await.unwrap();
        assert_eq!(
            r.json::<Value>().await.unwrap()["resourceType"],
            "CapabilityStatement"
        );
    }

    #[test]
    fn seeded_patients_are_deterministic() {
        assert_eq!(generate_patient(42), generate_patient(42));
        assert_ne!(generate_patient(1)["id"], generate_patient(2)["id"]);
        let sizes: Vec<usize> = (1..=5)
            .map(|i| generate_patient(i).to_string().len())
            .collect();
        assert!(sizes.iter().all(|s| (700..2000).contains(s)), "{sizes:?}");
    }

    #[test]
    fn committed_fixtures_match_the_generator() {
        let dir = fixtures_dir();
        let expected = [
            ("patient.json", fixture_patient_json()),
            ("bundle-43k.json", fixture_bundle_json()),
        ];
        if std::env::var_os("SWITCHBOARD_UPDATE_FIXTURES").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            for (name, content) in &expected {
                std::fs::write(dir.join(name), content).unwrap();
            }
        }
        for (name, content) in &expected {
            let on_disk = std::fs::read_to_string(dir.join(name))
                .unwrap_or_else(|e| panic!("{name}: {e} (run with SWITCHBOARD_UPDATE_FIXTURES=1)"));
            assert_eq!(
                &on_disk, content,
                "{name} drifted from fhir::fixture_*_json()"
            );
        }
        let compact_patient = fixture_patient(1).to_string().len();
        assert!((1700..2500).contains(&compact_patient), "{compact_patient}");
        let bundle = fixture_bundle_json().len();
        assert!((40_000..46_000).contains(&bundle), "{bundle}");
    }
}
