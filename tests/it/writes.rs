//! Safe FHIR writes (issue 12): `create_observation`, `create_document_reference` and
//! `create_communication` end to end against FakeFhir (which stores creates, honours
//! `If-None-Exist` and fails on demand): the upstream saw one POST with the caller's resource;
//! a conditional create of a resource the EHR already holds creates nothing; a body of the
//! wrong shape is refused with no upstream call; a failed create is never retried and says its
//! outcome is unknown; an oversize body is a 413; the catalogue shows the writes. With an
//! Idempotency-Key: the same key and body replay the first result without a second upstream
//! create (the record stored per install, its response sealed), another body is 422, a call
//! while the first is in flight is 409, a failed create frees the key, 24 h end the record.

use crate::methods::{install, Env, Via};
use crate::support::{assert_problem, Backend, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use switchboard_db::repo::idempotency;
use switchboard_service::ManualClock;
use switchboard_testkit::fhir::Fault;

const P: &str = "pat-0001";

fn observation(identifier: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "identifier": [{ "system": "urn:example:lab", "value": identifier }],
        "status": "final",
        "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs" }] }],
        "code": { "coding": [{ "system": "http://loinc.org", "code": "8867-4" }] },
        "subject": { "reference": format!("Patient/{P}") },
        "valueQuantity": { "value": 72, "unit": "/min" }
    })
}

fn document_reference() -> Value {
    json!({
        "resourceType": "DocumentReference",
        "identifier": [{ "system": "urn:example:notes", "value": "note-1" }],
        "status": "current",
        "type": { "coding": [{ "system": "http://loinc.org", "code": "11506-3" }] },
        "subject": { "reference": format!("Patient/{P}") },
        "content": [{ "attachment": { "contentType": "text/plain", "data": "Rm9sbG93LXVwIGluIDIgd2Vla3Mu" } }],
        "extension": [{ "url": "http://schemas.canvasmedical.com/fhir/document-reference-clinical-date", "valueDate": "2026-12-01" }]
    })
}

fn communication() -> Value {
    json!({
        "resourceType": "Communication",
        "status": "completed",
        "subject": { "reference": format!("Patient/{P}") },
        "recipient": [{ "reference": format!("Patient/{P}") }],
        "sender": { "reference": "Practitioner/prac-1" },
        "payload": [{ "contentString": "Your results are in." }]
    })
}

async fn writer(app: &TestApp, via: Via) -> Env {
    install(app, via, via.fhir().seed_patients(1)).await
}

/// Each offered create, on Medplum (conditional) and Canvas (not): one upstream POST carrying
/// the resource, the created resource answered, stored by the EHR.
async fn creates_end_to_end(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for via in [Via::Medplum, Via::Canvas] {
        let env = writer(&app, via).await;
        for (method, kind, body) in [
            ("create_observation", "Observation", observation("lab-1")),
            (
                "create_document_reference",
                "DocumentReference",
                document_reference(),
            ),
            ("create_communication", "Communication", communication()),
        ] {
            env.fhir.reset();
            let (s, v) = env
                .call(&app, method, json!({ "params": {}, "body": body }))
                .await;
            assert_eq!(s, StatusCode::OK, "{via:?} {method}: {v}");
            assert_eq!(v["status"], 201, "{v}");
            assert_eq!(v["data"]["resourceType"], kind, "{v}");
            let id = v["data"]["id"].as_str().expect("created id").to_owned();
            let reqs = env.fhir.requests();
            assert_eq!(reqs.len(), 1, "{via:?} {method}: one upstream request");
            assert_eq!(reqs[0].method, "POST");
            assert!(
                reqs[0].path().ends_with(&format!("/{kind}")),
                "{}",
                reqs[0].path()
            );
            assert_eq!(
                reqs[0].header("content-type"),
                Some("application/fhir+json")
            );
            let sent: Value = serde_json::from_slice(&reqs[0].body).unwrap();
            assert_eq!(sent, body, "{via:?} {method}: the resource as sent");
            let conditional = reqs[0].header("if-none-exist");
            match (via, sent.get("identifier")) {
                (Via::Medplum, Some(_)) => assert!(
                    conditional.is_some_and(|q| q.starts_with("identifier=")),
                    "{via:?} {method}: {conditional:?}"
                ),
                _ => assert_eq!(conditional, None, "{via:?} {method}"),
            }
            assert!(
                env.fhir
                    .resources(kind)
                    .iter()
                    .any(|r| r["id"] == id.as_str()),
                "{via:?} {method}: stored upstream"
            );
        }
    }
}

