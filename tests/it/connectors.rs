//! The connector catalogue: list and describe the loaded connectors.

use crate::support::{problem, req, snapshot, Backend, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::collections::BTreeSet;

async fn connector_catalogue(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = req(&app, Method::GET, "/v1/connectors", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let list = r.json["connectors"].as_array().unwrap();
    let ids: Vec<&str> = list.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, crate::support::SHIPPED_CONNECTORS);
    for c in list {
        let keys: BTreeSet<String> = c.as_object().unwrap().keys().cloned().collect();
        for k in ["id", "name", "version", "auth_types", "methods"] {
            assert!(keys.contains(k), "{k} missing in {c}");
        }
        assert!(c["name"].as_str().is_some_and(|s| !s.is_empty()));
        assert_eq!(c["version"], "1.0.0");
        let methods: Vec<(&str, &str)> = c["methods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["id"].as_str().unwrap(), m["name"].as_str().unwrap()))
            .collect();
        // The file's own Patient methods first; the US Core methods it includes follow
        // (tests/it/fhir_reads.rs checks those).
        assert_eq!(
            methods[..2],
            [
                ("get_patient", "Get Patient"),
                ("search_patients", "Search Patients")
            ],
            "{c}"
        );
        // The summary is a summary: no settings or templates.
        assert!(
            c.get("settings").is_none() && c.get("auth").is_none(),
            "{c}"
        );
    }
    let auth = |id: &str| list.iter().find(|c| c["id"] == id).unwrap()["auth_types"].clone();
    assert_eq!(auth("epic"), json!(["oauth2_authorization_code"]));
    assert_eq!(
        auth("canvas"),
        json!([
            "oauth2_authorization_code",
            "oauth2_client_credentials",
            "static_bearer"
        ])
    );
    assert_eq!(
        auth("medplum"),
        json!(["oauth2_authorization_code", "oauth2_client_credentials"])
    );
    // Issue 11: athenahealth now sorts first, so Epic is found by id rather than position.
    let epic_entry = list.iter().find(|c| c["id"] == "epic").unwrap();
    assert_eq!(epic_entry["name"], "Epic");

    // The full definition: settings fields and method parameter schemas.
    let r = req(&app, Method::GET, "/v1/connectors/epic", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let epic = &r.json;
    assert_eq!(epic["id"], "epic");
    let settings = epic["settings"].as_array().unwrap();
    let keys: Vec<&str> = settings
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["endpoint", "client_id", "client_secret", "scopes"]);
    let field = |k: &str| settings.iter().find(|s| s["key"] == k).unwrap();
    assert_eq!(field("endpoint")["type"], "url");
    assert_eq!(field("endpoint")["required"], true);
    assert_eq!(field("endpoint")["install_override"], true);
    assert!(field("endpoint")["label"].is_string());
    assert_eq!(field("client_secret")["secret"], true);
    assert_eq!(field("client_secret")["install_override"], false);
    assert!(field("client_secret").get("default").is_none());
    assert_eq!(field("client_id")["required"], true);
    let methods = epic["methods"].as_array().unwrap();
    let get = methods.iter().find(|m| m["id"] == "get_patient").unwrap();
    assert_eq!(get["verb"], "GET");
    let id_param = &get["params"][0];
    assert_eq!(id_param["name"], "id");
    assert_eq!(id_param["in"], "path");
    assert_eq!(id_param["required"], true);
    assert!(id_param["pattern"].is_string());
    let search = methods
        .iter()
        .find(|m| m["id"] == "search_patients")
        .unwrap();
    let params = search["params"].as_array().unwrap();
    assert!(params.len() >= 10, "{search}");
    for p in params {
        assert!(
            p["name"].is_string() && p["in"] == "query" && p["type"].is_string(),
            "{p}"
        );
        assert!(
            p["required"].is_boolean() && p["repeated"].is_boolean(),
            "{p}"
        );
    }
    let gender = params.iter().find(|p| p["name"] == "gender").unwrap();
    assert_eq!(
        gender["enum"],
        json!(["male", "female", "other", "unknown"])
    );
    let birthdate = params.iter().find(|p| p["name"] == "birthdate").unwrap();
    assert_eq!(birthdate["type"], "date");
    assert!(search["require_one_of"].is_array());
    let r = req(&app, Method::GET, "/v1/connectors/canvas", None).await;
    let count = r.json["methods"][1]["params"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "_count")
        .unwrap()
        .clone();
    assert_eq!(
        (count["minimum"].clone(), count["maximum"].clone()),
        (json!(1), json!(100))
    );

    // Unknown connectors.
    for (m, path) in [
        (Method::GET, "/v1/connectors/nope"),
        (Method::GET, "/v1/connectors/nope/setup"),
        (Method::DELETE, "/v1/connectors/nope/setup"),
    ] {
        let r = req(&app, m, path, None).await;
        problem(&r, 404, "unknown_connector");
    }
    let before = snapshot(&app).await;
    let r = req(
        &app,
        Method::PUT,
        "/v1/connectors/nope/setup",
        Some(json!({"settings": {"endpoint": "https://x.example/"}})),
    )
    .await;
    problem(&r, 404, "unknown_connector");
    assert_eq!(snapshot(&app).await, before);
}

crate::both_backends! {
    connector_catalogue_lists_and_describes => connector_catalogue;
}
