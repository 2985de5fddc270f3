//! Parameter names checked against the server (issue 12): saving a setup reads the FHIR
//! base's CapabilityStatement (`metadata`) and reports, on the setup, the declared search
//! parameters the server does not list, as warnings; a statement that cannot be read is an
//! error on the setup, never a refused save. Stored in the database (`GET` shows the last
//! check) and dropped with the setup.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::StatusCode;
use serde_json::{json, Value};
use switchboard_db::repo;
use switchboard_testkit::fhir::FakeFhir;

use crate::support::{Backend, TestApp};

crate::both_backends! {
    warnings => unlisted_parameters_are_warnings_on_the_setup;
    metadata_down => a_metadata_failure_is_recorded_and_the_setup_saved;
}

async fn put_canvas(app: &TestApp, fhir: &FakeFhir) -> Value {
    let (s, v) = app
        .put(
            "/v1/connectors/canvas/setup",
            json!({ "settings": { "fhir_base_url": fhir.base_url() } }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

/// `(method, resource, param)` of each warning.
fn warnings(setup: &Value) -> BTreeSet<(String, String, String)> {
    setup["capability_warnings"]
        .as_array()
        .unwrap_or_else(|| panic!("capability_warnings: {setup}"))
        .iter()
        .map(|w| {
            let f = |k: &str| w[k].as_str().unwrap().to_owned();
            (f("method"), f("resource"), f("param"))
        })
        .collect()
}

/// A server CapabilityStatement listing these search parameters per type.
fn statement(by_type: &BTreeMap<String, BTreeSet<String>>) -> Value {
    let resource: Vec<Value> = by_type
        .iter()
        .map(|(kind, names)| {
            let params: Vec<Value> = names.iter().map(|n| json!({ "name": n })).collect();
            json!({ "type": kind, "interaction": [{ "code": "search-type" }], "searchParam": params })
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
        "fhirVersion": "4.0.1", "format": ["json"],
        "rest": [{ "mode": "server", "resource": resource }]
    })
}

/// A server listing nothing: every declared search parameter is a warning. A statement built
/// from those: none. The same without Patient `birthdate`: exactly that one (Canvas sends the
/// standard name). Each save reads `metadata` once, without credentials; `GET` shows the last
/// check from the database.
async fn unlisted_parameters_are_warnings_on_the_setup(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let fhir = FakeFhir::builder().start();
    fhir.set_capability_statement(Ok(Some(statement(&BTreeMap::new()))));
    let v = put_canvas(&app, &fhir).await;
    let all = warnings(&v);
    assert!(v.get("capability_error").is_none(), "{v}");
    assert!(v["capability_checked_at"].is_string(), "{v}");
    for expected in [
        ("search_patients", "Patient", "birthdate"),
        ("search_patients", "Patient", "family"),
        ("search_observations", "Observation", "category"),
    ] {
        let e = (
            expected.0.to_owned(),
            expected.1.to_owned(),
            expected.2.to_owned(),
        );
        assert!(all.contains(&e), "{expected:?} in {all:?}");
    }
    assert!(
        all.iter().all(|(_, _, p)| !p.starts_with('_')),
        "common parameters (_id, _count...) are not compared: {all:?}"
    );
    assert!(
        all.iter().all(|(_, _, p)| p != "birthDate"),
        "Canvas sends birthdate: {all:?}"
    );
    assert_eq!(fhir.metadata_requests().len(), 1);
    let m = &fhir.metadata_requests()[0];
    assert_eq!(m.method, "GET");
    assert_eq!(m.bearer(), None, "metadata is read without credentials");
    assert_eq!(fhir.request_count(), 0, "metadata is not a FHIR call");

    // Every declared name listed: no warning.
    let mut full: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, resource, param) in &all {
        full.entry(resource.clone())
            .or_default()
            .insert(param.clone());
    }
    fhir.set_capability_statement(Ok(Some(statement(&full))));
    let v = put_canvas(&app, &fhir).await;
    assert_eq!(v["capability_warnings"], json!([]), "{v}");
    assert!(v.get("capability_error").is_none(), "{v}");

    // Patient without birthdate: that one warning, on the save and on GET.
    full.get_mut("Patient").unwrap().remove("birthdate");
    fhir.set_capability_statement(Ok(Some(statement(&full))));
    let v = put_canvas(&app, &fhir).await;
    assert_eq!(
        v["capability_warnings"],
        json!([{ "method": "search_patients", "resource": "Patient", "param": "birthdate" }]),
        "{v}"
    );
    let (s, got) = app.get("/v1/connectors/canvas/setup").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["capability_warnings"], v["capability_warnings"]);
    assert_eq!(got["capability_checked_at"], v["capability_checked_at"]);
    assert_eq!(fhir.metadata_requests().len(), 3, "one read per save");

    // The row is the setup's: deleting the setup drops it.
    let tenant = app.tenant.clone();
    let row = app
        .db(move |c| repo::capability::find(c, &tenant, "canvas"))
        .await
        .expect("stored");
    assert_eq!(row.fhir_base, fhir.base_url());
    assert_eq!(row.error, None);
    let (s, _) = app.delete("/v1/connectors/canvas/setup").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let tenant = app.tenant.clone();
    let row = app
        .db(move |c| repo::capability::find(c, &tenant, "canvas"))
        .await;
    assert_eq!(row, None);
}

/// `metadata` answering 503, then nothing listening: the setup is saved (200) each time, with
/// no warning and a `capability_error` naming the URL and the status; `GET` shows it too.
async fn a_metadata_failure_is_recorded_and_the_setup_saved(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let fhir = FakeFhir::builder().start();
    fhir.set_capability_statement(Err(503));
    let v = put_canvas(&app, &fhir).await;
    assert_eq!(v["capability_warnings"], json!([]), "{v}");
    assert!(v["capability_checked_at"].is_string(), "{v}");
    let err = v["capability_error"].as_str().expect("an error");
    assert!(
        err.contains(&format!("{}metadata", fhir.base_url())) && err.contains("503"),
        "{err}"
    );
    let (s, got) = app.get("/v1/connectors/canvas/setup").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["capability_error"], v["capability_error"]);
    assert_eq!(got["settings"]["fhir_base_url"], fhir.base_url());

    let (s, v) = app
        .put(
            "/v1/connectors/canvas/setup",
            json!({ "settings": { "fhir_base_url": "http://127.0.0.1:9/" } }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let err = v["capability_error"].as_str().expect("an error");
    assert!(err.contains("http://127.0.0.1:9/metadata"), "{err}");
    let tenant = app.tenant.clone();
    let row = app
        .db(move |c| repo::capability::find(c, &tenant, "canvas"))
        .await
        .expect("stored");
    assert_eq!(row.error.as_deref(), v["capability_error"].as_str());
    assert_eq!(row.warnings, "[]");

    // Fixed: the next save reads it and the error is gone.
    fhir.set_capability_statement(Ok(None));
    let v = put_canvas(&app, &fhir).await;
    assert!(v.get("capability_error").is_none(), "{v}");
    assert!(
        !warnings(&v).is_empty(),
        "the default statement lists Patient only"
    );
}
