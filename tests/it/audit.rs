//! The PHI audit trail end to end: one record per method call (whatever its outcome) written by
//! the background writer, the patient only as a per-tenant keyed hash, no parameter value in
//! the database, tenant scope, and retention.

use std::collections::BTreeMap;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::json;
use switchboard_db::repo::audit::AuditFilter;
use switchboard_db::{repo, AuditEvent};
use switchboard_testkit::fhir::FakeFhir;

use crate::methods::{install, Via};
use crate::support::{assert_problem, req_as, Backend, TestApp};
use crate::token_lifecycle::{free_port, ChildServer};
use reqwest::Method;
use std::time::{Duration, Instant};
use switchboard_testkit::fhir::{operation_outcome, Fault};

crate::both_backends! {
    thousand_concurrent_calls => a_thousand_concurrent_calls_leave_a_thousand_records;
    no_parameter_values => audit_rows_hold_no_parameter_values;
    purge_by_age => purge_removes_only_rows_past_retention;
    audit_api => get_audit_filters_pages_and_stays_in_the_tenant;
    admin_changes => administrative_changes_are_recorded;
    upstream_status_of_errors => failed_calls_record_the_ehrs_status_and_no_body;
    callback_record => callback_record_names_its_request_and_the_key_that_started_it;
    shutdown_grace => shutdown_grace_is_configuration;
    write_patient_hash => writes_hash_the_patient_their_body_is_about;
}

/// Every record of the tenant, oldest first.
async fn trail(app: &TestApp, tenant: &str) -> Vec<AuditEvent> {
    app.services.audit.flush().await;
    let tenant = tenant.to_owned();
    app.db(move |c| {
        let mut rows = Vec::new();
        let mut after = None;
        loop {
            let page =
                repo::audit::list_page(c, &tenant, &AuditFilter::default(), after.as_ref(), 500)?;
            rows.extend(page.rows);
            match page.next {
                Some(n) => after = Some(n),
                None => return Ok(rows),
            }
        }
    })
    .await
}

/// The tenant's method-call records (setting up an install leaves admin records too).
async fn calls(app: &TestApp, tenant: &str) -> Vec<AuditEvent> {
    let mut rows = trail(app, tenant).await;
    rows.retain(|r| r.kind == "method_call");
    rows
}

