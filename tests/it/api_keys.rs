//! API keys and authentication: create, list and revoke keys (stored only as hashes), and every
//! way a request can fail to authenticate.

use crate::support::{problem, req, req_as, send_raw, set, snapshot, Backend, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

/// The last 24 characters of an API key: a piece of its random secret part (alone, without the
/// public id, so a store that split the key would still be caught).
fn secret_tail(key: &str) -> &str {
    assert!(key.len() > 60, "unexpectedly short key");
    &key[key.len() - 24..]
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

async fn api_keys_lifecycle(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    // Create: 201 with the plaintext once, never cached.
    let r = req(
        &app,
        Method::POST,
        "/v1/api-keys",
        Some(json!({"name": "workflow-prod"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        r.headers.get("cache-control").map(|v| v.to_str().unwrap()),
        Some("no-store")
    );
    let created = r.json.clone();
    let obj = created.as_object().unwrap();
    for k in ["id", "name", "prefix", "created_at", "api_key"] {
        assert!(obj[k].is_string(), "{k} missing: {created}");
    }
    let key_id = created["id"].as_str().unwrap().to_owned();
    let key = created["api_key"].as_str().unwrap().to_owned();
    let prefix = created["prefix"].as_str().unwrap().to_owned();
    assert!(key_id.starts_with("key_"), "{key_id}");
    assert_eq!(created["name"], "workflow-prod");
    assert!(
        key.starts_with(&prefix) && key.len() > prefix.len() + 20,
        "{created}"
    );
    assert_ne!(key, app.api_key);

    // The new key works and belongs to the same tenant.
    let acc = req_as(
        &app,
        &key,
        Method::POST,
        "/v1/accounts",
        Some(json!({"id": "made-with-new-key", "name": "N"})),
    )
    .await;
    assert_eq!(acc.status, StatusCode::CREATED, "{}", acc.text);
    let r = req(&app, Method::GET, "/v1/accounts/made-with-new-key", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // A third key, never used yet: last_used_at is null until its first use.
    let r = req(
        &app,
        Method::POST,
        "/v1/api-keys",
        Some(json!({"name": "unused"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let unused_id = r.json["id"].as_str().unwrap().to_owned();
    let unused_key = r.json["api_key"].as_str().unwrap().to_owned();

    // List: every key with its public fields and never a secret.
    let r = req(&app, Method::GET, "/v1/api-keys", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let list = r.json["api_keys"].as_array().unwrap().clone();
    assert_eq!(list.len(), 3, "{}", r.text);
    for k in &list {
        let o = k.as_object().unwrap();
        for f in ["id", "name", "prefix", "created_at", "last_used_at"] {
            assert!(o.contains_key(f), "{f} missing in {k}");
        }
        assert!(
            !o.contains_key("api_key") && !o.contains_key("key_hash"),
            "{k}"
        );
    }
    for secret in [&app.api_key, &key, &unused_key] {
        assert!(
            !r.text.contains(secret.as_str()),
            "a plaintext key is listed"
        );
        let tail = secret_tail(secret);
        assert!(!r.text.contains(tail), "a key's secret part is listed");
        assert!(
            !r.text.contains(&sha256_hex(secret)),
            "a key hash is listed"
        );
    }
    let by_id = |id: &str| list.iter().find(|k| k["id"] == id).cloned().unwrap();
    assert_eq!(by_id(&key_id)["name"], "workflow-prod");
    assert_eq!(by_id(&key_id)["prefix"], prefix.as_str());
    assert!(
        by_id(&key_id)["last_used_at"].is_string(),
        "used key shows last use"
    );
    assert!(
        by_id(&unused_id)["last_used_at"].is_null(),
        "unused key has no last use"
    );
    let names: BTreeSet<String> = list
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, set(&["initial", "unused", "workflow-prod"]));

    // last_used_at is set by the first use.
    let r = req_as(&app, &unused_key, Method::GET, "/v1/accounts", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = req(&app, Method::GET, "/v1/api-keys", None).await;
    let now_used = r.json["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == unused_id.as_str())
        .unwrap()
        .clone();
    assert!(now_used["last_used_at"].is_string(), "{now_used}");

    // Storage: only the SHA-256 of the whole key; the plaintext is nowhere in the database.
    let (kid, tenant) = (key_id.clone(), app.tenant.clone());
    let row = app
        .db(move |conn| switchboard_db::repo::api_keys::find(conn, &tenant, &kid))
        .await
        .expect("key row");
    assert_eq!(row.key_hash, sha256_hex(&key));
    assert!(row.last_used_at.is_some());
    let dump = app.dump_database();
    assert!(
        dump.contains(&row.key_hash) && dump.contains(&prefix),
        "the dump is not the database (hash or prefix missing)"
    );
    for secret in [&app.api_key, &key, &unused_key] {
        assert!(!dump.contains(secret.as_str()), "plaintext API key stored");
        assert!(!dump.contains(secret_tail(secret)));
    }

    // Revoke: 204, then the key is refused at once.
    let r = req(
        &app,
        Method::DELETE,
        &format!("/v1/api-keys/{key_id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = req_as(&app, &key, Method::GET, "/v1/accounts", None).await;
    problem(&r, 401, "unauthorized");
    let r = req(&app, Method::GET, "/v1/api-keys", None).await;
    let ids: Vec<&str> = r.json["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert!(!ids.contains(&key_id.as_str()), "revoked key still listed");
    assert_eq!(ids.len(), 2);
    let (kid, tenant) = (key_id.clone(), app.tenant.clone());
    let row = app
        .db(move |conn| switchboard_db::repo::api_keys::find(conn, &tenant, &kid))
        .await
        .expect("revoked key row kept for audit");
    assert!(row.revoked_at.is_some());
    // Revoking again, or an unknown key: 404.
    let r = req(
        &app,
        Method::DELETE,
        &format!("/v1/api-keys/{key_id}"),
        None,
    )
    .await;
    problem(&r, 404, "not_found");
    let r = req(&app, Method::DELETE, "/v1/api-keys/key_doesnotexist", None).await;
    problem(&r, 404, "not_found");
    // The other keys keep working.
    let r = req_as(&app, &unused_key, Method::GET, "/v1/api-keys", None).await;
    assert_eq!(r.status, StatusCode::OK);
    // A key name is required.
    let r = req(
        &app,
        Method::POST,
        "/v1/api-keys",
        Some(json!({"name": "  "})),
    )
    .await;
    problem(&r, 400, "invalid_request");
}

async fn authentication_failures(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let unknown_key = format!(
        "sbk_{}_{}",
        switchboard_core::random_token(16),
        switchboard_core::random_token(32)
    );
    let tampered = format!("{}x", app.api_key);
    let basic = "Basic dXNlcjpwYXNz".to_string();
    let no_scheme = app.api_key.clone();
    let bare = "Bearer".to_string();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing header", None),
        ("basic scheme", Some(basic)),
        ("no scheme", Some(no_scheme)),
        ("scheme only", Some(bare)),
        ("empty token", Some("Bearer  ".into())),
        ("not a key", Some("Bearer hello".into())),
        ("unknown key", Some(format!("Bearer {unknown_key}"))),
        ("tampered key", Some(format!("Bearer {tampered}"))),
    ];
    for path in ["/v1/accounts", "/v1/connectors", "/v1/api-keys"] {
        for (what, auth) in &cases {
            let r = send_raw(&app, Method::GET, path, auth.as_deref(), None, None).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{what} on {path}: {}",
                r.text
            );
            problem(&r, 401, "unauthorized");
            assert_eq!(
                r.headers
                    .get("www-authenticate")
                    .map(|v| v.to_str().unwrap()),
                Some("Bearer"),
                "{what}"
            );
        }
    }
    // A failed authentication creates nothing.
    let before = snapshot(&app).await;
    let r = send_raw(
        &app,
        Method::POST,
        "/v1/accounts",
        Some(&format!("Bearer {unknown_key}")),
        Some("application/json"),
        Some(br#"{"id":"nope","name":"Nope"}"#.to_vec()),
    )
    .await;
    problem(&r, 401, "unauthorized");
    assert_eq!(snapshot(&app).await, before);
    // The scheme is case-insensitive (RFC 9110): the real key works with "bearer".
    let r = send_raw(
        &app,
        Method::GET,
        "/v1/accounts",
        Some(&format!("bearer {}", app.api_key)),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

crate::both_backends! {
    api_keys_create_list_revoke => api_keys_lifecycle;
    authentication_failures_are_401 => authentication_failures;
}
