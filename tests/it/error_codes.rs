//! Every error code a client can meet comes from the one error table.

use crate::support::{problem, req, send_raw, Backend, Resp, TestApp};
use reqwest::Method;
use serde_json::json;
use std::collections::BTreeSet;
use switchboard_core::ErrorCode;

/// Hits one case of every client error of the foundation and checks that each `code` is in
/// `switchboard_core::ErrorCode::ALL` with the table's status and title (via `problem`).
async fn error_codes_come_from_the_table(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| s.server.max_body_bytes = 512).await;
    app.create_account("acc").await;
    let auth = format!("Bearer {}", app.api_key);
    let mut seen = BTreeSet::new();
    let mut check = |r: Resp, status: u16, code: &'static str| {
        problem(&r, status, code);
        seen.insert(code);
    };
    check(
        send_raw(&app, Method::GET, "/v1/accounts", None, None, None).await,
        401,
        "unauthorized",
    );
    check(
        req(&app, Method::GET, "/v1/accounts/none", None).await,
        404,
        "not_found",
    );
    check(
        req(&app, Method::GET, "/v1/connectors/none", None).await,
        404,
        "unknown_connector",
    );
    check(
        req(&app, Method::GET, "/v1/accounts/a%20b", None).await,
        400,
        "invalid_id",
    );
    check(
        req(
            &app,
            Method::POST,
            "/v1/accounts",
            Some(json!({"id": "a b", "name": "x"})),
        )
        .await,
        400,
        "invalid_request",
    );
    check(
        send_raw(
            &app,
            Method::POST,
            "/v1/accounts",
            Some(&auth),
            Some("application/json"),
            Some(vec![b' '; 600]),
        )
        .await,
        413,
        "payload_too_large",
    );
    check(
        send_raw(
            &app,
            Method::POST,
            "/v1/accounts",
            Some(&auth),
            Some("text/plain"),
            Some(b"{}".to_vec()),
        )
        .await,
        415,
        "unsupported_media_type",
    );
    check(
        req(
            &app,
            Method::POST,
            "/v1/accounts",
            Some(json!({"id": "acc", "name": "x"})),
        )
        .await,
        409,
        "already_exists",
    );
    check(
        req(
            &app,
            Method::PUT,
            "/v1/connectors/epic/setup",
            Some(json!({"settings": {"x": "y"}})),
        )
        .await,
        422,
        "invalid_settings",
    );
    check(
        req(
            &app,
            Method::POST,
            "/v1/accounts/acc/installs",
            Some(json!({"connector": "epic", "auth_type": "static_bearer"})),
        )
        .await,
        422,
        "unsupported_auth_type",
    );
    check(
        req(
            &app,
            Method::POST,
            "/v1/accounts/acc/installs",
            Some(json!({"connector": "epic", "return_url": "https://elsewhere.example/"})),
        )
        .await,
        400,
        "invalid_return_url",
    );
    assert_eq!(seen.len(), 11);
    let table: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.code()).collect();
    assert!(
        seen.iter().all(|c| table.contains(c)),
        "{seen:?} vs {table:?}"
    );
}

crate::both_backends! {
    error_codes_come_from_the_table => error_codes_come_from_the_table;
}
