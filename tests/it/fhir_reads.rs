//! US Core reads and searches (issue 12), end to end on every connector that offers them:
//! each (connector, method) pair called over HTTP against a FakeFhir seeded with fictional
//! charts, its upstream request path and query asserted; FHIR date ranges (repeated `date` with
//! prefixes); paging of searches and of `Patient/{id}/$everything`; each vendor's required
//! combinations and bounds refused with no upstream call; the catalogue listing every method
//! with its parameter schema, SMART scope and whether it writes.

use crate::methods::{install, Env, Via};
use crate::support::{assert_problem, install_row, snapshot, Backend, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use switchboard_testkit::fhir::NextLinks;

const P: &str = "pat-0001";

/// One method call and what must reach the EHR.
struct Case {
    method: &'static str,
    params: Value,
    /// Upstream path relative to the FHIR base.
    path: String,
    /// Upstream query pairs (order-insensitive; repeated names kept).
    query: Vec<(&'static str, &'static str)>,
    /// Ids the answer carries: the resource's for a read, the entries' for a search.
    ids: Vec<String>,
}

fn case(
    method: &'static str,
    params: Value,
    path: &str,
    query: &[(&'static str, &'static str)],
    ids: &[&str],
) -> Case {
    Case {
        method,
        params,
        path: path.to_owned(),
        query: query.to_vec(),
        ids: ids.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// Every US Core method of the library with a call every offering connector accepts (Epic's
/// Observation search needs patient + category or code; no `_count`, which Epic lacks).
fn cases() -> Vec<Case> {
    let read = |method: &'static str, kind: &str, id: String| {
        case(
            method,
            json!({ "id": id }),
            &format!("{kind}/{id}"),
            &[],
            &[&id],
        )
    };
    let obs1 = format!("obs-{P}-1");
    vec![
        read("get_observation", "Observation", obs1),
        case(
            "search_observations",
            json!({ "patient": P, "category": "vital-signs", "date": ["ge2024-01-01", "lt2025-01-01"] }),
            "Observation",
            &[
                ("patient", P),
                ("category", "vital-signs"),
                ("date", "ge2024-01-01"),
                ("date", "lt2025-01-01"),
            ],
            &["obs-pat-0001-2"],
        ),
        read("get_condition", "Condition", format!("cond-{P}-1")),
        case(
            "search_conditions",
            json!({ "patient": P, "clinical-status": "active" }),
            "Condition",
            &[("patient", P), ("clinical-status", "active")],
            &["cond-pat-0001-1"],
        ),
        read(
            "get_medication_request",
            "MedicationRequest",
            format!("medrx-{P}-1"),
        ),
        case(
            "search_medication_requests",
            json!({ "patient": P, "intent": "order" }),
            "MedicationRequest",
            &[("patient", P), ("intent", "order")],
            &["medrx-pat-0001-1"],
        ),
        read(
            "get_allergy_intolerance",
            "AllergyIntolerance",
            format!("allergy-{P}-1"),
        ),
        case(
            "search_allergy_intolerances",
            json!({ "patient": P }),
            "AllergyIntolerance",
            &[("patient", P)],
            &["allergy-pat-0001-1"],
        ),
        read("get_encounter", "Encounter", format!("enc-{P}-1")),
        case(
            "search_encounters",
            json!({ "patient": P, "date": "ge2024-01-01" }),
            "Encounter",
            &[("patient", P), ("date", "ge2024-01-01")],
            &["enc-pat-0001-1"],
        ),
        read(
            "get_document_reference",
            "DocumentReference",
            format!("doc-{P}-1"),
        ),
        case(
            "search_document_references",
            json!({ "patient": P, "category": "clinical-note" }),
            "DocumentReference",
            &[("patient", P), ("category", "clinical-note")],
            &["doc-pat-0001-1"],
        ),
        read("get_binary", "Binary", format!("bin-{P}-1")),
        read("get_practitioner", "Practitioner", "prac-0001".to_owned()),
        case(
            "search_practitioners",
            json!({ "identifier": "http://hl7.org/fhir/sid/us-npi|1000000001" }),
            "Practitioner",
            &[("identifier", "http://hl7.org/fhir/sid/us-npi|1000000001")],
            &["prac-0001"],
        ),
        read("get_appointment", "Appointment", format!("appt-{P}-1")),
        case(
            "search_appointments",
            json!({ "patient": P }),
            "Appointment",
            &[("patient", P)],
            &["appt-pat-0001-1"],
        ),
        read("get_procedure", "Procedure", format!("proc-{P}-1")),
        case(
            "search_procedures",
            json!({ "patient": P, "date": "le2016-01-01" }),
            "Procedure",
            &[("patient", P), ("date", "le2016-01-01")],
            &["proc-pat-0001-1"],
        ),
        read(
            "get_diagnostic_report",
            "DiagnosticReport",
            format!("dr-{P}-1"),
        ),
        case(
            "search_diagnostic_reports",
            json!({ "patient": P, "category": "LAB" }),
            "DiagnosticReport",
            &[("patient", P), ("category", "LAB")],
            &["dr-pat-0001-1"],
        ),
        read("get_immunization", "Immunization", format!("imm-{P}-1")),
        case(
            "search_immunizations",
            json!({ "patient": P }),
            "Immunization",
            &[("patient", P)],
            &["imm-pat-0001-1"],
        ),
        case(
            "patient_everything",
            json!({ "id": P }),
            "Patient/pat-0001/$everything",
            &[],
            // The first page (FakeFhir's default 10): the patient, then its compartment.
            &[P, "allergy-pat-0001-1", "appt-pat-0001-1"],
        ),
    ]
}

fn ids_of(method: &str, data: &Value) -> Vec<String> {
    if data["resourceType"] == "Bundle" {
        data["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["resource"]["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    } else {
        assert!(method.starts_with("get_"), "{method}: {data}");
        vec![data["id"].as_str().unwrap_or_default().to_owned()]
    }
}

async fn charted(app: &TestApp, via: Via) -> Env {
    // Origin-relative next links: Epic and Medplum reach FakeFhir through a front origin.
    install(
        app,
        via,
        via.fhir()
            .next_links(NextLinks::Relative)
            .seed_patients(2)
            .seed_charts(&[P, "pat-0002"]),
    )
    .await
}

/// The method ids the catalogue lists for a connector.
async fn offered(app: &TestApp, connector: &str) -> Vec<String> {
    let (s, v) = app.get(&format!("/v1/connectors/{connector}")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn every_offered_us_core_method_end_to_end(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let cases = cases();
    for via in [Via::Epic, Via::Canvas, Via::Medplum] {
        let env = charted(&app, via).await;
        let before = install_row(&app, &env.install).await.expect("install row");
        // The creates are tested in tests/it/writes.rs, the Bulk Data exports in tests/it/bulk.rs.
        let offered: Vec<String> = offered(&app, via.connector())
            .await
            .into_iter()
            .filter(|m| !m.starts_with("create_") && !m.starts_with("export_"))
            .collect();
        // Every offered method but the Patient ones (tests/it/methods.rs) has a case here.
        for m in &offered {
            assert!(
                m == "get_patient" || m == "search_patients" || cases.iter().any(|c| c.method == m),
                "{via:?}: no case for {m}"
            );
        }
        let mut ran = 0;
        for c in cases
            .iter()
            .filter(|c| offered.iter().any(|m| m == c.method))
        {
            env.fhir.reset();
            let (s, v) = env
                .call(&app, c.method, json!({ "params": c.params }))
                .await;
            assert_eq!(s, StatusCode::OK, "{via:?} {}: {v}", c.method);
            assert_eq!(v["status"], 200, "{via:?} {}: {v}", c.method);
            let got = ids_of(c.method, &v["data"]);
            if c.method == "patient_everything" {
                assert_eq!(&got[..c.ids.len()], c.ids.as_slice(), "{via:?}: {v}");
            } else {
                assert_eq!(got, c.ids, "{via:?} {}: {v}", c.method);
            }
            let reqs = env.fhir.requests();
            assert_eq!(reqs.len(), 1, "{via:?} {}: {reqs:?}", c.method);
            let r = &reqs[0];
            assert_eq!(r.method, "GET");
            assert_eq!(r.path(), format!("{}{}", via.prefix(), c.path), "{via:?}");
            let sorted = |q: Vec<(String, String)>| {
                let mut q = q;
                q.sort();
                q
            };
            let want: Vec<(String, String)> = c
                .query
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            assert_eq!(
                sorted(r.query_pairs()),
                sorted(want),
                "{via:?} {}",
                c.method
            );
            ran += 1;
        }
        assert_eq!(ran, offered.len() - 2, "{via:?}: every offered method ran");
        // Reads leave the install as it was: authorized, no error, the same token version.
        let row = install_row(&app, &env.install).await.expect("install row");
        assert_eq!(row.status, "authorized", "{via:?}");
        assert_eq!(row.last_error, None, "{via:?}");
        assert_eq!(
            row.token_version, before.token_version,
            "{via:?}: no refresh"
        );
    }
}

/// Which connector offers what, and why not (see the connector files' comments).
async fn catalogue_lists_scope_schema_and_writes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let epic = offered(&app, "epic").await;
    let canvas = offered(&app, "canvas").await;
    let medplum = offered(&app, "medplum").await;
    assert!(medplum.contains(&"patient_everything".to_owned()));
    assert!(medplum.contains(&"get_binary".to_owned()));
    assert!(epic.contains(&"get_binary".to_owned()));
    assert!(!epic.contains(&"patient_everything".to_owned()));
    assert!(!canvas.contains(&"patient_everything".to_owned()));
    assert!(!canvas.contains(&"get_binary".to_owned()));
    for connector in ["epic", "canvas", "medplum"] {
        let (s, v) = app.get(&format!("/v1/connectors/{connector}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        // The reads; the creates are checked in tests/it/writes.rs, the Bulk Data exports
        // (`kind: "bulk_export"`, system scopes) in tests/it/bulk.rs.
        for m in v["methods"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| !m["id"].as_str().unwrap_or_default().starts_with("create_"))
            .filter(|m| m["kind"] != "bulk_export")
        {
            assert_eq!(m["writes"], false, "{connector}: {m}");
            let scope = m["scope"].as_str().unwrap_or_default();
            // SMART v1 (`.read`) from the library; Medplum's own Patient methods say v2 `.rs`.
            assert!(
                scope.starts_with("user/") && (scope.ends_with(".read") || scope.ends_with(".rs")),
                "{connector}: {m}"
            );
            assert!(m["params"].as_array().is_some_and(|p| !p.is_empty()), "{m}");
        }
        let obs = v["methods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == "search_observations")
            .unwrap();
        assert_eq!(obs["scope"], "user/Observation.read");
        let date = obs["params"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "date")
            .unwrap();
        assert_eq!(date["type"], "date");
        assert_eq!(date["repeated"], true);
        let names: BTreeSet<&str> = obs["params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        // Epic does not document `_count` (EHR-FACTS §10): the connector drops it.
        assert_eq!(names.contains("_count"), connector != "epic", "{connector}");
    }
}

/// A call refused with 422 `invalid_params` naming `field`, the EHR never asked.
async fn refused(app: &TestApp, env: &Env, method: &str, params: Value, field: &str) {
    let before = env.fhir.request_count();
    let (s, v) = env.call(app, method, json!({ "params": params })).await;
    assert_problem(s, &v, 422, "invalid_params");
    assert!(v.to_string().contains(field), "{method}: {v}");
    assert_eq!(
        env.fhir.request_count(),
        before,
        "{method}: no upstream call"
    );
}

async fn required_combinations_and_bounds_refused_without_upstream_calls(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let epic = charted(&app, Via::Epic).await;
    let canvas = charted(&app, Via::Canvas).await;
    let medplum = charted(&app, Via::Medplum).await;
    let db_before = snapshot(&app).await;
    // Epic: Observation search needs patient with category or code (open.epic.com).
    refused(
        &app,
        &epic,
        "search_observations",
        json!({ "patient": P }),
        "patient",
    )
    .await;
    // Epic has no `_count`.
    refused(
        &app,
        &epic,
        "search_observations",
        json!({ "patient": P, "category": "laboratory", "_count": 5 }),
        "_count",
    )
    .await;
    // US Core: MedicationRequest by patient needs intent.
    refused(
        &app,
        &medplum,
        "search_medication_requests",
        json!({ "patient": P }),
        "intent",
    )
    .await;
    // A malformed FHIR date, and Canvas's page cap of 100.
    refused(
        &app,
        &medplum,
        "search_observations",
        json!({ "patient": P, "code": "http://loinc.org|8867-4", "date": "yesterday" }),
        "date",
    )
    .await;
    refused(
        &app,
        &canvas,
        "search_conditions",
        json!({ "patient": P, "_count": 101 }),
        "_count",
    )
    .await;
    // Medplum allows up to 1000.
    let (s, v) = medplum
        .call(
            &app,
            "search_conditions",
            json!({ "params": { "patient": P, "_count": 1000 } }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // A path id that is not a FHIR id never leaves.
    refused(
        &app,
        &canvas,
        "get_observation",
        json!({ "id": "../Patient" }),
        "id",
    )
    .await;
    assert_eq!(
        snapshot(&app).await,
        db_before,
        "refusals change nothing stored"
    );
}

async fn searches_and_everything_follow_pages(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for via in [Via::Canvas, Via::Medplum] {
        let env = charted(&app, via).await;
        // Three vital signs... two for pat-0001, one page each.
        let (s, v) = env
            .call(
                &app,
                "search_observations",
                json!({ "params": { "patient": P, "category": "vital-signs", "_count": 1 }, "max_pages": 5 }),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{via:?}: {v}");
        assert_eq!(v["pages"], 2, "{via:?}: {v}");
        assert_eq!(
            ids_of("search_observations", &v["data"]),
            ["obs-pat-0001-1", "obs-pat-0001-2"]
        );
        let reqs = env.fhir.requests();
        assert_eq!(reqs.len(), 2, "{reqs:?}");
        assert!(
            reqs[1]
                .query_pairs()
                .contains(&("_offset".into(), "1".into())),
            "{reqs:?}"
        );
    }
    // $everything on Medplum: 13 resources over two pages of 10.
    let env = charted(&app, Via::Medplum).await;
    let (s, v) = env
        .call(
            &app,
            "patient_everything",
            json!({ "params": { "id": P }, "max_pages": 5 }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["pages"], 2, "{v}");
    let ids = ids_of("patient_everything", &v["data"]);
    assert_eq!(ids.len(), 13, "{ids:?}");
    assert_eq!(ids[0], P);
    assert!(
        ids.iter().all(|i| !i.contains("pat-0002-")),
        "only pat-0001's chart: {ids:?}"
    );
    let reqs = env.fhir.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].path(), "/fhir/R4/Patient/pat-0001/$everything");
}

crate::both_backends! {
    us_core_methods_end_to_end => every_offered_us_core_method_end_to_end;
    us_core_catalogue => catalogue_lists_scope_schema_and_writes;
    us_core_refusals_without_upstream_calls => required_combinations_and_bounds_refused_without_upstream_calls;
    us_core_paging => searches_and_everything_follow_pages;
}
