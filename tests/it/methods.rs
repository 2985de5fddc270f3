//! Running connector methods over REST, `POST /v1/accounts/{account}/installs/{install}/methods/{method}`,
//! end to end: Get Patient and Search Patients through every shipped connector against local
//! FHIR (`FakeFhir`) and OAuth (`FakeOAuth`) servers; parameter validation before any upstream
//! call; path injection; paging over relative, absolute and foreign `next` links; the mapping of
//! every upstream failure; 401 -> one refresh -> retry; and no upstream body in error bodies or
//! logs.

use crate::support::{assert_problem, install_row, log_capture, open_tokens, Backend, TestApp};
use actix_web::{web, HttpRequest, HttpResponse};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};
use switchboard_testkit::fhir::{
    self, FakeFhir, FakeFhirBuilder, Fault, NextLinks, RecordedRequest, RetryAfter, ServerThread,
};
use switchboard_testkit::oauth::{FakeOAuth, OAuthClient, TokenFault};

/// The Canvas sandbox token of every static-bearer install (the setup's `api_token`).
const CANVAS_TOKEN: &str = "canvas-sandbox-token-5f1e";
const CLIENT_ID: &str = "switchboard-app";
const CLIENT_SECRET: &str = "app-secret-9c2d";
const RETURN_URL: &str = "https://console.example/done";

// ---------------------------------------------------------------------------------------------
// One origin for EHRs whose single endpoint setting serves OAuth and FHIR (Epic, Medplum)
// ---------------------------------------------------------------------------------------------

/// Requests under `/oauth2/` go to a FakeOAuth, everything else to a FakeFhir, forwarded as
/// received (method, raw path and query, headers, body; redirects are passed back, never
/// followed). Epic's `endpoint` and Medplum's `base_url` point here.
pub(crate) struct Front {
    pub(crate) origin: String,
    _server: ServerThread,
}

struct FrontTargets {
    oauth: String,
    fhir: String,
    client: reqwest::Client,
}

const HOP_BY_HOP: [&str; 5] = [
    "host",
    "content-length",
    "connection",
    "transfer-encoding",
    "keep-alive",
];

impl Front {
    pub(crate) fn start(oauth_origin: &str, fhir_origin: &str) -> Front {
        let targets = web::Data::new(FrontTargets {
            oauth: oauth_origin.to_owned(),
            fhir: fhir_origin.to_owned(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .build()
                .unwrap(),
        });
        let server = ServerThread::spawn("front", move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(targets.clone())
                .app_data(web::PayloadConfig::new(1 << 20))
                .default_service(web::to(forward));
        });
        Front {
            origin: format!("http://{}", server.addr()),
            _server: server,
        }
    }
}

async fn forward(req: HttpRequest, body: web::Bytes, t: web::Data<FrontTargets>) -> HttpResponse {
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let target = if req.uri().path().starts_with("/oauth2/") {
        &t.oauth
    } else {
        &t.fhir
    };
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).expect("method");
    let mut out = t
        .client
        .request(method, format!("{target}{path_and_query}"));
    for (name, value) in req.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            out = out.header(name.as_str(), value.as_bytes());
        }
    }
    let Ok(resp) = out.body(body.to_vec()).send().await else {
        return HttpResponse::BadGateway().finish();
    };
    let status = actix_web::http::StatusCode::from_u16(resp.status().as_u16()).expect("status");
    let mut back = HttpResponse::build(status);
    for (name, value) in resp.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            let value = actix_web::http::header::HeaderValue::from_bytes(value.as_bytes())
                .expect("header value");
            back.append_header((name.as_str(), value));
        }
    }
    back.body(resp.bytes().await.unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// Authorized installs of each connector, pointed at their own FakeFhir
// ---------------------------------------------------------------------------------------------

/// How an install is authorized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    /// Epic, authorization code (Basic client auth, reusable refresh token) through a [`Front`].
    Epic,
    /// Canvas, static bearer (the sandbox token): FakeFhir accepts [`CANVAS_TOKEN`].
    Canvas,
    /// Canvas, authorization code (client_secret_post, rotating refresh) on its own OAuth host.
    CanvasOAuth,
    /// Medplum, authorization code through a [`Front`].
    Medplum,
    /// Medplum, client credentials through a [`Front`].
    MedplumClientCredentials,
}

impl Via {
    pub(crate) fn connector(self) -> &'static str {
        match self {
            Via::Epic => "epic",
            Via::Canvas | Via::CanvasOAuth => "canvas",
            Via::Medplum | Via::MedplumClientCredentials => "medplum",
        }
    }

    /// The FHIR base path where the connector expects it (Epic `api/FHIR/R4/` under the
    /// endpoint, Canvas at the FHIR host's root, Medplum `fhir/R4/`).
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            Via::Epic => "/api/FHIR/R4/",
            Via::Canvas | Via::CanvasOAuth => "/",
            Via::Medplum | Via::MedplumClientCredentials => "/fhir/R4/",
        }
    }

    pub(crate) fn fhir(self) -> FakeFhirBuilder {
        FakeFhir::builder().prefix(self.prefix())
    }

    fn auth_type(self) -> &'static str {
        match self {
            Via::Canvas => "static_bearer",
            Via::MedplumClientCredentials => "oauth2_client_credentials",
            _ => "oauth2_authorization_code",
        }
    }
}

/// One install and the upstream servers it talks to.
pub(crate) struct Env {
    pub(crate) fhir: FakeFhir,
    oauth: Option<FakeOAuth>,
    _front: Option<Front>,
    pub(crate) account: String,
    pub(crate) install: String,
}

impl Env {
    fn method_path(&self, method: &str) -> String {
        format!(
            "/v1/accounts/{}/installs/{}/methods/{method}",
            self.account, self.install
        )
    }

    pub(crate) async fn call(
        &self,
        app: &TestApp,
        method: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        app.post(&self.method_path(method), body).await
    }

    /// Calls `get_patient` with this id.
    pub(crate) async fn get_patient(&self, app: &TestApp, id: &str) -> (StatusCode, Value) {
        self.call(app, "get_patient", json!({ "params": { "id": id } }))
            .await
    }

    fn oauth(&self) -> &FakeOAuth {
        self.oauth.as_ref().expect("an OAuth install")
    }

    /// The bearer token of the last request FakeFhir received.
    fn last_bearer(&self) -> String {
        self.fhir
            .last_request()
            .expect("a request")
            .bearer()
            .expect("a bearer token")
            .to_owned()
    }
}

static NEXT_ACCOUNT: AtomicUsize = AtomicUsize::new(1);

