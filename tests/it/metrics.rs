//! `/metrics` read by a real Prometheus parser (PyPI `prometheus-client`, installed by
//! scripts/test into target/prometheus-venv): request and upstream latency histograms after real
//! method calls against FakeFhir, the database pool gauges, no id of ours in any label; the
//! dedicated listener (`metrics.bind`) and the scrape token (`metrics.token`); and the request
//! id (`X-Request-Id`: echoed, generated, a bad one replaced, on the request's log lines).

use crate::support::{log_capture, problem, repo_root, send_raw, Backend, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use switchboard_testkit::fhir::{FakeFhir, Fault, RetryAfter};

const TOKEN: &str = "canvas-metrics-token-8b3e";
const METHOD_ROUTE: &str = "/v1/accounts/{account}/installs/{install}/methods/{method}";

/// The venv's python with prometheus-client, or `PROMETHEUS_PYTHON`. `None` (the test skips,
/// visibly) when absent outside CI; under CI=true its absence fails the test.
fn prometheus_python(test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PROMETHEUS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/prometheus-venv/bin/python"));
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "prometheus-client is not installed (scripts/test installs it)"
    );
    eprintln!("SKIPPED {test}: no target/prometheus-venv (run ./scripts/test once to install it)");
    None
}

/// One sample as the parser reports it.
#[derive(Debug)]
struct Sample {
    family: String,
    kind: String,
    name: String,
    labels: serde_json::Map<String, Value>,
    value: f64,
}

/// Parses Prometheus text with `prometheus_client.parser.text_string_to_metric_families`.
fn parse(python: &PathBuf, text: &str) -> Vec<Sample> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append({"family": fam.name, "type": fam.type, "name": s.name,
                    "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;
    let mut child = Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser rejected /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    parsed
        .into_iter()
        .map(|v| Sample {
            family: v["family"].as_str().unwrap().to_owned(),
            kind: v["type"].as_str().unwrap().to_owned(),
            name: v["name"].as_str().unwrap().to_owned(),
            labels: v["labels"].as_object().unwrap().clone(),
            value: v["value"].as_f64().unwrap(),
        })
        .collect()
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    samples.iter().find(|s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).and_then(Value::as_str) == Some(*v))
    })
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    find(samples, name, labels)
        .unwrap_or_else(|| panic!("no sample {name} {labels:?} in {samples:#?}"))
        .value
}

/// The buckets of one histogram series: cumulative, ending in +Inf = `_count`.
fn assert_histogram(samples: &[Sample], family: &str, labels: &[(&str, &str)], count: f64) {
    let buckets: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == format!("{family}_bucket")
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).and_then(Value::as_str) == Some(*v))
        })
        .collect();
    assert!(buckets.len() > 2, "{family} {labels:?}: {buckets:?}");
    assert!(buckets.iter().all(|b| b.kind == "histogram"));
    let mut last = 0.0;
    for b in &buckets {
        assert!(
            b.value >= last,
            "{family} {labels:?}: not cumulative {buckets:?}"
        );
        last = b.value;
    }
    let inf = buckets
        .iter()
        .find(|b| b.labels["le"] == "+Inf")
        .expect("a +Inf bucket");
    assert_eq!(inf.value, count, "{family} {labels:?}");
    assert_eq!(value(samples, &format!("{family}_count"), labels), count);
    assert!(value(samples, &format!("{family}_sum"), labels) > 0.0);
}

