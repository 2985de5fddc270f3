//! The operational endpoints: health, readiness, metrics (no ids or secrets in labels) and the
//! route table of API.md.

use crate::support::{
    canvas_bearer_setup, create_bearer_install, distinctive, problem, req, send_raw, Backend,
    TestApp,
};
use reqwest::{Method, StatusCode};

/// Every route of API.md (verb, path template).
const API_MD_ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/connectors"),
    ("get", "/v1/connectors/{connector}"),
    ("put", "/v1/connectors/{connector}/setup"),
    ("get", "/v1/connectors/{connector}/setup"),
    ("delete", "/v1/connectors/{connector}/setup"),
    ("post", "/v1/api-keys"),
    ("get", "/v1/api-keys"),
    ("delete", "/v1/api-keys/{id}"),
    ("post", "/v1/accounts"),
    ("get", "/v1/accounts"),
    ("get", "/v1/accounts/{account}"),
    ("delete", "/v1/accounts/{account}"),
    ("post", "/v1/accounts/{account}/installs"),
    ("get", "/v1/accounts/{account}/installs"),
    ("get", "/v1/accounts/{account}/installs/{install}"),
    (
        "post",
        "/v1/accounts/{account}/installs/{install}/authorize",
    ),
    ("delete", "/v1/accounts/{account}/installs/{install}"),
    (
        "post",
        "/v1/accounts/{account}/installs/{install}/methods/{method}",
    ),
    ("get", "/connector/callback"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

async fn operational_endpoints(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for path in ["/healthz", "/readyz"] {
        let r = send_raw(&app, Method::GET, path, None, None, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
    }

    // Traffic with ids and secrets in paths and headers.
    let token = distinctive("metrics-token");
    canvas_bearer_setup(&app, &token).await;
    app.create_account("metrics-probe-account").await;
    let ins = create_bearer_install(&app, &app.api_key, "metrics-probe-account").await;
    let ins_id = ins["id"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        let r = req(
            &app,
            Method::GET,
            "/v1/accounts/metrics-probe-account",
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = req(
        &app,
        Method::GET,
        &format!("/v1/accounts/metrics-probe-account/installs/{ins_id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = req(
        &app,
        Method::GET,
        "/no-such-route/unmatched-secret-segment",
        None,
    )
    .await;
    problem(&r, 404, "not_found");
    let r = send_raw(
        &app,
        Method::GET,
        "/v1/accounts",
        Some("Bearer sbk_wrong_key"),
        None,
        None,
    )
    .await;
    problem(&r, 401, "unauthorized");

    let r = send_raw(&app, Method::GET, "/metrics", None, None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.content_type().starts_with("text/plain"),
        "{}",
        r.content_type()
    );
    let text = &r.text;
    assert!(text.contains("switchboard_http_requests_total"), "{text}");
    let series = |route: &str, method: &str, status: u16| -> Option<u64> {
        let prefix = format!(
            "switchboard_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().parse().unwrap())
    };
    assert_eq!(
        series("/v1/accounts/{account}", "GET", 200),
        Some(2),
        "{text}"
    );
    assert_eq!(
        series("/v1/accounts/{account}/installs/{install}", "GET", 200),
        Some(1),
        "{text}"
    );
    assert!(series("/v1/accounts", "GET", 401).is_some(), "{text}");
    for secret in [
        "metrics-probe-account",
        ins_id.as_str(),
        app.tenant.as_str(),
        app.api_key.as_str(),
        token.as_str(),
        "unmatched-secret-segment",
        "sbk_",
    ] {
        assert!(!text.contains(secret), "metrics expose `{secret}`:\n{text}");
    }
    // Every label value is a route template, a method or a status.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some(labels) = line
            .split_once('{')
            .and_then(|(_, rest)| rest.rsplit_once('}'))
            .map(|(l, _)| l)
        else {
            // The database pool gauges and the audit queue are the only series without labels.
            assert!(
                line.starts_with("switchboard_db_pool_") || line.starts_with("switchboard_audit_"),
                "unlabelled series: {line}"
            );
            continue;
        };
        for pair in labels.split("\",") {
            let (k, v) = pair.split_once("=\"").unwrap();
            let v = v.trim_end_matches('"');
            match k {
                "route" => assert!(
                    v == "unmatched"
                        || API_MD_ROUTES.iter().any(|(_, p)| *p == v)
                        || v == "/v1/tenant",
                    "route label `{v}` is not a route template"
                ),
                "method" => {
                    assert!(["GET", "POST", "PUT", "PATCH", "DELETE", "OTHER"].contains(&v))
                }
                "status" => assert!(v.parse::<u16>().is_ok()),
                // A histogram bucket's bound.
                "le" => assert!(v == "+Inf" || v.parse::<f64>().is_ok(), "{line}"),
                // The hot-path caches and the token lifecycle: fixed words only.
                "cache" => assert!(["install", "api_key"].contains(&v), "{line}"),
                "result" => assert!(["hit", "miss"].contains(&v), "{line}"),
                "outcome" => assert!(
                    [
                        "refreshed",
                        "refreshed_elsewhere",
                        "invalid_grant",
                        "transient_error",
                        "timeout"
                    ]
                    .contains(&v),
                    "{line}"
                ),
                other => panic!("unexpected label {other} in {line}"),
            }
        }
    }

    // The OpenAPI document covers every route of API.md.
    let r = send_raw(&app, Method::GET, "/openapi.json", None, None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.content_type().starts_with("application/json"));
    let doc = &r.json;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    for (verb, path) in API_MD_ROUTES {
        let op = &doc["paths"][path][verb];
        assert!(op.is_object(), "{verb} {path} missing from /openapi.json");
        // Every path template parameter is declared.
        for seg in path.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let declared = op["parameters"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["name"] == name && p["in"] == "path"));
                assert!(
                    declared,
                    "{verb} {path}: path parameter {name} not declared"
                );
            }
        }
    }
}

crate::both_backends! {
    operational_endpoints => operational_endpoints;
}
