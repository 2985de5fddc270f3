//! Accounts: create, list, get and delete.

use crate::support::{
    canvas_bearer_setup, create_bearer_install, distinctive, install_row, problem, req, set,
    snapshot, Backend, TestApp,
};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::collections::BTreeSet;

async fn accounts_lifecycle(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = req(
        &app,
        Method::POST,
        "/v1/accounts",
        Some(json!({"id": "acme-clinic", "name": "Acme Clinic"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["id"], "acme-clinic");
    assert_eq!(r.json["name"], "Acme Clinic");
    assert!(r.json["created_at"].is_string());

    let r = req(
        &app,
        Method::POST,
        "/v1/accounts",
        Some(json!({"name": "Generated"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let generated = r.json["id"].as_str().unwrap().to_owned();
    assert!(
        generated.starts_with("acc_") && generated.len() > 10,
        "{generated}"
    );
    assert!(switchboard_core::valid_external_id(&generated));

    // Duplicate id: 409, the original untouched.
    let r = req(
        &app,
        Method::POST,
        "/v1/accounts",
        Some(json!({"id": "acme-clinic", "name": "Impostor"})),
    )
    .await;
    problem(&r, 409, "already_exists");
    let r = req(&app, Method::GET, "/v1/accounts/acme-clinic", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["name"], "Acme Clinic");
    assert_eq!(r.json["id"], "acme-clinic");

    // The longest allowed id and every allowed character class.
    let longest = format!("A.b_c-9{}", "x".repeat(57));
    assert_eq!(longest.len(), 64);
    let r = req(
        &app,
        Method::POST,
        "/v1/accounts",
        Some(json!({"id": longest, "name": "L"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    let r = req(&app, Method::GET, "/v1/accounts", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let ids: BTreeSet<String> = r.json["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        set(&["acme-clinic", generated.as_str(), longest.as_str()])
    );

    // Invalid ids and names on create: 400 invalid_request, nothing created.
    let before = snapshot(&app).await;
    let too_long = "a".repeat(65);
    for bad in ["a b", "../x", too_long.as_str(), "", ".hidden", "é", "a/b"] {
        let r = req(
            &app,
            Method::POST,
            "/v1/accounts",
            Some(json!({"id": bad, "name": "X"})),
        )
        .await;
        problem(&r, 400, "invalid_request");
    }
    for bad in [
        json!(""),
        json!("   "),
        json!("x".repeat(201)),
        json!("a\nb"),
    ] {
        let r = req(
            &app,
            Method::POST,
            "/v1/accounts",
            Some(json!({"id": "fine", "name": bad})),
        )
        .await;
        problem(&r, 400, "invalid_request");
    }
    let r = req(
        &app,
        Method::POST,
        "/v1/accounts",
        Some(json!({"id": "fine"})),
    )
    .await;
    problem(&r, 400, "invalid_request");
    assert_eq!(snapshot(&app).await, before);

    // Delete: its installs go with it (and their rows).
    canvas_bearer_setup(&app, &distinctive("tok")).await;
    let ins = create_bearer_install(&app, &app.api_key, "acme-clinic").await;
    let ins_id = ins["id"].as_str().unwrap().to_owned();
    let r = req(
        &app,
        Method::POST,
        "/v1/accounts/acme-clinic/installs",
        Some(json!({"connector": "canvas", "auth_type": "static_bearer"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let ins2_id = r.json["id"].as_str().unwrap().to_owned();
    let other = create_bearer_install(&app, &app.api_key, &generated).await;
    let other_id = other["id"].as_str().unwrap().to_owned();

    let r = req(&app, Method::DELETE, "/v1/accounts/acme-clinic", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(r.text.is_empty());
    let r = req(&app, Method::GET, "/v1/accounts/acme-clinic", None).await;
    problem(&r, 404, "not_found");
    let r = req(&app, Method::GET, "/v1/accounts/acme-clinic/installs", None).await;
    problem(&r, 404, "not_found");
    let r = req(&app, Method::DELETE, "/v1/accounts/acme-clinic", None).await;
    problem(&r, 404, "not_found");
    assert!(
        install_row(&app, &ins_id).await.is_none(),
        "install row survived"
    );
    assert!(
        install_row(&app, &ins2_id).await.is_none(),
        "install row survived"
    );
    assert!(
        install_row(&app, &other_id).await.is_some(),
        "another account's install went"
    );
    let tenant = app.tenant.clone();
    let (acc_row, left) = app
        .db(move |conn| {
            Ok((
                switchboard_db::repo::accounts::find(conn, &tenant, "acme-clinic")?,
                switchboard_db::repo::installs::list(conn, &tenant, "acme-clinic")?,
            ))
        })
        .await;
    assert!(acc_row.is_none() && left.is_empty());
    // The id can be taken again, with no installs.
    app.create_account("acme-clinic").await;
    let r = req(&app, Method::GET, "/v1/accounts/acme-clinic/installs", None).await;
    assert_eq!(r.json["installs"], json!([]));
}

crate::both_backends! {
    accounts_create_list_get_delete => accounts_lifecycle;
}