async fn a_thousand_concurrent_calls_leave_a_thousand_records(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let env = install(&app, Via::Canvas, Via::Canvas.fhir().seed_patients(3)).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(100)
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .unwrap();
    let url = app.url(&format!(
        "/v1/accounts/{}/installs/{}/methods/get_patient",
        env.account, env.install
    ));
    // Every tenth call asks for a patient the EHR does not have (an upstream error).
    let answers = join_all((0..1_000).map(|i| {
        let id = if i % 10 == 0 {
            "pat-missing".to_owned()
        } else {
            FakeFhir::patient_id(1 + i % 3)
        };
        let req = client
            .post(&url)
            .bearer_auth(&app.api_key)
            .header("X-Request-Id", format!("burst-{i}"))
            .json(&json!({"params": {"id": id}}));
        async move { req.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    }))
    .await;
    let mut by_status: BTreeMap<i64, usize> = BTreeMap::new();
    for s in &answers {
        *by_status.entry(i64::from(*s)).or_default() += 1;
    }
    assert_eq!(by_status.get(&200), Some(&900), "{by_status:?}");

    let rows = calls(&app, &app.tenant).await;
    assert_eq!(rows.len(), 1_000);
    let mut recorded: BTreeMap<i64, usize> = BTreeMap::new();
    for r in &rows {
        *recorded.entry(r.status).or_default() += 1;
        assert_eq!(r.kind, "method_call");
        assert_eq!(r.action, "get_patient");
        assert_eq!(r.install_id.as_deref(), Some(env.install.as_str()));
        assert_eq!(r.account_id.as_deref(), Some(env.account.as_str()));
        assert_eq!(r.connector_id.as_deref(), Some("canvas"));
        assert!(r.api_key_id.is_some());
        assert!(r.request_id.as_deref().unwrap().starts_with("burst-"));
        assert_eq!(r.patient_hash.as_deref().map(str::len), Some(64));
        if r.status == 200 {
            assert_eq!(r.upstream_status, Some(200));
            assert!(r.code.is_none());
        } else {
            assert!(r.code.is_some(), "{r:?}");
        }
    }
    assert_eq!(
        recorded, by_status,
        "one record per call, with the caller's status"
    );
    let request_ids: std::collections::BTreeSet<_> =
        rows.iter().map(|r| r.request_id.clone()).collect();
    assert_eq!(request_ids.len(), 1_000);
    // The same patient hashes the same way; different patients differently.
    let hashes: std::collections::BTreeSet<_> =
        rows.iter().map(|r| r.patient_hash.clone()).collect();
    assert_eq!(hashes.len(), 4);
}

async fn audit_rows_hold_no_parameter_values(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let env = install(&app, Via::Canvas, Via::Canvas.fhir().seed_patients(3)).await;
    let patient = "pat-Zq7xAuditSecret";
    let family = "Vanterpoolaudit";
    let (s, _) = env
        .call(&app, "get_patient", json!({"params": {"id": patient}}))
        .await;
    assert!(s.is_client_error() || s.is_server_error(), "{s}");
    let (s, v) = env
        .call(
            &app,
            "search_patients",
            json!({"params": {"family": family}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let rows = calls(&app, &app.tenant).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let by = |action: &str| rows.iter().find(|r| r.action == action).unwrap().clone();
    assert_eq!(
        by("search_patients").patient_hash,
        None,
        "no patient parameter"
    );
    let hash = by("get_patient").patient_hash.expect("the patient, hashed");
    assert_eq!(
        app.services
            .audit
            .patient_hash(&app.tenant, patient)
            .await
            .unwrap(),
        hash
    );
    let (other, _) = app.new_tenant("Other").await;
    assert_ne!(
        app.services
            .audit
            .patient_hash(&other, patient)
            .await
            .unwrap(),
        hash,
        "the key is per tenant"
    );
    let others = trail(&app, &other).await;
    assert!(
        others.len() == 1 && others[0].action.starts_with("api_key.created:"),
        "tenant scope: only the other tenant's own first key: {others:?}"
    );

    let dump = app.dump_database();
    assert!(dump.contains(&hash), "the dump holds the audit rows");
    assert!(!dump.contains(patient), "the patient id is stored nowhere");
    assert!(!dump.contains(family), "no search value is stored");
}

async fn purge_removes_only_rows_past_retention(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| s.audit.retention_days = 1).await;
    let env = install(&app, Via::Canvas, Via::Canvas.fhir().seed_patients(1)).await;
    let (s, _) = env
        .call(
            &app,
            "get_patient",
            json!({"params": {"id": FakeFhir::patient_id(1)}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let rows = trail(&app, &app.tenant).await;
    assert_eq!(rows.len(), 4, "first key, setup, install, call: {rows:?}");
    let last = rows.iter().map(|r| r.at).max().unwrap();
    let first = rows.iter().map(|r| r.at).min().unwrap();
    let day = 86_400_000;
    // Exactly at the retention: kept; one millisecond past it: purged.
    assert_eq!(app.services.audit.purge(first + day).await.unwrap(), 0);
    assert_eq!(trail(&app, &app.tenant).await.len(), 4);
    let older = rows.iter().filter(|r| r.at < last).count();
    assert_eq!(app.services.audit.purge(last + day).await.unwrap(), older);
    assert_eq!(
        app.services.audit.purge(last + day + 1).await.unwrap(),
        4 - older
    );
    assert!(trail(&app, &app.tenant).await.is_empty());
}

async fn get_audit_filters_pages_and_stays_in_the_tenant(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let env = install(&app, Via::Canvas, Via::Canvas.fhir().seed_patients(3)).await;
    let (p1, p2) = (FakeFhir::patient_id(1), FakeFhir::patient_id(2));
    for id in [&p1, &p2, &p1, &"pat-Missing9q".to_owned()] {
        env.call(&app, "get_patient", json!({"params": {"id": id}}))
            .await;
    }
    env.call(
        &app,
        "search_patients",
        json!({"params": {"family": "Qwertyfam"}}),
    )
    .await;
    app.services.audit.flush().await;
    let get = |key: String, query: String| {
        let app = &app;
        async move {
            let r = req_as(app, &key, Method::GET, &format!("/v1/audit{query}"), None).await;
            assert_eq!(r.status, StatusCode::OK, "{query}: {}", r.text);
            r
        }
    };
    let key = app.api_key.clone();
    let all = get(key.clone(), String::new()).await;
    let everything = all.json["events"].as_array().unwrap();
    assert_eq!(
        everything.len(),
        8,
        "the first key, setup, install and 5 calls: {}",
        all.text
    );
    let events: Vec<_> = everything
        .iter()
        .filter(|e| e["kind"] == "method_call")
        .collect();
    assert_eq!(events.len(), 5, "{}", all.text);
    let actions = events
        .iter()
        .filter(|e| e["action"] == "get_patient")
        .count();
    assert_eq!(actions, 4);
    assert!(events
        .iter()
        .all(|e| e["install_id"] == env.install.as_str()));
    assert!(all.json["next_cursor"].is_null());
    for secret in [p1.as_str(), p2.as_str(), "pat-Missing9q", "Qwertyfam"] {
        assert!(!all.text.contains(secret), "{secret} in {}", all.text);
    }

    // The patient filter: hashed server-side, finds exactly the calls about that patient.
    let about_p1 = get(key.clone(), format!("?patient={p1}")).await;
    assert_eq!(about_p1.json["events"].as_array().unwrap().len(), 2);
    let ok = get(key.clone(), "?outcome=ok&method=get_patient".into()).await;
    assert_eq!(ok.json["events"].as_array().unwrap().len(), 3);
    let errors = get(key.clone(), "?outcome=error".into()).await;
    assert_eq!(errors.json["events"].as_array().unwrap().len(), 1);
    let first_at = everything[0]["at"].as_str().unwrap().to_owned();
    let after_first = get(
        key.clone(),
        format!("?from=2000-01-01T00:00:00Z&install={}", env.install),
    )
    .await;
    assert_eq!(
        after_first.json["events"].as_array().unwrap().len(),
        6,
        "the install's records"
    );
    let before_all = get(
        key.clone(),
        format!(
            "?to={}",
            switchboard_core::rfc3339_to_ms(&first_at).unwrap()
        ),
    )
    .await;
    assert!(before_all.json["events"].as_array().unwrap().is_empty());

    // Keyset paging with a bound cursor.
    let page1 = get(key.clone(), "?limit=2".into()).await;
    let cursor = page1.json["next_cursor"].as_str().unwrap().to_owned();
    let page2 = get(key.clone(), format!("?limit=2&cursor={cursor}")).await;
    let ids = |r: &crate::support::Resp| -> Vec<String> {
        r.json["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all_ids = ids(&all);
    assert_eq!([ids(&page1), ids(&page2)].concat(), all_ids[..4]);
    let r = req_as(
        &app,
        &key,
        Method::GET,
        &format!("/v1/audit?limit=2&outcome=ok&cursor={cursor}"),
        None,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "a cursor of other filters"
    );
    let r = req_as(&app, &key, Method::GET, "/v1/audit?from=yesterday", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Another tenant sees none of it, even with the same filters; writes are not routes.
    let (_, key_b) = app.new_tenant("Other").await;
    let b = get(key_b.clone(), String::new()).await;
    let b_events = b.json["events"].as_array().unwrap();
    assert!(
        b_events.len() == 1
            && b_events[0]["action"]
                .as_str()
                .unwrap()
                .starts_with("api_key.created:"),
        "only the other tenant's own first key: {}",
        b.text
    );
    let b = get(
        key_b.clone(),
        format!("?patient={p1}&install={}", env.install),
    )
    .await;
    assert!(b.json["events"].as_array().unwrap().is_empty());
    let r = req_as(&app, &key, Method::POST, "/v1/audit", Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let r = req_as(&app, &key, Method::DELETE, "/v1/audit", None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

async fn administrative_changes_are_recorded(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // A setup, an install (a static bearer one: created authorized), its deletion, the setup's
    // deletion, and an API key created and revoked.
    crate::support::canvas_bearer_setup(&app, "tok-audit-admin-1234").await;
    app.create_account("acme").await;
    let created = crate::support::create_bearer_install(&app, &app.api_key, "acme").await;
    let install = created["id"].as_str().unwrap().to_owned();
    let (s, _) = app
        .delete(&format!("/v1/accounts/acme/installs/{install}"))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.delete("/v1/connectors/canvas/setup").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, key) = app.post("/v1/api-keys", json!({"name": "second"})).await;
    assert_eq!(s, StatusCode::CREATED);
    let key_id = key["id"].as_str().unwrap().to_owned();
    let (s, _) = app.delete(&format!("/v1/api-keys/{key_id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    let rows = trail(&app, &app.tenant).await;
    // The tenant's first key was recorded with the tenant (no API key, no request made it).
    let (first, rows): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .partition(|r| r.api_key_id.is_none() && r.action.starts_with("api_key.created:"));
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].request_id.is_none());
    // Records of one millisecond are ordered by id: compare as sets.
    let mut got: Vec<(String, String, i64)> = rows
        .iter()
        .map(|r| (r.kind.clone(), r.action.clone(), r.status))
        .collect();
    let want = [
        ("admin", "setup.saved".to_owned(), 200),
        ("admin", "install.created".to_owned(), 201),
        ("admin", "install.deleted".to_owned(), 204),
        ("admin", "setup.deleted".to_owned(), 204),
        ("admin", format!("api_key.created:{key_id}"), 201),
        ("admin", format!("api_key.revoked:{key_id}"), 204),
    ]
    .map(|(k, a, s)| (k.to_owned(), a, s));
    let mut want = want.to_vec();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    let created = rows.iter().find(|r| r.action == "install.created").unwrap();
    assert_eq!(created.install_id.as_deref(), Some(install.as_str()));
    assert_eq!(created.account_id.as_deref(), Some("acme"));
    let saved = rows.iter().find(|r| r.action == "setup.saved").unwrap();
    assert_eq!(saved.connector_id.as_deref(), Some("canvas"));
    assert!(rows
        .iter()
        .all(|r| r.api_key_id.is_some() && r.request_id.is_some()));
    assert!(
        !app.dump_database().contains("tok-audit-admin-1234"),
        "the setup's secret is sealed, and not in the trail"
    );
}

/// A fault to inject (none: a normal answer), the patient id (empty: a seeded one), then the
/// caller's status and code, and the upstream status its record must hold.
type Case = (Option<Fault>, &'static str, u16, &'static str, Option<i64>);

/// A call the EHR answers with an error records the EHR's status next to the caller's status
/// and code; a call that never reached the EHR records none; no upstream body is stored.
async fn failed_calls_record_the_ehrs_status_and_no_body(backend: Backend) {
    // No retries: each injected fault is the one answer of its call.
    let app = TestApp::spawn_with(backend, |s| s.upstream.max_retries = 0).await;
    let env = install(&app, Via::Canvas, Via::Canvas.fhir().seed_patients(1)).await;
    let diagnostics = "Qzvbody-diagnostics-7731";
    let cases: [Case; 6] = [
        (None, "pat-Absent42", 404, "upstream_not_found", Some(404)),
        (
            Some(Fault::StatusBody(
                500,
                operation_outcome("error", "exception", diagnostics),
            )),
            "",
            502,
            "upstream_error",
            Some(500),
        ),
        (
            Some(Fault::Unavailable503 { retry_after: None }),
            "",
            503,
            "upstream_unavailable",
            Some(503),
        ),
        (
            Some(Fault::StatusBody(
                422,
                operation_outcome("error", "processing", diagnostics),
            )),
            "",
            422,
            "upstream_rejected",
            Some(422),
        ),
        (
            Some(Fault::Status(403)),
            "",
            403,
            "upstream_forbidden",
            Some(403),
        ),
        (Some(Fault::NonJson), "", 502, "upstream_error", Some(200)),
    ];
    let url = app.url(&format!(
        "/v1/accounts/{}/installs/{}/methods/",
        env.account, env.install
    ));
    // Records of one millisecond are ordered by id: each call is found by its request id.
    let send = |method: &str, id: String, request_id: String| {
        app.http
            .post(format!("{url}{method}"))
            .bearer_auth(&app.api_key)
            .header("X-Request-Id", request_id)
            .json(&json!({"params": {"id": id}}))
            .send()
    };
    for (i, (fault, id, status, code, _)) in cases.iter().enumerate() {
        if let Some(f) = fault {
            env.fhir.fail_next(f.clone());
        }
        let id = if id.is_empty() {
            FakeFhir::patient_id(1)
        } else {
            (*id).to_owned()
        };
        let resp = send("get_patient", id, format!("case-{i}")).await.unwrap();
        let got = resp.status();
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_problem(got, &v, *status, code);
        assert_eq!(env.fhir.pending_faults(), 0, "case {i}");
    }
    // Never sent: an unknown method (Switchboard answers, the EHR is not asked).
    let resp = send(
        "no_such_method",
        FakeFhir::patient_id(1),
        "case-unknown".into(),
    )
    .await
    .unwrap();
    let got = resp.status();
    assert_problem(got, &resp.json().await.unwrap(), 404, "unknown_method");

    let rows = calls(&app, &app.tenant).await;
    assert_eq!(rows.len(), cases.len() + 1, "{rows:?}");
    let by_request = |request_id: &str| {
        rows.iter()
            .find(|r| r.request_id.as_deref() == Some(request_id))
            .unwrap_or_else(|| panic!("no record of {request_id}: {rows:?}"))
    };
    for (i, (_, _, status, code, upstream)) in cases.iter().enumerate() {
        let row = by_request(&format!("case-{i}"));
        assert_eq!(row.status, i64::from(*status), "{row:?}");
        assert_eq!(row.code.as_deref(), Some(*code), "{row:?}");
        assert_eq!(row.upstream_status, *upstream, "{row:?}");
    }
    let unknown = by_request("case-unknown");
    assert_eq!(unknown.action, "no_such_method");
    assert_eq!(unknown.code.as_deref(), Some("unknown_method"));
    assert_eq!(unknown.upstream_status, None, "the EHR was not called");
    assert!(
        !app.dump_database().contains(diagnostics),
        "no upstream body is stored"
    );

    // The same through the API.
    let r = req_as(
        &app,
        &app.api_key,
        Method::GET,
        "/v1/audit?outcome=503",
        None,
    )
    .await;
    let events = r.json["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{}", r.text);
    assert_eq!(events[0]["upstream_status"], 503);
    assert!(!r.text.contains(diagnostics));
}

/// The OAuth callback's "install.authorized" record carries the callback request's id and the
/// id of the API key that started that authorization (a later re-authorization by another key
/// names that key).
async fn callback_record_names_its_request_and_the_key_that_started_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let env = install(&app, Via::Epic, Via::Epic.fhir().seed_patients(1)).await;
    let (s, second) = app.post("/v1/api-keys", json!({"name": "reauth"})).await;
    assert_eq!(s, StatusCode::CREATED, "{second}");
    let second_id = second["id"].as_str().unwrap().to_owned();
    let second_key = second["api_key"].as_str().unwrap().to_owned();
    let r = req_as(
        &app,
        &second_key,
        Method::POST,
        &format!(
            "/v1/accounts/{}/installs/{}/authorize",
            env.account, env.install
        ),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // The browser: the EHR's consent redirects to the callback, which runs as request cb-…
    let resp = app
        .http
        .get(r.json["authorize_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    let callback = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(callback.starts_with(&app.url("/connector/callback?")));
    let resp = app
        .http
        .get(&callback)
        .header("X-Request-Id", "cb-audit-req-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);

    let rows = trail(&app, &app.tenant).await;
    let created = rows.iter().find(|r| r.action == "install.created").unwrap();
    let first_key = created.api_key_id.clone().expect("the creating key");
    assert_ne!(first_key, second_id);
    let authorized: Vec<_> = rows
        .iter()
        .filter(|r| r.action == "install.authorized")
        .collect();
    assert_eq!(authorized.len(), 2, "{rows:?}");
    let (first, again) = if authorized[1].request_id.as_deref() == Some("cb-audit-req-1") {
        (authorized[0], authorized[1])
    } else {
        (authorized[1], authorized[0])
    };
    assert_eq!(again.request_id.as_deref(), Some("cb-audit-req-1"));
    assert_eq!(again.api_key_id.as_deref(), Some(second_id.as_str()));
    assert_eq!(first.api_key_id.as_deref(), Some(first_key.as_str()));
    let generated = first.request_id.as_deref().expect("a generated request id");
    assert!(!generated.is_empty() && generated != "cb-audit-req-1");
    for r in [first, again] {
        assert_eq!(r.install_id.as_deref(), Some(env.install.as_str()));
        assert_eq!(r.kind, "admin");
    }
}

/// `server.shutdown_grace_secs` is how long a request in flight at SIGTERM may finish: with the
/// default (30 s) a call held 4 s by the EHR completes; with 0 it is cut at actix's first
/// shutdown check (1 s). (Real time:
/// actix's grace period runs on its own timer, which no test clock drives.)
async fn shutdown_grace_is_configuration(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let env = install(&app, Via::Canvas, Via::Canvas.fhir().seed_patients(1)).await;
    let key_file = app.dir.path().join("secret.key");
    let path = format!(
        "/v1/accounts/{}/installs/{}/methods/get_patient",
        env.account, env.install
    );
    let hold = Duration::from_millis(4_000);
    for (grace, completes) in [(None, true), (Some("0"), false)] {
        let work = tempfile::tempdir().unwrap();
        let extra: Vec<(&str, &str)> = grace
            .map(|g| vec![("SWITCHBOARD__SERVER__SHUTDOWN_GRACE_SECS", g)])
            .unwrap_or_default();
        let mut child =
            ChildServer::start(free_port(), &app.db_url, &key_file, work.path(), &extra).await;
        env.fhir.fail_next(Fault::Delay(hold));
        let (url, key) = (format!("{}{path}", child.base), app.api_key.clone());
        let call = actix_web::rt::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(key)
                .json(&json!({"params": {"id": FakeFhir::patient_id(1)}}))
                .send()
                .await
                .map(|r| r.status())
        });
        // The call is at the EHR (its delay fault taken) when the signal comes.
        let deadline = Instant::now() + Duration::from_secs(30);
        while env.fhir.pending_faults() > 0 {
            assert!(Instant::now() < deadline, "the call never reached the EHR");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let signalled = Instant::now();
        let term = std::process::Command::new("kill")
            .args(["-TERM", &child.child.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
        let answer = call.await.unwrap();
        let status = loop {
            if let Some(status) = child.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "no exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "{status}");
        if completes {
            assert_eq!(answer.ok(), Some(StatusCode::OK), "grace {grace:?}");
        } else {
            assert!(answer.is_err(), "cut without grace: {answer:?}");
            assert!(
                signalled.elapsed() < hold,
                "stopped before the EHR answered"
            );
        }
    }
}

/// A write names its patient in the body (`subject.reference`, or `patient.reference`): the
/// record carries that patient's keyed hash, the same as a read of that patient, and the id is
/// stored nowhere; a body about a Group carries none.
async fn writes_hash_the_patient_their_body_is_about(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let env = install(&app, Via::Medplum, Via::Medplum.fhir().seed_patients(1)).await;
    let patient = "pat-Wr1teAuditSecret";
    let observation = |subject: &str| {
        json!({
            "resourceType": "Observation",
            "status": "final",
            "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs" }] }],
            "code": { "coding": [{ "system": "http://loinc.org", "code": "8867-4" }] },
            "subject": { "reference": subject },
            "valueQuantity": { "value": 72, "unit": "/min" }
        })
    };
    let (s, v) = env
        .call(
            &app,
            "create_observation",
            json!({"params": {}, "body": observation(&format!("Patient/{patient}"))}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], 201, "{v}");
    let (s, v) = env
        .call(
            &app,
            "create_observation",
            json!({"params": {}, "body": observation("Group/cohort-1")}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = env
        .call(&app, "get_patient", json!({"params": {"id": patient}}))
        .await;
    assert!(s.is_client_error() || s.is_server_error(), "{s}");

    let rows = calls(&app, &app.tenant).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    let expected = app
        .services
        .audit
        .patient_hash(&app.tenant, patient)
        .await
        .unwrap();
    // Rows written in the same millisecond may come back in either order: match by content.
    let mut writes: Vec<Option<&str>> = rows
        .iter()
        .filter(|r| r.action == "create_observation")
        .map(|r| r.patient_hash.as_deref())
        .collect();
    writes.sort();
    assert_eq!(
        writes,
        vec![None, Some(expected.as_str())],
        "one write about the patient (hashed), one about a Group (no patient)"
    );
    let read = rows.iter().find(|r| r.action == "get_patient").unwrap();
    assert_eq!(
        read.patient_hash.as_deref(),
        Some(expected.as_str()),
        "the write matches the read of the same patient"
    );
    // The audit filter finds the write by the patient id or its reference.
    for q in [patient.to_owned(), format!("Patient/{patient}")] {
        let filter = app.services.audit.patient_hash(&app.tenant, &q).await;
        assert_eq!(filter.unwrap(), expected, "{q}");
    }
    let dump = app.dump_database();
    assert!(dump.contains(&expected));
    assert!(!dump.contains(patient), "the patient id is stored nowhere");
}
