//! Smoke: the server starts, authenticates, and round-trips an account on both backends.

use crate::support::{assert_problem, TestApp};
use reqwest::StatusCode;
use serde_json::json;

async fn smoke(backend: crate::support::Backend) {
    let app = TestApp::spawn(backend).await;
    let (s, v) = app.get("/v1/connectors").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let ids: Vec<&str> = v["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, crate::support::SHIPPED_CONNECTORS);
    let (s, v) = app
        .post("/v1/accounts", json!({"id": "acme", "name": "Acme"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = app
        .call_as("sbk_nope", reqwest::Method::GET, "/v1/accounts", None)
        .await;
    assert_problem(s, &v, 401, "unauthorized");
}

crate::both_backends! {
    smoke_round_trip => smoke;
}