/// `If-None-Exist` with the identifier of a resource the EHR holds: nothing is created, the
/// existing resource is answered.
async fn conditional_create_does_not_duplicate(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let env = writer(&app, Via::Medplum).await;
    let (s, first) = env
        .call(
            &app,
            "create_observation",
            json!({ "body": observation("lab-7") }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{first}");
    assert_eq!(first["status"], 201);
    let (s, again) = env
        .call(
            &app,
            "create_observation",
            json!({ "body": observation("lab-7") }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(
        again["status"], 200,
        "the EHR matched the identifier: {again}"
    );
    assert_eq!(again["data"]["id"], first["data"]["id"]);
    assert_eq!(env.fhir.resources("Observation").len(), 1, "no duplicate");
    assert_eq!(env.fhir.create_requests("Observation"), 2);
}

/// Wrong resourceType, missing required elements, no body, a body on a read: 422 naming the
/// elements (never their values), and nothing reaches the EHR.
async fn invalid_bodies_refused_without_upstream_call(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let env = writer(&app, Via::Medplum).await;
    env.fhir.reset();
    let mut missing = observation("lab-2");
    missing.as_object_mut().unwrap().remove("code");
    missing["status"] = json!("");
    let cases = [
        (
            "create_observation",
            json!({ "body": missing }),
            vec!["body.status", "body.code"],
        ),
        (
            "create_observation",
            json!({ "body": document_reference() }),
            vec!["body.resourceType", "body.code"],
        ),
        ("create_observation", json!({ "params": {} }), vec!["body"]),
        (
            "create_observation",
            json!({ "body": "text" }),
            vec!["body"],
        ),
        (
            "get_observation",
            json!({ "params": { "id": "o1" }, "body": observation("x") }),
            vec!["body"],
        ),
    ];
    for (method, call, fields) in cases {
        let (s, v) = env.call(&app, method, call).await;
        assert_problem(s, &v, 422, "invalid_params");
        let got: Vec<&str> = v["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(got, fields, "{v}");
        assert!(!v.to_string().contains("8867-4"), "no value echoed: {v}");
    }
    assert_eq!(env.fhir.request_count(), 0, "nothing sent upstream");
}

/// A 500 or 503 on create: exactly one upstream request, 502 `write_outcome_unknown`.
async fn failed_create_is_not_retried(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let env = writer(&app, Via::Medplum).await;
    for fault in [
        Fault::Status(500),
        Fault::Unavailable503 { retry_after: None },
    ] {
        env.fhir.reset();
        env.fhir.fail_next_n(3, fault);
        let (s, v) = env
            .call(
                &app,
                "create_observation",
                json!({ "body": observation("lab-3") }),
            )
            .await;
        assert_problem(s, &v, 502, "write_outcome_unknown");
        assert!(
            v["detail"].as_str().unwrap().contains("may or may not"),
            "{v}"
        );
        assert_eq!(env.fhir.create_requests("Observation"), 1, "never retried");
        assert_eq!(env.fhir.request_count(), 1);
    }
    assert!(env.fhir.resources("Observation").is_empty());
}

/// The call deadline passing while a create is in flight: 504 `write_outcome_unknown_timeout`,
/// one upstream request.
async fn timed_out_create_has_unknown_outcome(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| s.upstream.call_deadline_ms = 300).await;
    let env = writer(&app, Via::Medplum).await;
    env.fhir.reset();
    env.fhir
        .fail_next(Fault::Delay(std::time::Duration::from_millis(1500)));
    let (s, v) = env
        .call(
            &app,
            "create_observation",
            json!({ "body": observation("lab-4") }),
        )
        .await;
    assert_problem(s, &v, 504, "write_outcome_unknown_timeout");
    assert_eq!(env.fhir.create_requests("Observation"), 1);
}

/// A body over `server.max_body_bytes`: 413 problem, nothing sent.
async fn oversize_body_is_413(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| s.server.max_body_bytes = 16 * 1024).await;
    let env = writer(&app, Via::Medplum).await;
    env.fhir.reset();
    let mut big = document_reference();
    big["content"][0]["attachment"]["data"] = json!("QUFB".repeat(8 * 1024));
    let (s, v) = env
        .call(&app, "create_document_reference", json!({ "body": big }))
        .await;
    assert_problem(s, &v, 413, "payload_too_large");
    assert_eq!(env.fhir.request_count(), 0);
}

/// The catalogue: `writes: true`, the body shape and whether the create is conditional; Epic
/// offers no create (see connectors/epic.toml).
async fn catalogue_shows_writes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for (connector, conditional) in [("medplum", true), ("canvas", false)] {
        let (s, v) = app.get(&format!("/v1/connectors/{connector}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let methods = v["methods"].as_array().unwrap();
        for id in [
            "create_observation",
            "create_document_reference",
            "create_communication",
        ] {
            let m = methods.iter().find(|m| m["id"] == id).expect(id);
            assert_eq!(m["writes"], true, "{m}");
            assert_eq!(m["verb"], "POST", "{m}");
            assert_eq!(m["conditional_identifier"], conditional, "{connector}: {m}");
            assert!(m["scope"].as_str().unwrap().ends_with(".write"), "{m}");
            assert!(m["body"]["required"]
                .as_array()
                .unwrap()
                .contains(&json!("status")));
        }
        let obs = methods
            .iter()
            .find(|m| m["id"] == "create_observation")
            .unwrap();
        assert_eq!(obs["body"]["resource_type"], "Observation");
    }
    let (_, epic) = app.get("/v1/connectors/epic").await;
    assert!(epic["methods"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["writes"] == false));
}

/// A method call with an `Idempotency-Key` header: status, `Idempotent-Replayed`, body.
async fn keyed(
    app: &TestApp,
    env: &Env,
    method: &str,
    key: &str,
    call: Value,
) -> (StatusCode, Option<String>, Value) {
    let path = format!(
        "/v1/accounts/{}/installs/{}/methods/{method}",
        env.account, env.install
    );
    let res = app
        .http
        .post(app.url(&path))
        .bearer_auth(&app.api_key)
        .header("Idempotency-Key", key)
        .json(&call)
        .send()
        .await
        .expect("request");
    let status = res.status();
    let replayed = res
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    let retry_after = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut body: Value = res.json().await.unwrap_or(Value::Null);
    if let Some(ra) = retry_after {
        body["_retry_after_header"] = json!(ra);
    }
    (status, replayed, body)
}

async fn record(app: &TestApp, install: &str, key: &str) -> Option<idempotency::IdempotencyRecord> {
    let (i, k) = (install.to_owned(), key.to_owned());
    app.db(move |conn| idempotency::find(conn, &i, &k)).await
}

/// The same key and body twice: one upstream create, the same answer, the second marked
/// replayed; the record is `done` with its response sealed (not in the database in clear).
async fn same_key_replays_without_second_create(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let env = writer(&app, Via::Medplum).await;
    env.fhir.reset();
    let mut obs = observation("lab-10");
    obs["note"] = json!([{ "text": "MARKER-idem-5c0d" }]);
    let call = json!({ "body": obs });
    let (s1, r1, first) = keyed(&app, &env, "create_observation", "key-1", call.clone()).await;
    assert_eq!(s1, StatusCode::OK, "{first}");
    assert_eq!(r1, None);
    assert_eq!(first["status"], 201);
    let (s2, r2, second) = keyed(&app, &env, "create_observation", "key-1", call).await;
    assert_eq!(s2, StatusCode::OK, "{second}");
    assert_eq!(r2.as_deref(), Some("true"));
    assert_eq!(second, first, "the first result, replayed");
    assert_eq!(
        env.fhir.create_requests("Observation"),
        1,
        "one upstream create"
    );
    assert_eq!(env.fhir.resources("Observation").len(), 1);

    let rec = record(&app, &env.install, "key-1").await.expect("record");
    assert_eq!(rec.status, idempotency::DONE);
    assert_eq!(rec.request_hash.len(), 64);
    assert!(rec.response.is_some_and(|r| !r.is_empty()));
    assert!(
        !app.dump_database().contains("MARKER-idem-5c0d"),
        "the stored response is sealed"
    );
    // The key is per install: another install's call with it runs.
    let other = writer(&app, Via::Medplum).await;
    let (s3, r3, _) = keyed(
        &app,
        &other,
        "create_observation",
        "key-1",
        json!({ "body": observation("lab-11") }),
    )
    .await;
    assert_eq!((s3, r3), (StatusCode::OK, None));
}

/// The same key with another body: 422 `idempotency_key_reused`, nothing sent.
async fn same_key_other_body_is_422(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let env = writer(&app, Via::Medplum).await;
    let (s, _, v) = keyed(
        &app,
        &env,
        "create_observation",
        "key-2",
        json!({ "body": observation("lab-20") }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    env.fhir.reset();
    let (s, _, v) = keyed(
        &app,
        &env,
        "create_observation",
        "key-2",
        json!({ "body": observation("lab-21") }),
    )
    .await;
    assert_problem(s, &v, 422, "idempotency_key_reused");
    // Another method with the same key and an equal-looking body is another request too.
    let (s, _, v) = keyed(
        &app,
        &env,
        "create_communication",
        "key-2",
        json!({ "body": communication() }),
    )
    .await;
    assert_problem(s, &v, 422, "idempotency_key_reused");
    assert_eq!(env.fhir.request_count(), 0, "no upstream call");
    // A malformed key is refused before anything.
    let (s, _, v) = keyed(
        &app,
        &env,
        "create_observation",
        &"k".repeat(256),
        json!({ "body": observation("lab-22") }),
    )
    .await;
    assert_problem(s, &v, 400, "invalid_request");
    assert_eq!(env.fhir.request_count(), 0);
}

/// A second call while the first (slow) one holds the key: 409 with Retry-After; the first
/// then completes and the key replays it.
async fn concurrent_duplicate_is_409(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let env = writer(&app, Via::Medplum).await;
    env.fhir.reset();
    env.fhir
        .fail_next(Fault::Delay(std::time::Duration::from_millis(1500)));
    let call = json!({ "body": observation("lab-30") });
    let first = keyed(&app, &env, "create_observation", "key-3", call.clone());
    let second = async {
        // Once the first call's create has reached the EHR, its key is claimed (bounded: a first
        // call that never reaches the EHR fails the test instead of hanging it).
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while env.fhir.create_requests("Observation") == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("the first create reached the EHR");
        keyed(&app, &env, "create_observation", "key-3", call.clone()).await
    };
    let ((s1, _, v1), (s2, _, v2)) = tokio::join!(first, second);
    assert_eq!(s1, StatusCode::OK, "{v1}");
    assert_problem(s2, &v2, 409, "idempotency_key_in_flight");
    assert_eq!(v2["_retry_after_header"], "1", "{v2}");
    assert_eq!(env.fhir.create_requests("Observation"), 1);
    let (s3, r3, v3) = keyed(&app, &env, "create_observation", "key-3", call).await;
    assert_eq!((s3, r3.as_deref()), (StatusCode::OK, Some("true")));
    assert_eq!(v3, v1);
}

/// A failed create (unknown outcome) is not stored: the key is free and a resend runs again.
async fn failed_create_frees_the_key(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let env = writer(&app, Via::Medplum).await;
    env.fhir.reset();
    env.fhir.fail_next(Fault::Status(500));
    let call = json!({ "body": observation("lab-40") });
    let (s, _, v) = keyed(&app, &env, "create_observation", "key-4", call.clone()).await;
    assert_problem(s, &v, 502, "write_outcome_unknown");
    assert!(record(&app, &env.install, "key-4").await.is_none());
    let (s, r, v) = keyed(&app, &env, "create_observation", "key-4", call).await;
    assert_eq!((s, r), (StatusCode::OK, None), "{v}");
    assert_eq!(env.fhir.create_requests("Observation"), 2);
}

/// After 24 h the record is purged: the same key and body create again.
async fn key_expires_after_24h(backend: Backend) {
    let clock = ManualClock::new(switchboard_core::now_ms());
    let app = TestApp::spawn_with_clock(backend, clock.clone(), |_| {}).await;
    let env = writer(&app, Via::Canvas).await;
    env.fhir.reset();
    let call = json!({ "body": observation("lab-50") });
    let (s, _, _) = keyed(&app, &env, "create_observation", "key-5", call.clone()).await;
    assert_eq!(s, StatusCode::OK);
    clock.advance(std::time::Duration::from_secs(23 * 3600));
    let (_, r, _) = keyed(&app, &env, "create_observation", "key-5", call.clone()).await;
    assert_eq!(r.as_deref(), Some("true"), "still inside the window");
    clock.advance(std::time::Duration::from_secs(2 * 3600));
    let (s, r, v) = keyed(&app, &env, "create_observation", "key-5", call).await;
    assert_eq!((s, r), (StatusCode::OK, None), "{v}");
    assert_eq!(env.fhir.create_requests("Observation"), 2);
    let rec = record(&app, &env.install, "key-5")
        .await
        .expect("a fresh record");
    assert_eq!(rec.status, idempotency::DONE);
}

crate::both_backends! {
    writes_create_end_to_end => creates_end_to_end;
    writes_conditional_create_no_duplicate => conditional_create_does_not_duplicate;
    writes_invalid_body_no_upstream_call => invalid_bodies_refused_without_upstream_call;
    writes_failed_create_not_retried => failed_create_is_not_retried;
    writes_timed_out_create_unknown_outcome => timed_out_create_has_unknown_outcome;
    writes_oversize_body_413 => oversize_body_is_413;
    writes_catalogue => catalogue_shows_writes;
    writes_idempotent_replay => same_key_replays_without_second_create;
    writes_idempotency_key_reused => same_key_other_body_is_422;
    writes_idempotency_in_flight_409 => concurrent_duplicate_is_409;
    writes_idempotency_failed_create_frees_key => failed_create_frees_the_key;
    writes_idempotency_expires => key_expires_after_24h;
}
