//! What no request may do: read or change another tenant's data, leave a secret in plaintext at
//! rest, or change anything with bad input (invalid path ids, malformed bodies, wrong verbs,
//! oversized payloads).

use crate::support::{
    canvas_bearer_setup, create_bearer_install, distinctive, install_row, problem, req, req_as,
    send_raw, set, snapshot, Backend, Resp, TestApp,
};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;

// ---------------------------------------------------------------------------------------------
// Tenant isolation
// ---------------------------------------------------------------------------------------------

async fn tenant_isolation(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let a = app.api_key.clone();
    let (tenant_b, b) = app.new_tenant("Tenant B").await;
    assert_ne!(tenant_b, app.tenant);

    // Tenant A: an account with a static bearer install, a setup, an extra key.
    canvas_bearer_setup(&app, &distinctive("tok-a")).await;
    app.create_account("shared-name").await;
    let a_install = create_bearer_install(&app, &a, "shared-name").await;
    let a_ins = a_install["id"].as_str().unwrap().to_owned();
    let r = req(
        &app,
        Method::POST,
        "/v1/api-keys",
        Some(json!({"name": "a-extra"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let a_key_id = r.json["id"].as_str().unwrap().to_owned();
    let a_key = r.json["api_key"].as_str().unwrap().to_owned();

    // Tenant B names A's things: 404 every time, never 403, and nothing changes.
    let before = snapshot(&app).await;
    let probes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/v1/accounts/shared-name".into(), None),
        (Method::DELETE, "/v1/accounts/shared-name".into(), None),
        (
            Method::GET,
            "/v1/accounts/shared-name/installs".into(),
            None,
        ),
        (
            Method::POST,
            "/v1/accounts/shared-name/installs".into(),
            Some(json!({"connector": "canvas", "auth_type": "static_bearer"})),
        ),
        (
            Method::GET,
            format!("/v1/accounts/shared-name/installs/{a_ins}"),
            None,
        ),
        (
            Method::DELETE,
            format!("/v1/accounts/shared-name/installs/{a_ins}"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/accounts/shared-name/installs/{a_ins}/authorize"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/accounts/shared-name/installs/{a_ins}/methods/get_patient"),
            Some(json!({"params": {"id": "x"}})),
        ),
        (Method::GET, "/v1/connectors/canvas/setup".into(), None),
        (Method::DELETE, "/v1/connectors/canvas/setup".into(), None),
        (Method::DELETE, format!("/v1/api-keys/{a_key_id}"), None),
    ];
    for (m, path, body) in &probes {
        let r = req_as(&app, &b, m.clone(), path, body.clone()).await;
        assert_ne!(r.status, StatusCode::FORBIDDEN, "{m} {path}");
        problem(&r, 404, "not_found");
    }
    assert_eq!(
        snapshot(&app).await,
        before,
        "tenant B changed tenant A's data"
    );
    // A's things are intact.
    let r = req(
        &app,
        Method::GET,
        &format!("/v1/accounts/shared-name/installs/{a_ins}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = req_as(&app, &a_key, Method::GET, "/v1/accounts", None).await;
    assert_eq!(r.status, StatusCode::OK, "A's key was revoked by B");
    let r = req(&app, Method::GET, "/v1/connectors/canvas/setup", None).await;
    assert_eq!(r.status, StatusCode::OK);

    // Ids are per tenant: B may use the same account id; its install is invisible to A.
    let r = req_as(
        &app,
        &b,
        Method::POST,
        "/v1/accounts",
        Some(json!({"id": "shared-name", "name": "B's own"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = req_as(
        &app,
        &b,
        Method::POST,
        "/v1/accounts",
        Some(json!({"name": "B two"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let b_acc2 = r.json["id"].as_str().unwrap().to_owned();
    let r = req_as(
        &app,
        &b,
        Method::PUT,
        "/v1/connectors/canvas/setup",
        Some(json!({"settings": {"api_token": "tok-b", "fhir_base_url": "http://127.0.0.1:9/"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let b_install = create_bearer_install(&app, &b, "shared-name").await;
    let b_ins = b_install["id"].as_str().unwrap().to_owned();
    let r = req(
        &app,
        Method::GET,
        &format!("/v1/accounts/shared-name/installs/{b_ins}"),
        None,
    )
    .await;
    problem(&r, 404, "not_found");
    let r = req(&app, Method::GET, &format!("/v1/accounts/{b_acc2}"), None).await;
    problem(&r, 404, "not_found");

    // Lists are disjoint.
    let ids = |v: &Value, key: &str| -> BTreeSet<String> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let la = req(&app, Method::GET, "/v1/accounts", None).await;
    let lb = req_as(&app, &b, Method::GET, "/v1/accounts", None).await;
    assert_eq!(ids(&la.json, "accounts"), set(&["shared-name"]));
    assert_eq!(
        ids(&lb.json, "accounts"),
        set(&["shared-name", b_acc2.as_str()])
    );
    assert_eq!(
        la.json["accounts"][0]["name"], "Account shared-name",
        "A sees its own account"
    );
    let ia = req(&app, Method::GET, "/v1/accounts/shared-name/installs", None).await;
    let ib = req_as(
        &app,
        &b,
        Method::GET,
        "/v1/accounts/shared-name/installs",
        None,
    )
    .await;
    assert_eq!(ids(&ia.json, "installs"), set(&[a_ins.as_str()]));
    assert_eq!(ids(&ib.json, "installs"), set(&[b_ins.as_str()]));
    let ka = req(&app, Method::GET, "/v1/api-keys", None).await;
    let kb = req_as(&app, &b, Method::GET, "/v1/api-keys", None).await;
    let (ka, kb) = (ids(&ka.json, "api_keys"), ids(&kb.json, "api_keys"));
    assert_eq!(ka.len(), 2);
    assert_eq!(kb.len(), 1);
    assert!(ka.is_disjoint(&kb));
    // Each tenant sees its own setup values.
    let r = req_as(&app, &b, Method::GET, "/v1/connectors/canvas/setup", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["settings"]["api_token"], json!({"set": true}));

    // Deleting B's same-named account leaves A's alone.
    let r = req_as(&app, &b, Method::DELETE, "/v1/accounts/shared-name", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(install_row(&app, &b_ins).await.is_none());
    assert!(install_row(&app, &a_ins).await.is_some());
    let r = req(&app, Method::GET, "/v1/accounts/shared-name", None).await;
    assert_eq!(r.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// Secrets sealed at rest
// ---------------------------------------------------------------------------------------------

/// The "done when" of the issue: no setup secret and no install token in plaintext at rest.
async fn secrets_sealed_at_rest(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let epic_secret = distinctive("epic-client-secret");
    let epic_client = distinctive("epic-client-id");
    let canvas_token = distinctive("canvas-api-token");
    let r = req(
        &app,
        Method::PUT,
        "/v1/connectors/epic/setup",
        Some(json!({"settings": {
            "endpoint": "http://127.0.0.1:9/",
            "client_id": epic_client,
            "client_secret": epic_secret,
        }})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    canvas_bearer_setup(&app, &canvas_token).await;
    app.create_account("acme").await;
    let bearer = create_bearer_install(&app, &app.api_key, "acme").await;
    assert_eq!(bearer["status"], "authorized");
    let r = req(
        &app,
        Method::POST,
        "/v1/accounts/acme/installs",
        Some(json!({"connector": "epic"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let epic_ins = r.json["id"].as_str().unwrap().to_owned();
    let bearer_ins = bearer["id"].as_str().unwrap().to_owned();

    // No API answer shows them.
    for path in [
        "/v1/connectors/epic/setup".to_string(),
        "/v1/connectors/canvas/setup".to_string(),
        "/v1/accounts/acme/installs".to_string(),
        format!("/v1/accounts/acme/installs/{bearer_ins}"),
        format!("/v1/accounts/acme/installs/{epic_ins}"),
    ] {
        let r = req(&app, Method::GET, &path, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
        assert!(
            !r.text.contains(&epic_secret) && !r.text.contains(&canvas_token),
            "{path}"
        );
    }

    // Every byte of the database: the non-secret client id is there in clear (so the dump is
    // real), the secret and the token are not.
    let dump = app.dump_database();
    assert!(
        dump.contains(&epic_client),
        "dump does not show the stored setup"
    );
    assert!(dump.contains(&bearer_ins), "dump does not show the install");
    assert!(
        !dump.contains(&epic_secret),
        "Epic client secret stored in plaintext"
    );
    assert!(
        !dump.contains(&canvas_token),
        "Canvas API token stored in plaintext"
    );

    // The install still resolves its token from the sealed setup (a call reaches the FHIR
    // base: nothing listens on port 9, so the failure is an upstream one, not a settings one).
    let r = req(
        &app,
        Method::POST,
        &format!("/v1/accounts/acme/installs/{bearer_ins}/methods/get_patient"),
        Some(json!({"params": {"id": "abc"}})),
    )
    .await;
    assert!(r.status.is_server_error(), "{}", r.text);
    assert!(
        ["upstream_unavailable", "upstream_error", "upstream_timeout"]
            .contains(&r.json["code"].as_str().unwrap_or("")),
        "{}",
        r.text
    );
    assert!(!r.text.contains(&canvas_token));
}

// ---------------------------------------------------------------------------------------------
// Bad input changes nothing
// ---------------------------------------------------------------------------------------------

async fn invalid_ids_in_paths(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_account("ok").await;
    let too_long = "a".repeat(65);
    let before = snapshot(&app).await;
    for bad in ["a%20b", "..%2Fx", too_long.as_str(), ".x", "%C3%A9"] {
        let cases: Vec<(Method, String, Option<Value>)> = vec![
            (Method::GET, format!("/v1/accounts/{bad}"), None),
            (Method::DELETE, format!("/v1/accounts/{bad}"), None),
            (Method::GET, format!("/v1/accounts/{bad}/installs"), None),
            (
                Method::POST,
                format!("/v1/accounts/{bad}/installs"),
                Some(json!({"connector": "canvas"})),
            ),
            (Method::GET, format!("/v1/accounts/ok/installs/{bad}"), None),
            (
                Method::DELETE,
                format!("/v1/accounts/ok/installs/{bad}"),
                None,
            ),
            (Method::DELETE, format!("/v1/api-keys/{bad}"), None),
            (Method::GET, format!("/v1/connectors/{bad}"), None),
            (Method::GET, format!("/v1/connectors/{bad}/setup"), None),
        ];
        for (m, path, body) in cases {
            let r = req(&app, m.clone(), &path, body).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{m} {path}: {}", r.text);
            problem(&r, 400, "invalid_id");
        }
    }
    assert_eq!(snapshot(&app).await, before);
    // Unknown but well-formed ids are 404, not 400.
    let r = req(&app, Method::GET, "/v1/accounts/ok/installs/ins_nope", None).await;
    problem(&r, 404, "not_found");
    let r = req(&app, Method::GET, "/v1/accounts/nope", None).await;
    problem(&r, 404, "not_found");
}

async fn bad_input_changes_nothing(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| s.server.max_body_bytes = 1024).await;
    app.create_account("clinic").await;
    canvas_bearer_setup(&app, "tok").await;
    let auth = format!("Bearer {}", app.api_key);

    // (verb, path, a valid body, the same body with an unknown field)
    let endpoints: Vec<(Method, &str, Value, Value)> = vec![
        (
            Method::POST,
            "/v1/accounts",
            json!({"id": "new-acc", "name": "New"}),
            json!({"id": "new-acc", "name": "New", "colour": "x"}),
        ),
        (
            Method::POST,
            "/v1/api-keys",
            json!({"name": "k"}),
            json!({"name": "k", "scope": "admin"}),
        ),
        (
            Method::PUT,
            "/v1/connectors/canvas/setup",
            json!({"settings": {"api_token": "t2", "fhir_base_url": "http://127.0.0.1:9/x/"}}),
            json!({"settings": {"api_token": "t2"}, "tenant": "other"}),
        ),
        (
            Method::POST,
            "/v1/accounts/clinic/installs",
            json!({"connector": "canvas", "auth_type": "static_bearer"}),
            json!({"connector": "canvas", "auth_type": "static_bearer", "status": "authorized"}),
        ),
        (
            Method::PATCH,
            "/v1/tenant",
            json!({"allowed_return_urls": ["https://x.example/"]}),
            json!({"allowed_return_urls": ["https://x.example/"], "name": "renamed"}),
        ),
    ];
    for (m, path, valid, unknown_field) in &endpoints {
        let valid_text = valid.to_string();
        // Padding with whitespace keeps the JSON valid: only the size is wrong.
        let oversize = format!(
            "{}{}",
            &valid_text[..valid_text.len() - 1],
            " ".repeat(1100) + "}"
        );
        assert!(serde_json::from_str::<Value>(&oversize).is_ok());
        let malformed = valid_text[..valid_text.len() - 2].to_string();
        let cases: Vec<(&str, Option<&str>, String, u16, &str)> = vec![
            (
                "malformed JSON",
                Some("application/json"),
                malformed,
                400,
                "invalid_request",
            ),
            (
                "not an object",
                Some("application/json"),
                "[1,2]".into(),
                400,
                "invalid_request",
            ),
            (
                "empty body",
                Some("application/json"),
                String::new(),
                400,
                "invalid_request",
            ),
            (
                "unknown field",
                Some("application/json"),
                unknown_field.to_string(),
                400,
                "invalid_request",
            ),
            (
                "oversize",
                Some("application/json"),
                oversize,
                413,
                "payload_too_large",
            ),
            (
                "text/plain",
                Some("text/plain"),
                valid_text.clone(),
                415,
                "unsupported_media_type",
            ),
            (
                "form",
                Some("application/x-www-form-urlencoded"),
                valid_text.clone(),
                415,
                "unsupported_media_type",
            ),
            (
                "no content type",
                None,
                valid_text.clone(),
                415,
                "unsupported_media_type",
            ),
        ];
        for (what, ct, body, status, code) in cases {
            let before = snapshot(&app).await;
            let r = send_raw(
                &app,
                m.clone(),
                path,
                Some(&auth),
                ct,
                Some(body.into_bytes()),
            )
            .await;
            assert_eq!(
                r.status.as_u16(),
                status,
                "{what} on {m} {path}: {}",
                r.text
            );
            problem(&r, status, code);
            assert_eq!(
                snapshot(&app).await,
                before,
                "{what} on {m} {path} changed the database"
            );
        }
        // Control: the valid body is accepted (so the cases above failed for their reason).
        let r = send_raw(
            &app,
            m.clone(),
            path,
            Some(&auth),
            Some("application/json"),
            Some(valid_text.clone().into_bytes()),
        )
        .await;
        assert!(
            r.status.is_success(),
            "valid body refused on {m} {path}: {}",
            r.text
        );
    }
    // A body of the wrong shape is refused without echoing its values (a console pasting a
    // secret into the wrong field must not get it back in an error body it may log).
    let leak = distinctive("pasted-secret");
    for (m, path, body) in [
        (
            Method::PUT,
            "/v1/connectors/canvas/setup",
            json!({"settings": leak}),
        ),
        (
            Method::POST,
            "/v1/accounts/clinic/installs",
            json!({"connector": "canvas", "settings": leak}),
        ),
        (
            Method::POST,
            "/v1/accounts/clinic/installs",
            json!({"connector": ["canvas", leak]}),
        ),
        (Method::POST, "/v1/api-keys", json!({"name": {"k": leak}})),
        (
            Method::POST,
            "/v1/accounts",
            json!({"id": "x", "name": ["a", leak]}),
        ),
        (
            Method::PATCH,
            "/v1/tenant",
            json!({"allowed_return_urls": leak}),
        ),
        (
            Method::PUT,
            "/v1/connectors/canvas/setup",
            json!({"settings": {}, "secret": leak}),
        ),
        (
            Method::PUT,
            "/v1/connectors/canvas/setup",
            json!({"settings": format!("with \"quotes\" {leak}")}),
        ),
    ] {
        let before = snapshot(&app).await;
        let r = req(&app, m.clone(), path, Some(body.clone())).await;
        problem(&r, 400, "invalid_request").hides(&[&leak]);
        assert_eq!(snapshot(&app).await, before);
    }

    // A body exactly at the limit is accepted.
    let base = json!({"id": "at-limit", "name": "L"}).to_string();
    let at_limit = format!(
        "{}{}}}",
        &base[..base.len() - 1],
        " ".repeat(1024 - base.len())
    );
    assert_eq!(at_limit.len(), 1024);
    let r = send_raw(
        &app,
        Method::POST,
        "/v1/accounts",
        Some(&auth),
        Some("application/json"),
        Some(at_limit.into_bytes()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    // Unknown routes and verbs are problems too.
    let r = req(&app, Method::GET, "/v1/nope", None).await;
    problem(&r, 404, "not_found");
    // A known route with a verb it does not take: 405 naming the verbs it does take, before
    // any authentication or body handling, and nothing changes.
    let before = snapshot(&app).await;
    for (m, path, allowed) in [
        (Method::PUT, "/v1/accounts", set(&["GET", "POST"])),
        (
            Method::PATCH,
            "/v1/accounts/clinic",
            set(&["DELETE", "GET"]),
        ),
        (
            Method::POST,
            "/v1/connectors/epic/setup",
            set(&["DELETE", "GET", "PUT"]),
        ),
        (Method::DELETE, "/v1/tenant", set(&["GET", "PATCH"])),
        (Method::POST, "/healthz", set(&["GET"])),
    ] {
        let r = req(&app, m.clone(), path, Some(json!({"id": "x", "name": "x"}))).await;
        problem(&r, 405, "method_not_allowed");
        let allow: BTreeSet<String> = r
            .headers
            .get("allow")
            .unwrap_or_else(|| panic!("405 without Allow on {m} {path}"))
            .to_str()
            .unwrap()
            .split(',')
            .map(|v| v.trim().to_owned())
            .collect();
        assert_eq!(allow, allowed, "{m} {path}");
    }
    assert_eq!(snapshot(&app).await, before);
    let r = req(&app, Method::PUT, "/v1/accounts/clinic/nothing-here", None).await;
    problem(&r, 404, "not_found");

    // A body without Content-Length that grows past the limit is cut off too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b' '; 200])).collect();
    let r = app
        .http
        .post(app.url("/v1/accounts"))
        .bearer_auth(&app.api_key)
        .header(CONTENT_TYPE, "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let r = Resp::read(r).await;
    problem(&r, 413, "payload_too_large");
    assert_eq!(snapshot(&app).await, before);
}

crate::both_backends! {
    tenants_are_isolated => tenant_isolation;
    secrets_are_sealed_at_rest => secrets_sealed_at_rest;
    invalid_path_ids_are_400 => invalid_ids_in_paths;
    bad_input_changes_nothing => bad_input_changes_nothing;
}