/// Creates an account and an install of `via`'s connector pointed at a FakeFhir started from
/// `fhir` (and a FakeOAuth where the auth type needs one), and completes its authorization.
pub(crate) async fn install(app: &TestApp, via: Via, fhir: FakeFhirBuilder) -> Env {
    let (env, created) = create_install(app, via, fhir).await;
    if via.auth_type() == "oauth2_authorization_code" {
        assert_eq!(created["status"], "pending_authorization", "{created}");
        let authorize_url = created["authorize_url"].as_str().expect("authorize_url");
        complete_authorization(app, authorize_url).await;
    } else {
        assert!(created.get("authorize_url").is_none(), "{created}");
    }
    let (s, v) = app
        .get(&format!(
            "/v1/accounts/{}/installs/{}",
            env.account, env.install
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "authorized", "{via:?}: {v}");
    env
}

/// Creates the install without going through the authorization step.
async fn create_install(app: &TestApp, via: Via, fhir: FakeFhirBuilder) -> (Env, Value) {
    let account = format!("acct-{}", NEXT_ACCOUNT.fetch_add(1, Ordering::Relaxed));
    app.create_account(&account).await;
    let callback = app.url("/connector/callback");
    let (oauth, fhir, front) = match via {
        Via::Canvas => (None, fhir.accept_token(CANVAS_TOKEN).start(), None),
        _ => {
            let oauth = match via {
                Via::CanvasOAuth => FakeOAuth::builder()
                    .prefix("/auth/")
                    .client(OAuthClient::post(CLIENT_ID, CLIENT_SECRET, &callback)),
                // Epic's refresh responses carry no new refresh token (EHR-FACTS §1).
                Via::Epic => FakeOAuth::builder()
                    .prefix("/oauth2/")
                    .rotating_refresh(false)
                    .client(OAuthClient::basic(CLIENT_ID, CLIENT_SECRET, &callback)),
                _ => FakeOAuth::builder()
                    .prefix("/oauth2/")
                    .client(OAuthClient::basic(CLIENT_ID, CLIENT_SECRET, &callback)),
            }
            .start();
            let fhir = fhir.accept_tokens_from(oauth.token_validator()).start();
            let front =
                (via != Via::CanvasOAuth).then(|| Front::start(oauth.origin(), fhir.origin()));
            (Some(oauth), fhir, front)
        }
    };
    // The app registration is tenant-wide (the same for every install of a connector); each
    // install points at its own servers through its setting overrides.
    let credentials = json!({ "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET });
    let (setup, overrides) = match via {
        Via::Epic | Via::Medplum | Via::MedplumClientCredentials => {
            let key = if via == Via::Epic {
                "endpoint"
            } else {
                "base_url"
            };
            let origin = &front.as_ref().unwrap().origin;
            (credentials, json!({ key: format!("{origin}/") }))
        }
        Via::Canvas | Via::CanvasOAuth => {
            let mut overrides = json!({ "fhir_base_url": fhir.base_url() });
            if let Some(o) = &oauth {
                overrides["instance_url"] = json!(format!("{}/", o.origin()));
            }
            (
                json!({ "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "api_token": CANVAS_TOKEN }),
                overrides,
            )
        }
    };
    let (s, v) = app
        .put(
            &format!("/v1/connectors/{}/setup", via.connector()),
            json!({ "settings": setup }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, created) = app
        .post(
            &format!("/v1/accounts/{account}/installs"),
            json!({
                "connector": via.connector(),
                "auth_type": via.auth_type(),
                "settings": overrides,
                "return_url": RETURN_URL,
            }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{via:?}: {created}");
    let install = created["id"].as_str().expect("install id").to_owned();
    let env = Env {
        fhir,
        oauth,
        _front: front,
        account,
        install,
    };
    (env, created)
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("location")
        .expect("a Location header")
        .to_str()
        .unwrap()
        .to_owned()
}

/// The browser's part: open the authorize URL (FakeOAuth consents at once and redirects to the
/// callback), then follow that redirect to Switchboard's callback.
async fn complete_authorization(app: &TestApp, authorize_url: &str) {
    let resp = app.http.get(authorize_url).send().await.expect("authorize");
    assert_eq!(
        resp.status(),
        StatusCode::FOUND,
        "authorize: {authorize_url}"
    );
    let callback = location(&resp);
    assert!(
        callback.starts_with(&app.url("/connector/callback?")),
        "{callback}"
    );
    let resp = app.http.get(&callback).send().await.expect("callback");
    assert_eq!(resp.status(), StatusCode::FOUND);
    let done = location(&resp);
    assert!(
        done.starts_with(&format!("{RETURN_URL}?")) && done.contains("status=authorized"),
        "{done}"
    );
}

/// The install row's token version and decrypted tokens, read from the database with the
/// server's key file.
async fn stored_tokens(app: &TestApp, install: &str) -> (i64, Option<String>, Option<String>) {
    let row = install_row(app, install).await.expect("install row");
    let (access, refresh) = open_tokens(app, &row);
    (row.token_version, access, refresh)
}

/// What FakeFhir serves for this recorded request (fetched again directly; its answers are
/// deterministic). Adds one request to `fhir.requests()`.
async fn served(fhir: &FakeFhir, r: &RecordedRequest) -> Value {
    let resp = reqwest::Client::new()
        .get(format!("{}{}", fhir.origin(), r.path_and_query))
        .header(
            "authorization",
            r.header("authorization").expect("authorization"),
        )
        .header("accept", "application/fhir+json")
        .send()
        .await
        .expect("direct FHIR request");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.expect("FHIR JSON")
}

/// Asserts that a response body holds none of the seeded patients' names, emails or MRNs.
fn assert_no_patient_data(body: &Value, fhir: &FakeFhir) {
    let text = body.to_string();
    for id in fhir.patient_ids() {
        let p = fhir.patient(&id).unwrap();
        let mut secrets = vec![p["name"][0]["text"].as_str().unwrap().to_owned()];
        secrets.push(p["telecom"][1]["value"].as_str().unwrap().to_owned());
        secrets.push(p["identifier"][0]["value"].as_str().unwrap().to_owned());
        for s in secrets {
            assert!(!text.contains(&s), "patient data {s:?} leaked into {text}");
        }
    }
}

fn entry_ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .expect("entry array")
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect()
}

fn next_link(bundle: &Value) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")
        .map(|l| l["url"].as_str().unwrap().to_owned())
}

fn fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .expect("errors array")
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect()
}

fn message_of<'a>(problem: &'a Value, field: &str) -> &'a str {
    problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["field"] == field)
        .unwrap_or_else(|| panic!("no error for {field}: {problem}"))["message"]
        .as_str()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// 1. Get Patient and Search Patients through every connector
// ---------------------------------------------------------------------------------------------

async fn every_connector_reads_and_searches(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for via in [
        Via::Epic,
        Via::Canvas,
        Via::Medplum,
        Via::MedplumClientCredentials,
    ] {
        let env = install(&app, via, via.fhir().seed_patients(12)).await;
        let prefix = via.prefix();

        // Get Patient.
        let (s, v) = env.get_patient(&app, "pat-0003").await;
        assert_eq!(s, StatusCode::OK, "{via:?}: {v}");
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["data", "pages", "status"], "{via:?}: {v}");
        assert_eq!(v["status"], 200);
        assert_eq!(v["pages"], 1);
        assert_eq!(v["data"], env.fhir.patient("pat-0003").unwrap(), "{via:?}");
        let reqs = env.fhir.requests();
        assert_eq!(reqs.len(), 1, "{via:?}: {reqs:?}");
        let r = &reqs[0];
        assert_eq!(r.method, "GET");
        assert_eq!(r.path_and_query, format!("{prefix}Patient/pat-0003"));
        assert_eq!(r.header("accept"), Some("application/fhir+json"));
        let token = match via {
            Via::Canvas => CANVAS_TOKEN.to_owned(),
            _ => {
                let (_, access, _) = stored_tokens(&app, &env.install).await;
                let access = access.expect("stored access token");
                assert!(env.oauth().is_access_token_valid(&access));
                access
            }
        };
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {token}").as_str()),
            "{via:?}"
        );

        // Search Patients by two identifiers: a repeated parameter is two query keys.
        let p3 = env.fhir.patient("pat-0003").unwrap();
        let mrn = FakeFhir::patient_mrn(3);
        let identifiers = [format!("MRN|{mrn}"), format!("{}|{mrn}", fhir::MRN_SYSTEM)];
        let (s, v) = env
            .call(
                &app,
                "search_patients",
                json!({ "params": { "identifier": identifiers } }),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{via:?}: {v}");
        assert_eq!(
            (v["status"].as_u64(), v["pages"].as_u64()),
            (Some(200), Some(1))
        );
        let r = env.fhir.last_request().unwrap();
        assert_eq!(r.path(), format!("{prefix}Patient"));
        assert_eq!(
            r.query_pairs(),
            vec![
                ("identifier".to_owned(), identifiers[0].clone()),
                ("identifier".to_owned(), identifiers[1].clone()),
            ],
            "{via:?}: {}",
            r.path_and_query
        );
        assert_eq!(r.bearer(), Some(token.as_str()));
        assert_eq!(r.header("accept"), Some("application/fhir+json"));
        assert_eq!(v["data"]["resourceType"], "Bundle");
        assert_eq!(entry_ids(&v["data"]), ["pat-0003"]);
        assert_eq!(v["data"]["entry"][0]["resource"], p3);
        assert_eq!(v["data"], served(&env.fhir, &r).await, "{via:?}");

        // Search by name and birth date (Epic's given+family+birthdate minimum); every
        // connector sends the standard name (Canvas too: its docs list `birthdate`).
        let family = p3["name"][0]["family"].as_str().unwrap();
        let given = p3["name"][0]["given"][0].as_str().unwrap();
        let birth = p3["birthDate"].as_str().unwrap();
        let (s, v) = env
            .call(
                &app,
                "search_patients",
                json!({ "params": { "family": family, "given": given, "birthdate": birth } }),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{via:?}: {v}");
        let r = env.fhir.last_request().unwrap();
        let birth_key = "birthdate";
        let sent: BTreeMap<String, String> = r.query_pairs().into_iter().collect();
        let want: BTreeMap<String, String> =
            [("family", family), ("given", given), (birth_key, birth)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        assert_eq!(sent, want, "{via:?}: {}", r.path_and_query);
        assert_eq!(r.query_pairs().len(), 3);
        assert!(entry_ids(&v["data"]).contains(&"pat-0003".to_owned()));
        assert_eq!(v["data"], served(&env.fhir, &r).await, "{via:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Parameter validation: 422 before anything is sent
// ---------------------------------------------------------------------------------------------

async fn invalid_params_never_reach_the_ehr(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let epic = install(&app, Via::Epic, Via::Epic.fhir().seed_patients(3)).await;
    let canvas = install(&app, Via::Canvas, Via::Canvas.fhir().seed_patients(3)).await;

    // Missing required path parameter; unknown parameter.
    let (s, v) = epic
        .call(&app, "get_patient", json!({ "params": {} }))
        .await;
    assert_problem(s, &v, 422, "invalid_params");
    assert_eq!(fields(&v), ["id"]);
    assert_eq!(message_of(&v, "id"), "is required");
    let (s, v) = epic
        .call(
            &app,
            "get_patient",
            json!({ "params": { "id": "pat-0001", "mrn": "200001" } }),
        )
        .await;
    assert_problem(s, &v, 422, "invalid_params");
    assert_eq!(fields(&v), ["mrn"]);
    assert!(message_of(&v, "mrn").contains("unknown parameter"), "{v}");

    // Every problem of one request is listed: unknown, wrong type, enum, pattern, array where
    // a single value is expected, and an invalid token.
    let (s, v) = epic
        .call(
            &app,
            "search_patients",
            json!({ "params": {
                "identifier": "|",
                "given": 7,
                "gender": "robot-sentinel",
                "birthdate": "1980-02",
                "_id": "a b",
                "family": ["Smith", "Jones"],
                "nickname": "Bo",
            } }),
        )
        .await;
    assert_problem(s, &v, 422, "invalid_params");
    let mut got = fields(&v);
    got.sort();
    assert_eq!(
        got,
        [
            "_id",
            "birthdate",
            "family",
            "gender",
            "given",
            "identifier",
            "nickname"
        ],
        "{v}"
    );
    assert!(
        message_of(&v, "nickname").contains("unknown parameter"),
        "{v}"
    );
    assert!(message_of(&v, "given").contains("must be a string"), "{v}");
    assert!(message_of(&v, "gender").contains("must be one of"), "{v}");
    assert!(message_of(&v, "birthdate").contains("pattern"), "{v}");
    assert!(message_of(&v, "_id").contains("pattern"), "{v}");
    assert!(message_of(&v, "family").contains("not an array"), "{v}");
    assert!(message_of(&v, "identifier").contains("token"), "{v}");
    assert!(v["detail"].as_str().unwrap().starts_with("7 "), "{v}");
    // Values are never echoed.
    assert!(!v.to_string().contains("robot-sentinel"), "{v}");

    // Epic's minimum search combinations (require_one_of).
    let (s, v) = epic
        .call(
            &app,
            "search_patients",
            json!({ "params": { "family": "Smith", "given": "Ann" } }),
        )
        .await;
    assert_problem(s, &v, 422, "invalid_params");
    assert_eq!(fields(&v), ["params"]);
    let m = message_of(&v, "params");
    assert!(
        m.contains("[_id]")
            && m.contains("[identifier]")
            && m.contains("[given, family, birthdate]"),
        "{m}"
    );

    // Canvas: integer bounds, boolean type, impossible date, pattern.
    let (s, v) = canvas
        .call(
            &app,
            "search_patients",
            json!({ "params": {
                "_count": 0,
                "active": "yes",
                "birthdate": "1980-13-01",
                "phone": "555-1234-sentinel",
            } }),
        )
        .await;
    assert_problem(s, &v, 422, "invalid_params");
    let mut got = fields(&v);
    got.sort();
    assert_eq!(got, ["_count", "active", "birthdate", "phone"], "{v}");
    assert!(message_of(&v, "_count").contains("at least 1"), "{v}");
    assert!(message_of(&v, "active").contains("boolean"), "{v}");
    assert!(message_of(&v, "birthdate").contains("date"), "{v}");
    assert!(message_of(&v, "phone").contains("pattern"), "{v}");
    assert!(!v.to_string().contains("555-1234-sentinel"), "{v}");
    let (s, v) = canvas
        .call(
            &app,
            "search_patients",
            json!({ "params": { "_count": 101 } }),
        )
        .await;
    assert_problem(s, &v, 422, "invalid_params");
    assert!(message_of(&v, "_count").contains("at most 100"), "{v}");

    // Malformed request bodies.
    let (s, v) = canvas
        .call(&app, "get_patient", json!({ "params": "MRN 200001" }))
        .await;
    assert_problem(s, &v, 400, "invalid_request").hides(&["MRN 200001"]);
    let (s, v) = canvas
        .call(
            &app,
            "get_patient",
            json!({ "params": { "id": "pat-0001" }, "max_pages": 0 }),
        )
        .await;
    assert_problem(s, &v, 400, "invalid_request");
    let (s, v) = canvas
        .call(
            &app,
            "get_patient",
            json!({ "params": { "id": "pat-0001" }, "pages": 2 }),
        )
        .await;
    assert_problem(s, &v, 400, "invalid_request");

    assert_eq!(epic.fhir.request_count(), 0, "{:?}", epic.fhir.requests());
    assert_eq!(
        canvas.fhir.request_count(),
        0,
        "{:?}",
        canvas.fhir.requests()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Path injection
// ---------------------------------------------------------------------------------------------

/// A copy of the shipped connectors where Canvas's `get_patient` id has no pattern, so that
/// hostile ids reach the request builder (the shipped patterns already refuse them).
fn connectors_without_canvas_id_pattern(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("connectors-unpatterned");
    std::fs::create_dir_all(&out).unwrap();
    let shipped = crate::support::repo_root().join("connectors");
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let entry = entry.unwrap();
        crate::support::copy_entry(&entry.path(), &out.join(entry.file_name())).unwrap();
    }
    let canvas = std::fs::read_to_string(shipped.join("canvas.toml")).unwrap();
    let id_param =
        "name = \"id\"\nin = \"path\"\nrequired = true\npattern = '[A-Za-z0-9\\-\\.]{1,64}'\n";
    assert!(
        canvas.contains(id_param),
        "canvas.toml's id parameter changed"
    );
    std::fs::write(
        out.join("canvas.toml"),
        canvas.replacen(
            id_param,
            "name = \"id\"\nin = \"path\"\nrequired = true\n",
            1,
        ),
    )
    .unwrap();
    out
}

async fn path_parameters_stay_one_segment(backend: Backend) {
    let scratch = tempfile::tempdir().unwrap();
    let connectors = connectors_without_canvas_id_pattern(scratch.path());
    let app = TestApp::spawn_with(backend, |s| s.connectors.dir = connectors).await;
    let hostile = [
        "../Observation",
        "a/b?x",
        "%2e%2e%2f",
        "..",
        ".",
        "Observation?_id=1#x",
    ];

    // The shipped definition (Epic's, identical for every connector) refuses them all.
    let epic = install(&app, Via::Epic, Via::Epic.fhir().seed_patients(2)).await;
    for id in hostile {
        let (s, v) = epic.get_patient(&app, id).await;
        assert_problem(s, &v, 422, "invalid_params");
        assert_eq!(fields(&v), ["id"], "{id}: {v}");
    }
    assert_eq!(epic.fhir.request_count(), 0);

    // Without a pattern, each value is sent as exactly one encoded segment under Patient/, or
    // refused when it is a dot segment.
    let canvas = install(&app, Via::Canvas, Via::Canvas.fhir().seed_patients(2)).await;
    let expected = [
        ("../Observation", Some("..%2FObservation")),
        ("a/b?x", Some("a%2Fb%3Fx")),
        ("%2e%2e%2f", Some("%252e%252e%252f")),
        ("..", None),
        (".", None),
        ("Observation?_id=1#x", Some("Observation%3F_id%3D1%23x")),
    ];
    for (id, segment) in expected {
        let before = canvas.fhir.request_count();
        let (s, v) = canvas.get_patient(&app, id).await;
        match segment {
            None => {
                assert_problem(s, &v, 422, "invalid_params");
                assert_eq!(fields(&v), ["id"]);
                assert_eq!(canvas.fhir.request_count(), before, "{id}");
            }
            Some(segment) => {
                // FakeFhir has no such patient.
                assert_problem(s, &v, 404, "upstream_not_found");
                assert_eq!(canvas.fhir.request_count(), before + 1, "{id}");
                let r = canvas.fhir.last_request().unwrap();
                assert_eq!(r.path_and_query, format!("/Patient/{segment}"), "{id}");
                assert_eq!(r.query(), None);
                assert_eq!(r.path().split('/').count(), 3, "{}", r.path());
            }
        }
    }
    // The segment that matters: a real id still works, and nothing ever reached Observation.
    let (s, v) = canvas.get_patient(&app, "pat-0002").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for r in canvas.fhir.requests() {
        assert!(r.path().starts_with("/Patient/"), "{}", r.path_and_query);
        assert!(
            !r.path()
                .split('/')
                .any(|seg| seg == "Observation" || seg == ".."),
            "{}",
            r.path_and_query
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Paging
// ---------------------------------------------------------------------------------------------

async fn paging_follows_relative_and_absolute_next_links(backend: Backend) {
    // upstream.max_pages = 3 caps what a caller may ask for.
    let app = TestApp::spawn_with(backend, |s| s.upstream.max_pages = 3).await;
    for links in [NextLinks::Relative, NextLinks::Absolute] {
        let env = install(
            &app,
            Via::Canvas,
            Via::Canvas
                .fhir()
                .seed_patients(25)
                .next_links(links.clone()),
        )
        .await;

        // Default: one page, its next link handed back untouched.
        let (s, v) = env
            .call(
                &app,
                "search_patients",
                json!({ "params": { "_count": 5 } }),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["pages"], 1);
        assert_eq!(entry_ids(&v["data"]).len(), 5);
        let first = env.fhir.requests();
        assert_eq!(first.len(), 1);
        let page1 = served(&env.fhir, &first[0]).await;
        assert_eq!(v["data"], page1);
        let next = next_link(&page1).expect("a next link");
        match links {
            NextLinks::Relative => assert!(next.starts_with("/Patient?"), "{next}"),
            _ => assert!(next.starts_with(&env.fhir.url("Patient?")), "{next}"),
        }

        // Three pages, merged.
        env.fhir.reset();
        let (s, v) = env
            .call(
                &app,
                "search_patients",
                json!({ "params": { "_count": 5 }, "max_pages": 3 }),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{links:?}: {v}");
        assert_eq!(v["status"], 200);
        assert_eq!(v["pages"], 3);
        let want: Vec<String> = (1..=15).map(FakeFhir::patient_id).collect();
        assert_eq!(entry_ids(&v["data"]), want, "{links:?}");
        assert_eq!(v["data"]["total"], 25);
        let reqs = env.fhir.requests();
        assert_eq!(reqs.len(), 3, "{reqs:?}");
        assert_eq!(reqs[0].path_and_query, "/Patient?_count=5");
        for (r, offset) in reqs[1..].iter().zip(["5", "10"]) {
            assert_eq!(r.method, "GET");
            assert_eq!(r.path(), "/Patient");
            assert!(
                r.query_pairs()
                    .contains(&("_offset".to_owned(), offset.to_owned())),
                "{}",
                r.path_and_query
            );
            assert_eq!(r.bearer(), Some(CANVAS_TOKEN));
            assert_eq!(r.header("accept"), Some("application/fhir+json"));
        }
        // The merged Bundle: the first page with every page's entries and the last page's
        // next link (more results remain).
        let pages = [
            served(&env.fhir, &reqs[0]).await,
            served(&env.fhir, &reqs[1]).await,
            served(&env.fhir, &reqs[2]).await,
        ];
        let mut expected = pages[0].clone();
        expected["entry"] = Value::Array(
            pages
                .iter()
                .flat_map(|p| p["entry"].as_array().unwrap().clone())
                .collect(),
        );
        let last_next = pages[2]["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .unwrap()
            .clone();
        for l in expected["link"].as_array_mut().unwrap() {
            if l["relation"] == "next" {
                *l = last_next.clone();
            }
        }
        assert_eq!(v["data"], expected, "{links:?}");
        assert!(next_link(&v["data"]).unwrap().contains("_offset=15"));

        // Asking for more than upstream.max_pages gets the cap.
        env.fhir.reset();
        let (s, v) = env
            .call(
                &app,
                "search_patients",
                json!({ "params": { "_count": 5 }, "max_pages": 1000 }),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["pages"], 3);
        assert_eq!(entry_ids(&v["data"]).len(), 15);
        assert_eq!(env.fhir.request_count(), 3);

        // A search that ends within the allowance: every entry, no next link.
        env.fhir.seed_patients(12);
        env.fhir.reset();
        let (s, v) = env
            .call(
                &app,
                "search_patients",
                json!({ "params": { "_count": 5 }, "max_pages": 3 }),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["pages"], 3);
        let want: Vec<String> = (1..=12).map(FakeFhir::patient_id).collect();
        assert_eq!(entry_ids(&v["data"]), want);
        assert_eq!(next_link(&v["data"]), None, "{}", v["data"]["link"]);
        assert_eq!(env.fhir.request_count(), 3);
    }
}

async fn next_link_to_another_origin_is_never_followed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let other = FakeFhir::builder()
        .prefix("/")
        .seed_patients(25)
        .accept_any_bearer()
        .start();
    let env = install(
        &app,
        Via::Canvas,
        Via::Canvas
            .fhir()
            .seed_patients(25)
            .next_links(NextLinks::OtherOrigin(other.origin().to_owned())),
    )
    .await;

    let (s, v) = env
        .call(
            &app,
            "search_patients",
            json!({ "params": { "_count": 5 }, "max_pages": 3 }),
        )
        .await;
    assert_problem(s, &v, 502, "upstream_error");
    assert!(
        v["detail"].as_str().unwrap().contains("next-page link"),
        "{v}"
    );
    assert!(v.get("data").is_none());
    assert_no_patient_data(&v, &env.fhir);
    assert_eq!(env.fhir.request_count(), 1);
    assert_eq!(other.request_count(), 0, "{:?}", other.requests());

    // One page is asked for: the link is returned as data, and still not followed.
    let (s, v) = env
        .call(
            &app,
            "search_patients",
            json!({ "params": { "_count": 5 } }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(next_link(&v["data"]).unwrap().starts_with(other.origin()));
    assert_eq!(other.request_count(), 0);
}

/// A searchset page whose `next` link is `next`, served as the upstream's answer.
fn page_with_next(next: &str) -> Fault {
    Fault::StatusBody(
        200,
        json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [
                { "relation": "self", "url": "Patient?_count=5" },
                { "relation": "next", "url": next }
            ],
            "entry": []
        }),
    )
}

async fn next_links_must_stay_under_the_fhir_base(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // Medplum: the FHIR base has a path (/fhir/R4/) on an origin that serves other things.
    // FakeFhir's own pages link origin-relative, so that they resolve against the Front.
    let env = install(
        &app,
        Via::MedplumClientCredentials,
        Via::MedplumClientCredentials
            .fhir()
            .seed_patients(12)
            .next_links(NextLinks::Relative),
    )
    .await;
    let origin = env._front.as_ref().unwrap().origin.clone();
    let host_port = origin.trim_start_matches("http://").to_owned();
    let search = json!({ "params": { "_count": 5 }, "max_pages": 3 });

    for hostile in [
        format!("{origin}/fhir/R4-other/Patient?_offset=5"),
        format!("{origin}/oauth2/token?_offset=5"),
        "/fhir/R4/../../oauth2/Patient?_offset=5".to_owned(),
        "../../admin/Patient".to_owned(),
        format!("http://user:pw@{host_port}/fhir/R4/Patient?_offset=5"),
        format!("https://{host_port}/fhir/R4/Patient?_offset=5"),
        "//127.0.0.2/fhir/R4/Patient?_offset=5".to_owned(),
    ] {
        let before = env.fhir.request_count();
        let tokens_before = env.oauth().token_request_count();
        env.fhir.fail_next(page_with_next(&hostile));
        let (s, v) = env.call(&app, "search_patients", search.clone()).await;
        assert_problem(s, &v, 502, "upstream_error");
        assert!(
            v["detail"].as_str().unwrap().contains("next-page link"),
            "{hostile}: {v}"
        );
        assert_eq!(
            env.fhir.request_count(),
            before + 1,
            "{hostile} was followed"
        );
        assert_eq!(
            env.oauth().token_request_count(),
            tokens_before,
            "{hostile}"
        );
    }

    // Relative to the base, and absolute under it: followed.
    for good in [
        "Patient?_count=5&_offset=5".to_owned(),
        format!("{origin}/fhir/R4/Patient?_count=5&_offset=5"),
    ] {
        env.fhir.reset();
        env.fhir.fail_next(page_with_next(&good));
        let (s, v) = env.call(&app, "search_patients", search.clone()).await;
        assert_eq!(s, StatusCode::OK, "{good}: {v}");
        assert_eq!(v["pages"], 3, "{good}");
        let want: Vec<String> = (6..=12).map(FakeFhir::patient_id).collect();
        assert_eq!(entry_ids(&v["data"]), want, "{good}");
        let reqs = env.fhir.requests();
        assert_eq!(reqs.len(), 3);
        assert_eq!(
            reqs[1].path_and_query,
            "/fhir/R4/Patient?_count=5&_offset=5"
        );
    }

    // A server pointing back at the page just fetched: paging stops instead of looping.
    env.fhir.reset();
    let again = format!("{origin}/fhir/R4/Patient?_count=5&_offset=5");
    env.fhir.fail_next(page_with_next(&again));
    env.fhir.fail_next(page_with_next(&again));
    let (s, v) = env.call(&app, "search_patients", search.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["pages"], 2);
    assert_eq!(env.fhir.request_count(), 2);

    // A next page that is not a Bundle.
    env.fhir.reset();
    env.fhir
        .fail_next(page_with_next("Patient?_count=5&_offset=5"));
    env.fhir.fail_next(Fault::StatusBody(
        200,
        env.fhir.patient("pat-0001").unwrap(),
    ));
    let (s, v) = env.call(&app, "search_patients", search).await;
    assert_problem(s, &v, 502, "upstream_error");
    assert_no_patient_data(&v, &env.fhir);
    assert_eq!(env.fhir.request_count(), 2);
}

// ---------------------------------------------------------------------------------------------
// 5. Error mapping
// ---------------------------------------------------------------------------------------------

/// Runs get_patient for pat-0001 with `fault` queued and returns the problem (asserting that
/// exactly one upstream request was made and no data came back).
async fn call_with_fault(app: &TestApp, env: &Env, fault: Fault) -> (StatusCode, Value) {
    let before = env.fhir.request_count();
    env.fhir.fail_next(fault);
    let (s, v) = env
        .call(
            app,
            "get_patient",
            json!({ "params": { "id": "pat-0001" } }),
        )
        .await;
    assert_eq!(env.fhir.request_count(), before + 1, "{v}");
    assert_eq!(env.fhir.pending_faults(), 0);
    assert!(v.get("data").is_none(), "{v}");
    assert_no_patient_data(&v, &env.fhir);
    (s, v)
}

async fn upstream_errors_are_mapped(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let env = install(&app, Via::Canvas, Via::Canvas.fhir().seed_patients(5)).await;

    // 404 from the EHR.
    let (s, v) = env.get_patient(&app, "pat-9999").await;
    assert_problem(s, &v, 404, "upstream_not_found");
    assert_eq!(v["issues"][0]["code"], "not-found", "{v}");
    assert_eq!(env.fhir.request_count(), 1);

    // OperationOutcome 400 and 422: upstream_rejected with the issues.
    let (s, v) = call_with_fault(
        &app,
        &env,
        Fault::StatusBody(
            400,
            fhir::operation_outcome("error", "invalid", "Invalid search parameter birthdate"),
        ),
    )
    .await;
    assert_problem(s, &v, 422, "upstream_rejected");
    assert_eq!(
        v["issues"],
        json!([{
            "severity": "error",
            "code": "invalid",
            "diagnostics": "Invalid search parameter birthdate",
            "details_text": "Invalid search parameter birthdate",
        }]),
        "{v}"
    );
    let (s, v) = call_with_fault(
        &app,
        &env,
        Fault::StatusBody(
            422,
            fhir::epic_operation_outcome(
                "fatal",
                "processing",
                "4100",
                "The resource request contained an invalid parameter",
            ),
        ),
    )
    .await;
    assert_problem(s, &v, 422, "upstream_rejected");
    assert_eq!(v["issues"][0]["severity"], "fatal");
    assert_eq!(v["issues"][0]["code"], "processing");
    assert_eq!(v["issues"][0]["details_code"], "4100");
    assert_eq!(
        v["issues"][0]["diagnostics"],
        "The resource request contained an invalid parameter"
    );
    assert!(v["detail"].as_str().unwrap().contains("422"), "{v}");

    // A 4xx whose body is patient data, not an OperationOutcome: nothing of it is shown.
    let p2 = env.fhir.patient("pat-0002").unwrap();
    let (s, v) = call_with_fault(&app, &env, Fault::StatusBody(400, p2.clone())).await;
    assert_problem(s, &v, 422, "upstream_rejected");
    assert!(v.get("issues").is_none(), "{v}");

    // 403, 5xx.
    let (s, v) = call_with_fault(
        &app,
        &env,
        Fault::StatusBody(
            403,
            fhir::operation_outcome("error", "forbidden", "Not authorized for Patient"),
        ),
    )
    .await;
    assert_problem(s, &v, 403, "upstream_forbidden");
    assert_eq!(v["issues"][0]["code"], "forbidden");
    let (s, v) = call_with_fault(&app, &env, Fault::Status(500)).await;
    assert_problem(s, &v, 502, "upstream_error");
    let (s, v) = call_with_fault(&app, &env, Fault::StatusBody(502, p2)).await;
    assert_problem(s, &v, 502, "upstream_error");

    // Bodies that are not JSON are refused and not echoed.
    let (s, v) = call_with_fault(&app, &env, Fault::NonJson).await;
    assert_problem(s, &v, 502, "upstream_error");
    let text = v.to_string().to_lowercase();
    assert!(!text.contains("sign in") && !text.contains("<html"), "{v}");
    let (s, v) = call_with_fault(&app, &env, Fault::TruncatedJson).await;
    assert_problem(s, &v, 502, "upstream_error").hides(&["fullUrl"]);

    // And the install still works.
    let (s, v) = env.get_patient(&app, "pat-0001").await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

async fn epic_search_too_broad_asks_to_narrow(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let env = install(
        &app,
        Via::Epic,
        Via::Epic.fhir().seed_patients(120).epic_mode(),
    )
    .await;
    // Every patient has an MRN: 120 matches, above Epic's 100.
    let (s, v) = env
        .call(
            &app,
            "search_patients",
            json!({ "params": { "identifier": "MRN|" } }),
        )
        .await;
    assert_problem(s, &v, 422, "search_too_broad");
    assert!(v["detail"].as_str().unwrap().contains("narrow"), "{v}");
    assert!(v.get("data").is_none());
    assert_no_patient_data(&v, &env.fhir);
    assert_eq!(env.fhir.request_count(), 1);
    // Narrowed, it works.
    let (s, v) = env
        .call(
            &app,
            "search_patients",
            json!({ "params": { "identifier": format!("MRN|{}", FakeFhir::patient_mrn(110)) } }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(entry_ids(&v["data"]), ["pat-0110"]);
    // No match: Epic's 200 with a 4101 warning is a result, not an error.
    let (s, v) = env
        .call(
            &app,
            "search_patients",
            json!({ "params": { "identifier": "MRN|999999999" } }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["total"], 0);
    assert_eq!(v["data"]["entry"][0]["search"]["mode"], "outcome");
    assert_eq!(
        v["data"]["entry"][0]["resource"]["issue"][0]["details"]["coding"][0]["code"],
        "4101"
    );
}

async fn throttling_honours_retry_after(backend: Backend) {
    // Test settings: max_retries 3, max_retry_wait_ms 3000.
    let app = TestApp::spawn(backend).await;
    let env = install(&app, Via::Canvas, Via::Canvas.fhir().seed_patients(2)).await;
    let get = || env.get_patient(&app, "pat-0001");

    // 429 with Retry-After in seconds, then success: two upstream calls, the wait honoured.
    env.fhir.fail_next(Fault::TooManyRequests {
        retry_after: Some(RetryAfter::Seconds(1)),
    });
    let started = Instant::now();
    let (s, v) = get().await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["id"], "pat-0001");
    assert_eq!(env.fhir.request_count(), 2);
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );

    // 503 with Retry-After as an HTTP-date (whole seconds: at least ~1 s ahead).
    env.fhir.fail_next(Fault::Unavailable503 {
        retry_after: Some(RetryAfter::HttpDate(
            SystemTime::now() + Duration::from_secs(2),
        )),
    });
    let started = Instant::now();
    let (s, v) = get().await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(env.fhir.request_count(), 4);
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );

    // Persistently unavailable, asking for longer than max_retry_wait: not waited for, the
    // caller gets the upstream's Retry-After.
    env.fhir.fail_next_n(
        4,
        Fault::Unavailable503 {
            retry_after: Some(RetryAfter::Seconds(120)),
        },
    );
    let started = Instant::now();
    let resp = app
        .http
        .post(app.url(&env.method_path("get_patient")))
        .bearer_auth(&app.api_key)
        .json(&json!({ "params": { "id": "pat-0001" } }))
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(resp.headers()["retry-after"], "120");
    let s = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert_problem(s, &v, 503, "upstream_unavailable");
    assert_eq!(v["retry_after"], 120);
    assert_eq!(env.fhir.request_count(), 5);
    env.fhir.reset();

    // The same with an HTTP-date.
    env.fhir.fail_next(Fault::Unavailable503 {
        retry_after: Some(RetryAfter::HttpDate(
            SystemTime::now() + Duration::from_secs(120),
        )),
    });
    let (s, v) = get().await;
    assert_problem(s, &v, 503, "upstream_unavailable");
    let secs = v["retry_after"].as_u64().unwrap();
    assert!((100..=120).contains(&secs), "{v}");
    assert_eq!(env.fhir.request_count(), 1);

    // Persistent 429 without Retry-After: max_retries + 1 attempts, then 503 with a hint.
    env.fhir
        .fail_next_n(4, Fault::TooManyRequests { retry_after: None });
    let (s, v) = get().await;
    assert_problem(s, &v, 503, "upstream_unavailable");
    assert!(v["retry_after"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(env.fhir.request_count(), 5);
    assert_eq!(env.fhir.pending_faults(), 0);
    assert_no_patient_data(&v, &env.fhir);
}

async fn timeouts_and_oversized_responses(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.upstream.request_timeout_ms = 500;
        s.upstream.max_response_bytes = 64 * 1024;
    })
    .await;
    let env = install(&app, Via::Canvas, Via::Canvas.fhir().seed_patients(2)).await;

    let started = Instant::now();
    let (s, v) = call_with_fault(&app, &env, Fault::Delay(Duration::from_secs(3))).await;
    assert_problem(s, &v, 504, "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );

    let (s, v) = call_with_fault(&app, &env, Fault::Huge(200_000)).await;
    assert_problem(s, &v, 502, "upstream_response_too_large");
    let (s, v) = call_with_fault(&app, &env, Fault::HugeChunked(200_000)).await;
    assert_problem(s, &v, 502, "upstream_response_too_large").hides(&["xxxxxxxx"]);

    // Within the limits everything is fine.
    let (s, v) = env.get_patient(&app, "pat-0002").await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

async fn install_and_method_lookup_errors(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    // A pending (not yet authorized) Epic install.
    let (pending, created) =
        create_install(&app, Via::Epic, Via::Epic.fhir().seed_patients(2)).await;
    assert_eq!(created["status"], "pending_authorization");
    let (s, v) = pending.get_patient(&app, "pat-0001").await;
    assert_problem(s, &v, 409, "install_not_authorized");
    assert_eq!(v["install_status"], "pending_authorization", "{v}");
    assert_eq!(pending.fhir.request_count(), 0);
    // Once the user consents, the very next call works (nothing stale is cached).
    complete_authorization(&app, created["authorize_url"].as_str().unwrap()).await;
    let (s, v) = pending.get_patient(&app, "pat-0001").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(pending.fhir.request_count(), 1);

    let env = install(&app, Via::Canvas, Via::Canvas.fhir().seed_patients(2)).await;
    let body = json!({ "params": { "id": "pat-0001" } });

    // Unknown method.
    let (s, v) = env.call(&app, "delete_patient", body.clone()).await;
    assert_problem(s, &v, 404, "unknown_method");

    // Unknown install; the install under another account of the same tenant.
    let (s, v) = app
        .post(
            &format!(
                "/v1/accounts/{}/installs/ins_doesnotexist/methods/get_patient",
                env.account
            ),
            body.clone(),
        )
        .await;
    assert_problem(s, &v, 404, "not_found");
    let (s, v) = app
        .post(
            &format!(
                "/v1/accounts/{}/installs/{}/methods/get_patient",
                pending.account, env.install
            ),
            body.clone(),
        )
        .await;
    assert_problem(s, &v, 404, "not_found");

    // Another tenant: 404 with the real path, and with an account of the same name.
    let (_, other_key) = app.new_tenant("Other Console").await;
    let (s, v) = app
        .call_as(
            &other_key,
            reqwest::Method::POST,
            &env.method_path("get_patient"),
            Some(body.clone()),
        )
        .await;
    assert_problem(s, &v, 404, "not_found");
    let (s, v) = app
        .call_as(
            &other_key,
            reqwest::Method::POST,
            "/v1/accounts",
            Some(json!({ "id": env.account, "name": "Same name" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = app
        .call_as(
            &other_key,
            reqwest::Method::POST,
            &env.method_path("get_patient"),
            Some(body.clone()),
        )
        .await;
    assert_problem(s, &v, 404, "not_found");
    assert_eq!(env.fhir.request_count(), 0);

    // The owner still gets the patient.
    let (s, v) = env.call(&app, "get_patient", body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(env.fhir.request_count(), 1);
}

// ---------------------------------------------------------------------------------------------
// 6. 401 -> refresh once -> retry
// ---------------------------------------------------------------------------------------------

async fn expired_access_token_is_refreshed_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let env = install(&app, Via::Epic, Via::Epic.fhir().seed_patients(3)).await;
    let body = json!({ "params": { "id": "pat-0002" } });

    let (s, v) = env.call(&app, "get_patient", body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let old = env.last_bearer();
    let (version, stored, refresh_before) = stored_tokens(&app, &env.install).await;
    assert_eq!(stored.as_deref(), Some(old.as_str()));

    // The EHR now refuses the token (it expired early, as Epic's may).
    env.oauth().expire_access_tokens();
    let (s, v) = env.call(&app, "get_patient", body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"], env.fhir.patient("pat-0002").unwrap());
    assert_eq!(env.oauth().refresh_request_count(), 1);
    let reqs = env.fhir.requests();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert_eq!(reqs[1].bearer(), Some(old.as_str()));
    let new = reqs[2].bearer().unwrap().to_owned();
    assert_ne!(new, old);
    assert!(env.oauth().is_access_token_valid(&new));

    // The database holds the new token, fenced by a new version; Epic's refresh token is kept.
    let (version_after, stored, refresh_after) = stored_tokens(&app, &env.install).await;
    assert_eq!(version_after, version + 1);
    assert_eq!(stored.as_deref(), Some(new.as_str()));
    assert!(refresh_before.is_some());
    assert_eq!(refresh_after, refresh_before);

    // Later calls use it without refreshing again.
    let (s, v) = env.call(&app, "get_patient", body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(env.last_bearer(), new);
    assert_eq!(env.oauth().refresh_request_count(), 1);

    // Several calls hit the 401 at once: still one refresh, and every call succeeds.
    env.oauth().expire_access_tokens();
    let calls = (0..5).map(|_| env.call(&app, "get_patient", body.clone()));
    for (s, v) in futures_util::future::join_all(calls).await {
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    assert_eq!(env.oauth().refresh_request_count(), 2);
    let (version_concurrent, stored, _) = stored_tokens(&app, &env.install).await;
    assert_eq!(version_concurrent, version_after + 1);
    assert_eq!(stored.as_deref(), Some(env.last_bearer().as_str()));

    // The EHR refuses the token while its token endpoint is down: 503 to retry later (never a
    // request to re-authorize), and the refused token is not sent again.
    env.oauth().expire_access_tokens();
    env.oauth().fail_token_next(1, TokenFault::Status503);
    let upstream_calls = env.fhir.request_count();
    let (s, v) = env.call(&app, "get_patient", body.clone()).await;
    assert_problem(s, &v, 503, "upstream_unavailable");
    assert!(v["retry_after"].as_u64().is_some_and(|n| n >= 1), "{v}");
    assert_eq!(env.oauth().refresh_request_count(), 3);
    assert_eq!(env.fhir.request_count(), upstream_calls + 1);
    let install_path = format!("/v1/accounts/{}/installs/{}", env.account, env.install);
    let (_, installed) = app.get(&install_path).await;
    assert_eq!(installed["status"], "authorized", "{installed}");
    // Once it is back, the next call refreshes and succeeds.
    let (s, v) = env.call(&app, "get_patient", body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(env.oauth().refresh_request_count(), 4);

    // The refresh token is refused (revoked at the EHR): the install needs re-authorization,
    // and says so without calling anyone again.
    env.oauth().expire_access_tokens();
    env.oauth().fail_token_next(1, TokenFault::InvalidGrant);
    let (s, v) = env.call(&app, "get_patient", body.clone()).await;
    assert_problem(s, &v, 409, "install_not_authorized");
    assert_eq!(v["install_status"], "needs_reauthorization", "{v}");
    assert_no_patient_data(&v, &env.fhir);
    assert_eq!(env.oauth().refresh_request_count(), 5);
    let (_, installed) = app.get(&install_path).await;
    assert_eq!(installed["status"], "needs_reauthorization", "{installed}");
    let upstream_calls = env.fhir.request_count();
    let (s, v) = env.call(&app, "get_patient", body.clone()).await;
    assert_problem(s, &v, 409, "install_not_authorized");
    assert_eq!(v["install_status"], "needs_reauthorization");
    assert!(v["detail"].as_str().unwrap().contains("/authorize"), "{v}");
    assert_eq!(env.fhir.request_count(), upstream_calls);
    assert_eq!(env.oauth().refresh_request_count(), 5);

    // Re-authorized, the install works again at once.
    let (s, v) = app
        .post(&format!("{install_path}/authorize"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    complete_authorization(&app, v["authorize_url"].as_str().unwrap()).await;
    let (s, v) = env.call(&app, "get_patient", body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, stored, _) = stored_tokens(&app, &env.install).await;
    assert_eq!(stored.as_deref(), Some(env.last_bearer().as_str()));
}

async fn one_off_401_refreshes_and_static_tokens_do_not(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let env = install(
        &app,
        Via::CanvasOAuth,
        Via::CanvasOAuth.fhir().seed_patients(3),
    )
    .await;
    let body = json!({ "params": { "id": "pat-0003" } });
    let (version, access, refresh) = stored_tokens(&app, &env.install).await;
    let (access, refresh) = (access.unwrap(), refresh.unwrap());

    // One 401 (even with a good token): one refresh, one retry, success.
    env.fhir.fail_next(Fault::Unauthorized401);
    let (s, v) = env.call(&app, "get_patient", body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(env.oauth().refresh_request_count(), 1);
    assert_eq!(env.oauth().refresh_tokens_seen(), vec![refresh.clone()]);
    let reqs = env.fhir.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].bearer(), Some(access.as_str()));
    // Canvas rotates refresh tokens: the new pair is what the database holds.
    let (version_after, access_after, refresh_after) = stored_tokens(&app, &env.install).await;
    assert_eq!(version_after, version + 1);
    assert_eq!(access_after.as_deref(), reqs[1].bearer());
    let refresh_after = refresh_after.unwrap();
    assert_ne!(refresh_after, refresh);
    assert!(env.oauth().is_refresh_token_valid(&refresh_after));

    // Still 401 after the refresh: exactly one refresh, then install_not_authorized.
    env.fhir.fail_next_n(2, Fault::Unauthorized401);
    let (s, v) = env.call(&app, "get_patient", body.clone()).await;
    assert_problem(s, &v, 409, "install_not_authorized");
    assert_eq!(env.oauth().refresh_request_count(), 2);
    assert_eq!(env.fhir.request_count(), 4);
    let (s, v) = env.call(&app, "get_patient", body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(env.oauth().refresh_request_count(), 2);

    // A static bearer token cannot be refreshed: 409 at once, one upstream call.
    let canvas = install(&app, Via::Canvas, Via::Canvas.fhir().seed_patients(3)).await;
    canvas.fhir.revoke_token(CANVAS_TOKEN);
    let (s, v) = canvas.call(&app, "get_patient", body.clone()).await;
    assert_problem(s, &v, 409, "install_not_authorized");
    assert_eq!(canvas.fhir.request_count(), 1);
    assert_no_patient_data(&v, &canvas.fhir);
    assert_eq!(env.oauth().refresh_request_count(), 2);

    // Client credentials "refresh" by asking for a new token (no refresh_token grant).
    let machine = install(
        &app,
        Via::MedplumClientCredentials,
        Via::MedplumClientCredentials.fhir().seed_patients(3),
    )
    .await;
    let (version, old, _) = stored_tokens(&app, &machine.install).await;
    let token_requests = machine.oauth().token_request_count();
    machine.oauth().expire_access_tokens();
    let (s, v) = machine.call(&app, "get_patient", body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(machine.oauth().token_request_count(), token_requests + 1);
    assert_eq!(machine.oauth().refresh_request_count(), 0);
    let reqs = machine.fhir.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].bearer(), old.as_deref());
    let (version_after, new, _) = stored_tokens(&app, &machine.install).await;
    assert_eq!(version_after, version + 1);
    assert_eq!(new.as_deref(), reqs[1].bearer());
    assert_ne!(new, old);
}

// ---------------------------------------------------------------------------------------------
// 7. Upstream bodies stay out of logs and error bodies
// ---------------------------------------------------------------------------------------------

async fn upstream_bodies_stay_out_of_logs_and_errors(backend: Backend) {
    let logs = log_capture();
    let app = TestApp::spawn(backend).await;
    let env = install(
        &app,
        Via::CanvasOAuth,
        Via::CanvasOAuth.fhir().seed_patients(2),
    )
    .await;
    let sentinel = format!("Zqxwyv{}", env.install.replace(['_', '-'], ""));
    let mut patient = env.fhir.patient("pat-0001").unwrap();
    patient["name"][0]["family"] = json!(sentinel);
    patient["name"][0]["text"] = json!(format!("Ann {sentinel}"));
    env.fhir.add_patient(patient.clone());
    let body = json!({ "params": { "id": "pat-0001" } });

    // Asked for: the data is returned.
    let (s, v) = env.call(&app, "get_patient", body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"], patient);

    // Failures carrying patient data: none of it is shown.
    let bundle = json!({
        "resourceType": "Bundle", "type": "searchset", "total": 1,
        "entry": [{ "resource": patient }]
    });
    for fault in [
        Fault::StatusBody(400, patient.clone()),
        Fault::StatusBody(404, patient.clone()),
        Fault::StatusBody(409, bundle.clone()),
        Fault::StatusBody(403, bundle.clone()),
        Fault::StatusBody(500, bundle.clone()),
        Fault::NonJson,
    ] {
        let (s, v) = call_with_fault(&app, &env, fault.clone()).await;
        assert!(s.is_client_error() || s.is_server_error(), "{fault:?}: {v}");
        assert!(!v.to_string().contains(&sentinel), "{fault:?}: {v}");
    }
    // A 401 answered with patient data, then the retry after the refresh.
    env.fhir.fail_next(Fault::Unauthorized401);
    let (s, v) = env.call(&app, "get_patient", body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Paging through bundles with the patient.
    let (s, v) = env
        .call(
            &app,
            "search_patients",
            json!({ "params": { "_count": 1 }, "max_pages": 2 }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["pages"], 2);

    let text = logs.text();
    // The capture is live: the refresh above was logged with this install's id.
    assert!(
        text.contains(&env.install),
        "no log line names {}; captured: {} bytes",
        env.install,
        text.len()
    );
    assert!(!text.contains(&sentinel), "patient data in the logs");
    assert!(
        !text.contains("Please sign in"),
        "upstream HTML in the logs"
    );
    let (_, access, refresh) = stored_tokens(&app, &env.install).await;
    assert!(!text.contains(&access.unwrap()), "access token in the logs");
    assert!(
        !text.contains(&refresh.unwrap()),
        "refresh token in the logs"
    );
}

// ---------------------------------------------------------------------------------------------
// Static connector headers
// ---------------------------------------------------------------------------------------------

/// A copy of the shipped connectors where Canvas declares static headers: one rendered from the
/// tenant's setup, and its own `Accept` (which replaces the engine's default).
fn connectors_with_canvas_headers(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("connectors-headers");
    std::fs::create_dir_all(&out).unwrap();
    let shipped = crate::support::repo_root().join("connectors");
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let entry = entry.unwrap();
        crate::support::copy_entry(&entry.path(), &out.join(entry.file_name())).unwrap();
    }
    let canvas = std::fs::read_to_string(shipped.join("canvas.toml")).unwrap();
    let base = "fhir_base = \"{{settings.fhir_base_url}}\"\n";
    assert!(canvas.contains(base), "canvas.toml's fhir_base changed");
    let headers = "headers = { X-Client-Id = \"app:{{settings.client_id}}\", Accept = \"application/json\" }\n";
    std::fs::write(
        out.join("canvas.toml"),
        canvas.replacen(base, &format!("{base}{headers}"), 1),
    )
    .unwrap();
    out
}

async fn connector_headers_are_rendered_from_settings(backend: Backend) {
    let scratch = tempfile::tempdir().unwrap();
    let connectors = connectors_with_canvas_headers(scratch.path());
    let app = TestApp::spawn_with(backend, |s| s.connectors.dir = connectors).await;
    let canvas = install(&app, Via::Canvas, Via::Canvas.fhir().seed_patients(2)).await;

    // The setting the header is rendered from is the one stored with the tenant's setup.
    let (s, setup) = app.get("/v1/connectors/canvas/setup").await;
    assert_eq!(s, StatusCode::OK, "{setup}");
    assert_eq!(setup["settings"]["client_id"], CLIENT_ID, "{setup}");

    let (s, v) = canvas.get_patient(&app, "pat-0002").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"], canvas.fhir.patient("pat-0002").unwrap());
    let r = canvas.fhir.last_request().unwrap();
    assert_eq!(r.path_and_query, "/Patient/pat-0002");
    let expected = format!("app:{CLIENT_ID}");
    assert_eq!(r.header("x-client-id"), Some(expected.as_str()));
    let accepts: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k == "accept")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(accepts, ["application/json"], "the connector's Accept only");
    assert_eq!(r.bearer(), Some(CANVAS_TOKEN));
}

crate::both_backends! {
    every_connector_gets_and_searches_patients => every_connector_reads_and_searches;
    invalid_params_are_422_without_upstream_calls => invalid_params_never_reach_the_ehr;
    path_injection_stays_in_one_segment => path_parameters_stay_one_segment;
    paging_relative_absolute_and_capped => paging_follows_relative_and_absolute_next_links;
    foreign_next_link_not_followed => next_link_to_another_origin_is_never_followed;
    next_links_outside_the_base_refused => next_links_must_stay_under_the_fhir_base;
    upstream_error_mapping => upstream_errors_are_mapped;
    epic_too_broad_search => epic_search_too_broad_asks_to_narrow;
    throttling_retry_after => throttling_honours_retry_after;
    timeout_and_oversize => timeouts_and_oversized_responses;
    lookup_errors => install_and_method_lookup_errors;
    refresh_on_expired_token => expired_access_token_is_refreshed_once;
    refresh_on_401_and_static_bearer => one_off_401_refreshes_and_static_tokens_do_not;
    no_upstream_bodies_in_logs_or_errors => upstream_bodies_stay_out_of_logs_and_errors;
    static_connector_headers => connector_headers_are_rendered_from_settings;
}
