//! Installs: a static bearer install's lifecycle, the start of an authorization-code flow, and
//! the validation of a new install.

use crate::support::{
    canvas_bearer_setup, distinctive, error_fields, install_row, oauth_states_of, problem, req,
    req_as, set, snapshot, Backend, TestApp,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;

async fn static_bearer_install_lifecycle(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = distinctive("canvas-token");
    canvas_bearer_setup(&app, &token).await;
    app.create_account("clinic").await;

    let r = req(
        &app,
        Method::POST,
        "/v1/accounts/clinic/installs",
        Some(json!({
            "connector": "canvas",
            "auth_type": "static_bearer",
            "settings": {"fhir_base_url": "http://127.0.0.1:9/fumage-clinic"},
        })),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(!r.text.contains(&token), "token in the create response");
    let ins = r.json.clone();
    let id = ins["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ins_"), "{id}");
    assert_eq!(ins["connector"], "canvas");
    assert_eq!(ins["status"], "authorized");
    assert_eq!(ins["auth_type"], "static_bearer");
    assert!(ins.get("authorize_url").is_none_or(Value::is_null), "{ins}");
    // The override is normalised (trailing slash) and shown; the token is not an override.
    assert_eq!(
        ins["settings"],
        json!({"fhir_base_url": "http://127.0.0.1:9/fumage-clinic/"})
    );

    let r = req(
        &app,
        Method::GET,
        &format!("/v1/accounts/clinic/installs/{id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(!r.text.contains(&token));
    for k in [
        "id",
        "connector",
        "status",
        "scopes",
        "expires_at",
        "context",
    ] {
        assert!(
            r.json.as_object().unwrap().contains_key(k),
            "{k} missing: {}",
            r.text
        );
    }
    assert_eq!(r.json["id"], id.as_str());
    assert_eq!(r.json["status"], "authorized");
    for k in ["access_token", "refresh_token", "token", "api_token"] {
        assert!(r.json.get(k).is_none(), "{k} shown: {}", r.text);
    }

    let r = req(&app, Method::GET, "/v1/accounts/clinic/installs", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let list = r.json["installs"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["status"], "authorized");
    assert!(!r.text.contains(&token));

    let row = install_row(&app, &id).await.expect("install row");
    assert_eq!(row.status, "authorized");
    assert_eq!(row.account_id, "clinic");
    assert_eq!(row.tenant_id, app.tenant);

    let r = req(
        &app,
        Method::DELETE,
        &format!("/v1/accounts/clinic/installs/{id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(
        install_row(&app, &id).await.is_none(),
        "row survived the delete"
    );
    let r = req(
        &app,
        Method::GET,
        &format!("/v1/accounts/clinic/installs/{id}"),
        None,
    )
    .await;
    problem(&r, 404, "not_found");
    let r = req(
        &app,
        Method::DELETE,
        &format!("/v1/accounts/clinic/installs/{id}"),
        None,
    )
    .await;
    problem(&r, 404, "not_found");
    let r = req(&app, Method::GET, "/v1/accounts/clinic/installs", None).await;
    assert_eq!(r.json["installs"], json!([]));
}

async fn auth_code_install_starts_authorization(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = req(
        &app,
        Method::PUT,
        "/v1/connectors/epic/setup",
        Some(json!({"settings": {
            "endpoint": "http://127.0.0.1:9/interconnect/",
            "client_id": "epic-app",
            "client_secret": "s3cret-value",
        }})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.create_account("hospital").await;

    let r = req(
        &app,
        Method::POST,
        "/v1/accounts/hospital/installs",
        Some(json!({"connector": "epic", "return_url": "https://console.example/done"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["status"], "pending_authorization");
    assert_eq!(r.json["connector"], "epic");
    assert!(!r.text.contains("s3cret-value"));
    let id = r.json["id"].as_str().unwrap().to_owned();
    let url = url::Url::parse(r.json["authorize_url"].as_str().expect("authorize_url")).unwrap();
    assert_eq!(
        format!("{}://{}{}", url.scheme(), url.authority(), url.path()),
        "http://127.0.0.1:9/interconnect/oauth2/authorize"
    );
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "epic-app");
    assert_eq!(
        q["redirect_uri"],
        format!("{}/connector/callback", app.base)
    );
    assert_eq!(q["aud"], "http://127.0.0.1:9/interconnect/api/FHIR/R4/");
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(
        q["state"].len() >= 32 && q["code_challenge"].len() >= 43,
        "{url}"
    );
    assert!(!q.contains_key("client_secret"));
    assert!(q["scope"].contains("user/Patient.read"));

    // The state is stored hashed, never in clear.
    assert_eq!(oauth_states_of(&app, &id).await, 1);
    let dump = app.dump_database();
    assert!(
        !dump.contains(q["state"].as_str()),
        "state stored in plaintext"
    );
    let row = install_row(&app, &id).await.unwrap();
    assert_eq!(row.status, "pending_authorization");
    assert_eq!(
        row.return_url.as_deref(),
        Some("https://console.example/done")
    );
    assert!(row.access_token.is_none());

    let r = req(
        &app,
        Method::GET,
        &format!("/v1/accounts/hospital/installs/{id}"),
        None,
    )
    .await;
    assert_eq!(r.json["status"], "pending_authorization");
    assert!(r.json["expires_at"].is_null() && r.json["scopes"].is_null());

    // A per-install endpoint override (pasted from the directory) moves the authorize URL.
    let r = req(
        &app,
        Method::POST,
        "/v1/accounts/hospital/installs",
        Some(json!({"connector": "epic", "settings": {"endpoint": "http://127.0.0.1:9/Org2/API/FHIR/R4/"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["settings"]["endpoint"], "http://127.0.0.1:9/Org2/");
    let url2 = r.json["authorize_url"].as_str().unwrap();
    assert!(
        url2.starts_with("http://127.0.0.1:9/Org2/oauth2/authorize?"),
        "{url2}"
    );

    // Deleting the install drops its pending authorization.
    let r = req(
        &app,
        Method::DELETE,
        &format!("/v1/accounts/hospital/installs/{id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(oauth_states_of(&app, &id).await, 0);
    assert!(install_row(&app, &id).await.is_none());
}

async fn install_validation(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_account("clinic").await;
    let path = "/v1/accounts/clinic/installs";

    // Missing required settings (no setup yet): 422 listing each of them.
    let before = snapshot(&app).await;
    let r = req(&app, Method::POST, path, Some(json!({"connector": "epic"}))).await;
    problem(&r, 422, "invalid_settings");
    assert_eq!(error_fields(&r), set(&["client_id", "client_secret"]));
    let r = req(
        &app,
        Method::POST,
        path,
        Some(json!({"connector": "canvas", "auth_type": "static_bearer"})),
    )
    .await;
    problem(&r, 422, "invalid_settings");
    assert_eq!(error_fields(&r), set(&["api_token", "fhir_base_url"]));
    let r = req(
        &app,
        Method::POST,
        path,
        Some(json!({"connector": "canvas", "auth_type": "static_bearer", "settings": {"fhir_base_url": "http://127.0.0.1:9/"}})),
    )
    .await;
    problem(&r, 422, "invalid_settings");
    assert_eq!(error_fields(&r), set(&["api_token"]));
    assert_eq!(snapshot(&app).await, before);

    let r = req(
        &app,
        Method::PUT,
        "/v1/connectors/epic/setup",
        Some(json!({"settings": {"endpoint": "http://127.0.0.1:9/", "client_id": "c", "client_secret": "s"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    canvas_bearer_setup(&app, "tok").await;
    let before = snapshot(&app).await;

    let cases: Vec<(Value, u16, &str, Option<BTreeSet<String>>)> = vec![
        (json!({"connector": "nope"}), 404, "unknown_connector", None),
        (
            json!({"connector": "epic", "auth_type": "static_bearer"}),
            422,
            "unsupported_auth_type",
            None,
        ),
        (
            json!({"connector": "epic", "auth_type": "oauth2_client_credentials"}),
            422,
            "unsupported_auth_type",
            None,
        ),
        (
            json!({"connector": "canvas", "auth_type": "magic"}),
            422,
            "unsupported_auth_type",
            None,
        ),
        // client_id and client_secret belong to the setup.
        (
            json!({"connector": "canvas", "auth_type": "static_bearer", "settings": {"client_secret": "override-secret"}}),
            422,
            "invalid_settings",
            Some(set(&["client_secret"])),
        ),
        (
            json!({"connector": "epic", "settings": {"client_secret": "x", "client_id": "y"}}),
            422,
            "invalid_settings",
            Some(set(&["client_id", "client_secret"])),
        ),
        (
            json!({"connector": "epic", "settings": {"endpoint": "not a url", "colour": "x"}}),
            422,
            "invalid_settings",
            Some(set(&["colour", "endpoint"])),
        ),
        (
            json!({"connector": "epic", "return_url": "https://evil.example/steal"}),
            400,
            "invalid_return_url",
            None,
        ),
        // A look-alike host is not the allowed prefix.
        (
            json!({"connector": "epic", "return_url": "https://console.example.evil.com/"}),
            400,
            "invalid_return_url",
            None,
        ),
        (
            json!({"connector": "epic", "return_url": "javascript:alert(1)"}),
            400,
            "invalid_return_url",
            None,
        ),
        (
            json!({"connector": "epic", "return_url": "https://partner.example/app/done"}),
            400,
            "invalid_return_url",
            None,
        ),
    ];
    for (body, status, code, fields) in &cases {
        let r = req(&app, Method::POST, path, Some(body.clone())).await;
        problem(&r, *status, code).hides(&["override-tok"]);
        if let Some(f) = fields {
            assert_eq!(&error_fields(&r), f, "{body}");
        }
    }
    assert_eq!(
        snapshot(&app).await,
        before,
        "a rejected install changed the database"
    );
    let r = req(&app, Method::GET, "/v1/accounts/clinic/installs", None).await;
    assert_eq!(r.json["installs"], json!([]));

    // A tenant-level prefix admits the URL; an invalid prefix is refused.
    let r = req(
        &app,
        Method::PATCH,
        "/v1/tenant",
        Some(json!({"allowed_return_urls": ["not a url"]})),
    )
    .await;
    problem(&r, 400, "invalid_return_url");
    let r = req(
        &app,
        Method::PATCH,
        "/v1/tenant",
        Some(json!({"allowed_return_urls": ["https://partner.example/app/"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.json["allowed_return_urls"],
        json!(["https://partner.example/app/"])
    );
    let r = req(&app, Method::GET, "/v1/tenant", None).await;
    assert_eq!(
        r.json["allowed_return_urls"],
        json!(["https://partner.example/app/"])
    );
    let r = req(
        &app,
        Method::POST,
        path,
        Some(json!({"connector": "epic", "return_url": "https://partner.example/app/done"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["return_url"], "https://partner.example/app/done");
    // Still only on the prefix; the global prefix keeps working too.
    let r = req(
        &app,
        Method::POST,
        path,
        Some(json!({"connector": "epic", "return_url": "https://partner.example/other"})),
    )
    .await;
    problem(&r, 400, "invalid_return_url");
    let r = req(
        &app,
        Method::POST,
        path,
        Some(json!({"connector": "epic", "return_url": "https://console.example/x"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // Another tenant does not get this tenant's prefixes.
    let (_, b) = app.new_tenant("B").await;
    let r = req_as(
        &app,
        &b,
        Method::POST,
        "/v1/accounts",
        Some(json!({"id": "b1", "name": "B1"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = req_as(
        &app,
        &b,
        Method::PUT,
        "/v1/connectors/epic/setup",
        Some(json!({"settings": {"endpoint": "http://127.0.0.1:9/", "client_id": "c", "client_secret": "s"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = req_as(
        &app,
        &b,
        Method::POST,
        "/v1/accounts/b1/installs",
        Some(json!({"connector": "epic", "return_url": "https://partner.example/app/done"})),
    )
    .await;
    problem(&r, 400, "invalid_return_url");
    // An unknown account: 404.
    let r = req(
        &app,
        Method::POST,
        "/v1/accounts/ghost/installs",
        Some(json!({"connector": "epic"})),
    )
    .await;
    problem(&r, 404, "not_found");
}

crate::both_backends! {
    static_bearer_install_lifecycle => static_bearer_install_lifecycle;
    auth_code_install_starts_authorization => auth_code_install_starts_authorization;
    install_creation_is_validated => install_validation;
}