/// A Canvas static-bearer install against a FakeFhir with three patients; returns the FakeFhir,
/// the account and the install id.
async fn canvas_install(app: &TestApp, account: &str) -> (FakeFhir, String) {
    let fhir = FakeFhir::builder()
        .accept_token(TOKEN)
        .seed_patients(3)
        .start();
    let (s, v) = app
        .put(
            "/v1/connectors/canvas/setup",
            json!({"settings": {"api_token": TOKEN, "fhir_base_url": fhir.base_url()}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    app.create_account(account).await;
    let v = crate::support::post_install(
        app,
        account,
        json!({"connector": "canvas", "auth_type": "static_bearer"}),
    )
    .await;
    (fhir, v["id"].as_str().unwrap().to_owned())
}

async fn scrape_text(app: &TestApp) -> String {
    let r = send_raw(app, Method::GET, "/metrics", None, None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.text
}

async fn scrape_parses_into_histograms_and_gauges_without_ids(backend: Backend) {
    let Some(python) = prometheus_python("scrape_parses_into_histograms_and_gauges_without_ids")
    else {
        return;
    };
    let app = TestApp::spawn(backend).await;
    let account = "metrics-acct-7d2c";
    let (fhir, install) = canvas_install(&app, account).await;
    let path = format!("/v1/accounts/{account}/installs/{install}/methods/get_patient");
    for _ in 0..3 {
        let (s, v) = app.post(&path, json!({"params": {"id": "pat-0002"}})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (s, v) = app.post(&path, json!({"params": {"id": "pat-9999"}})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    // Throttled once (Retry-After: 0), then answered: one retry inside one more 200 call.
    fhir.fail_next(Fault::TooManyRequests {
        retry_after: Some(RetryAfter::Seconds(0)),
    });
    let (s, v) = app.post(&path, json!({"params": {"id": "pat-0002"}})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(fhir.request_count(), 6);

    let text = scrape_text(&app).await;
    let samples = parse(&python, &text);

    // Request latency by route template and status.
    let route = [
        ("route", METHOD_ROUTE),
        ("method", "POST"),
        ("status", "200"),
    ];
    assert_histogram(
        &samples,
        "switchboard_http_request_duration_seconds",
        &route,
        4.0,
    );
    assert_eq!(
        value(&samples, "switchboard_http_requests_total", &route),
        4.0
    );
    let missed = [
        ("route", METHOD_ROUTE),
        ("method", "POST"),
        ("status", "404"),
    ];
    assert_histogram(
        &samples,
        "switchboard_http_request_duration_seconds",
        &missed,
        1.0,
    );
    // Upstream latency by connector, method and upstream status.
    assert_histogram(
        &samples,
        "switchboard_upstream_request_duration_seconds",
        &[
            ("connector", "canvas"),
            ("method", "get_patient"),
            ("status", "200"),
        ],
        4.0,
    );
    assert_eq!(
        value(
            &samples,
            "switchboard_upstream_retries_total",
            &[("status", "429")]
        ),
        1.0
    );
    assert_histogram(
        &samples,
        "switchboard_upstream_request_duration_seconds",
        &[
            ("connector", "canvas"),
            ("method", "get_patient"),
            ("status", "404"),
        ],
        1.0,
    );
    // Hot-path caches: one install lookup per method call, one key lookup per /v1 request.
    let lookups = |cache: &str, result: &str| {
        find(
            &samples,
            "switchboard_cache_lookups_total",
            &[("cache", cache), ("result", result)],
        )
        .map_or(0.0, |s| s.value)
    };
    assert_eq!(
        lookups("install", "hit") + lookups("install", "miss"),
        5.0,
        "{text}"
    );
    assert!(lookups("install", "hit") >= 1.0, "{text}");
    assert!(
        lookups("api_key", "hit") + lookups("api_key", "miss") >= 5.0,
        "{text}"
    );
    assert!(lookups("api_key", "hit") >= 1.0, "{text}");
    // Pool gauges (test settings: pool_size 8).
    let gauge = |name: &str| {
        let s = find(&samples, name, &[]).unwrap_or_else(|| panic!("no {name}:\n{text}"));
        assert_eq!(s.kind, "gauge", "{name}");
        s.value
    };
    let (open, idle, max) = (
        gauge("switchboard_db_pool_connections"),
        gauge("switchboard_db_pool_idle_connections"),
        gauge("switchboard_db_pool_max_connections"),
    );
    assert_eq!(max, 8.0);
    assert!(open >= 1.0 && open <= max, "{open}");
    assert!(idle <= open, "{idle} > {open}");

    // No id of ours, key, token or patient id in any label; only the known label names.
    let ours = [
        app.tenant.as_str(),
        app.api_key.as_str(),
        account,
        install.as_str(),
        "pat-0002",
        "pat-9999",
        TOKEN,
        fhir.origin(),
    ];
    let allowed: BTreeSet<&str> = [
        "route",
        "method",
        "status",
        "le",
        "connector",
        "outcome",
        "cache",
        "result",
    ]
    .into();
    for s in &samples {
        for (k, v) in &s.labels {
            assert!(allowed.contains(k.as_str()), "label {k} on {}", s.name);
            let v = v.as_str().unwrap();
            for id in ours {
                assert!(!v.contains(id), "{}{{{k}={v}}} carries `{id}`", s.name);
            }
        }
    }
    for id in ours {
        assert!(!text.contains(id), "/metrics shows `{id}`");
    }
    assert!(samples.iter().all(|s| s.family.starts_with("switchboard_")));
}

async fn metrics_on_a_dedicated_listener_behind_a_token(backend: Backend) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let scrape_token = "scrape-token-4c9a1f2e7b";
    let app = TestApp::spawn_with(backend, |s| {
        s.metrics.bind = format!("127.0.0.1:{port}");
        s.metrics.token = scrape_token.to_owned();
    })
    .await;
    let (s, _) = app.get("/v1/accounts").await;
    assert_eq!(s, StatusCode::OK);

    // The main listener no longer serves it, token or not.
    let r = send_raw(
        &app,
        Method::GET,
        "/metrics",
        Some(&format!("Bearer {scrape_token}")),
        None,
        None,
    )
    .await;
    problem(&r, 404, "not_found");

    let url = format!("http://127.0.0.1:{port}/metrics");
    let get = |auth: Option<String>| {
        let mut rb = app.http.get(&url);
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        async move { rb.send().await.expect("the metrics listener answers") }
    };
    for auth in [
        None,
        Some("Bearer wrong-token-0000000000".to_owned()),
        Some(scrape_token.to_owned()),
        Some(format!("Basic {scrape_token}")),
    ] {
        let r = get(auth.clone()).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized", "{body}");
        assert!(!body.to_string().contains(scrape_token));
    }
    // The scheme is case-insensitive (RFC 7235 §2.1), as on the API.
    for scheme in ["bearer", "BEARER"] {
        let r = get(Some(format!("{scheme} {scrape_token}"))).await;
        assert_eq!(r.status(), StatusCode::OK, "{scheme}");
    }
    let r = get(Some(format!("Bearer {scrape_token}"))).await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    // Same registry as the main listener's traffic.
    assert!(
        text.contains(
            "switchboard_http_requests_total{route=\"/v1/accounts\",method=\"GET\",status=\"200\"} 1"
        ),
        "{text}"
    );
    if let Some(python) = prometheus_python("metrics_on_a_dedicated_listener_behind_a_token") {
        assert!(!parse(&python, &text).is_empty());
    }
    // Nothing else on that listener.
    let r = app
        .http
        .get(format!("http://127.0.0.1:{port}/v1/accounts"))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

async fn request_id_is_echoed_generated_and_logged(backend: Backend) {
    let logs = log_capture();
    let app = TestApp::spawn(backend).await;
    let account = "reqid-acct-51f0";
    let (_fhir, install) = canvas_install(&app, account).await;
    let path = format!("/v1/accounts/{account}/installs/{install}/methods/get_patient");

    let call = |id: Option<String>, key: Option<String>| {
        let mut rb = app
            .http
            .post(app.url(&path))
            .json(&json!({"params": {"id": "pat-0001"}}));
        if let Some(id) = id {
            rb = rb.header("x-request-id", id);
        }
        if let Some(key) = key {
            rb = rb.bearer_auth(key);
        }
        async move {
            let r = rb.send().await.unwrap();
            let id = r
                .headers()
                .get("x-request-id")
                .map(|v| v.to_str().unwrap().to_owned());
            (r.status(), id)
        }
    };
    let key = Some(app.api_key.clone());

    // A sane id is echoed and is on the request's log lines, the engine's included.
    let given = format!("req.{}_Z-9", std::process::id());
    let (status, echoed) = call(Some(given.clone()), key.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echoed.as_deref(), Some(given.as_str()));
    let text = logs.text();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(&given)).collect();
    assert!(
        lines.iter().any(|l| l.contains("method executed")),
        "no engine line carries the request id: {lines:#?}"
    );
    assert!(lines
        .iter()
        .all(|l| l.contains(&format!("request_id={given}"))));

    // None given: a fresh one per request.
    let (_, a) = call(None, key.clone()).await;
    let (_, b) = call(None, key.clone()).await;
    let (a, b) = (a.expect("generated"), b.expect("generated"));
    assert_ne!(a, b);
    for id in [&a, &b] {
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
    }

    // A bad one is replaced, not echoed: too long, or characters outside [A-Za-z0-9._-].
    for bad in [
        "x".repeat(129),
        "has space".into(),
        "a/b".into(),
        "a\"b".into(),
    ] {
        let (status, id) = call(Some(bad.clone()), key.clone()).await;
        assert_eq!(status, StatusCode::OK);
        let id = id.expect("a fresh id");
        assert_ne!(id, bad);
        assert_eq!(id.len(), 32, "{id}");
    }
    let longest = "y".repeat(128);
    let (_, id) = call(Some(longest.clone()), key.clone()).await;
    assert_eq!(id.as_deref(), Some(longest.as_str()));

    // Error answers carry it too.
    let (status, id) = call(Some("denied-1".into()), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(id.as_deref(), Some("denied-1"));
}

crate::both_backends! {
    scrape_parses_into_histograms_and_gauges_without_ids => scrape_parses_into_histograms_and_gauges_without_ids;
    metrics_on_a_dedicated_listener_behind_a_token => metrics_on_a_dedicated_listener_behind_a_token;
    request_id_is_echoed_generated_and_logged => request_id_is_echoed_generated_and_logged;
}
