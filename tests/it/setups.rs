//! Connector setups: the tenant-wide settings of a connector (secrets masked on the way out,
//! values normalised, delete).

use crate::support::{distinctive, error_fields, problem, req, set, snapshot, Backend, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn connector_setup_lifecycle(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let secret = distinctive("epic-secret");
    let r = req(&app, Method::GET, "/v1/connectors/epic/setup", None).await;
    problem(&r, 404, "not_found");

    let r = req(
        &app,
        Method::PUT,
        "/v1/connectors/epic/setup",
        Some(json!({"settings": {
            "endpoint": "https://x.example/FHIRProxy/api/FHIR/R4",
            "client_id": "epic-client-1",
            "client_secret": secret,
        }})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(!r.text.contains(&secret), "secret echoed");
    assert_eq!(r.json["connector"], "epic");
    let s = &r.json["settings"];
    assert_eq!(
        s["endpoint"], "https://x.example/FHIRProxy/",
        "normaliser applied"
    );
    assert_eq!(s["client_id"], "epic-client-1");
    assert_eq!(s["client_secret"], json!({"set": true}));

    let r = req(&app, Method::GET, "/v1/connectors/epic/setup", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(!r.text.contains(&secret), "secret shown");
    assert_eq!(
        r.json["settings"]["endpoint"],
        "https://x.example/FHIRProxy/"
    );
    assert_eq!(r.json["settings"]["client_id"], "epic-client-1");
    assert_eq!(r.json["settings"]["client_secret"], json!({"set": true}));

    // Storage: the normalised endpoint in clear, the secret sealed as {"enc": ...}.
    let tenant = app.tenant.clone();
    let row = app
        .db(move |conn| switchboard_db::repo::setups::find(conn, &tenant, "epic"))
        .await
        .expect("setup row");
    let stored: Value = serde_json::from_str(&row.settings).unwrap();
    assert_eq!(stored["endpoint"], "https://x.example/FHIRProxy/");
    assert!(stored["client_secret"]["enc"].is_string(), "{stored}");
    assert!(!row.settings.contains(&secret));

    // Invalid settings are rejected as a whole, listing the fields, and change nothing.
    let before = snapshot(&app).await;
    let r = req(
        &app,
        Method::PUT,
        "/v1/connectors/epic/setup",
        Some(json!({"settings": {
            "endpoint": "https://y.example/",
            "client_id": "other",
            "client_secret": "other-secret",
            "colour": "blue",
        }})),
    )
    .await;
    problem(&r, 422, "invalid_settings").hides(&["other-secret"]);
    assert_eq!(error_fields(&r), set(&["colour"]));
    for bad in [
        "not a url",
        "ftp://x.example/",
        "https://user:pw@x.example/",
        "",
    ] {
        let r = req(
            &app,
            Method::PUT,
            "/v1/connectors/epic/setup",
            Some(json!({"settings": {"endpoint": bad, "client_id": "c", "client_secret": "s"}})),
        )
        .await;
        problem(&r, 422, "invalid_settings");
        assert!(error_fields(&r).contains("endpoint"), "{bad}: {}", r.text);
    }
    let r = req(
        &app,
        Method::PUT,
        "/v1/connectors/epic/setup",
        Some(json!({"settings": {"endpoint": 42, "client_id": ["x"]}})),
    )
    .await;
    problem(&r, 422, "invalid_settings");
    assert_eq!(error_fields(&r), set(&["client_id", "endpoint"]));
    assert_eq!(
        snapshot(&app).await,
        before,
        "a rejected setup changed the database"
    );
    let r = req(&app, Method::GET, "/v1/connectors/epic/setup", None).await;
    assert_eq!(r.json["settings"]["client_id"], "epic-client-1");

    // Delete: 204, then 404, and the row is gone.
    let r = req(&app, Method::DELETE, "/v1/connectors/epic/setup", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(r.text.is_empty());
    let r = req(&app, Method::GET, "/v1/connectors/epic/setup", None).await;
    problem(&r, 404, "not_found");
    let r = req(&app, Method::DELETE, "/v1/connectors/epic/setup", None).await;
    problem(&r, 404, "not_found");
    let tenant = app.tenant.clone();
    let row = app
        .db(move |conn| switchboard_db::repo::setups::find(conn, &tenant, "epic"))
        .await;
    assert!(row.is_none());
}

crate::both_backends! {
    connector_setup_masks_normalises_and_deletes => connector_setup_lifecycle;
}
