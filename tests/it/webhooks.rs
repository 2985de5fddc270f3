//! Install-status webhooks end to end: a Node receiver (tests/webhook-receiver) verifies every
//! delivery with the Standard Webhooks reference library (npm `standardwebhooks`), fails the
//! first ones, then accepts. Time of the retry schedule moves on a `ManualClock`; the dispatcher's
//! passes are awaited, never slept for. Plus: a SIGKILLed host's event delivered after the
//! restart, a rolled-back change sending nothing, private URLs refused, replay, tenant isolation.

use crate::support::{assert_problem, repo_root, Backend, TestApp};
use diesel::prelude::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchboard_core::{now_ms, InstallStatus};
use switchboard_db::schema::{webhook_deliveries as wd, webhook_events as we};
use switchboard_service::webhooks::{EventType, InstallRef};
use switchboard_service::{Clock, ManualClock};

/// The Node receiver, one process per test.
pub(crate) struct Receiver {
    child: Child,
    port: u16,
    http: reqwest::Client,
}

impl Receiver {
    pub(crate) fn start() -> Receiver {
        let dir = repo_root().join("tests/webhook-receiver");
        assert!(
            dir.join("node_modules/standardwebhooks").exists(),
            "run `npm ci` in tests/webhook-receiver (scripts/test does)"
        );
        let mut child = Command::new("node")
            .arg("receiver.mjs")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("receiver port");
        let port = serde_json::from_str::<Value>(&line).expect("port line")["port"]
            .as_u64()
            .unwrap() as u16;
        Receiver {
            child,
            port,
            http: reqwest::Client::new(),
        }
    }

    pub(crate) fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/hooks/{name}", self.port)
    }

    pub(crate) async fn configure(&self, name: &str, secret: &str, fail_first: u32, hang: bool) {
        let r = self
            .http
            .post(format!("http://127.0.0.1:{}/_control/{name}", self.port))
            .json(&json!({"secret": secret, "fail_first": fail_first, "hang": hang}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }

    /// Every request the receiver got for `name`, in arrival order.
    pub(crate) async fn received(&self, name: &str) -> Vec<Value> {
        let all: Vec<Value> = self
            .http
            .get(format!("http://127.0.0.1:{}/_received", self.port))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        all.into_iter().filter(|r| r["name"] == name).collect()
    }

    /// The ids of the deliveries `name` accepted (2xx), in arrival order.
    pub(crate) async fn accepted(&self, name: &str) -> Vec<String> {
        self.received(name)
            .await
            .iter()
            .filter(|r| r["status"] == 204)
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) async fn create_webhook(app: &TestApp, url: &str, events: Value) -> (String, String) {
    let (s, v) = app
        .post("/v1/webhooks", json!({"url": url, "events": events}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let secret = v["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{v}");
    (v["id"].as_str().unwrap().to_owned(), secret)
}

/// Canvas setup, account `acc` and a static-bearer install (authorized at creation).
async fn canvas_install(app: &TestApp) -> String {
    let (s, v) = app
        .put(
            "/v1/connectors/canvas/setup",
            json!({"settings": {"api_token": "webhook-test-token", "fhir_base_url": "http://127.0.0.1:9/fhir"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    app.create_account("acc").await;
    let (s, v) = app
        .post(
            "/v1/accounts/acc/installs",
            json!({"connector": "canvas", "auth_type": "static_bearer"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

/// The tenant's outbox events in `seq` order: (id, type, install).
async fn events(app: &TestApp) -> Vec<(String, String, Option<String>)> {
    let tenant = app.tenant.clone();
    app.db(move |conn| {
        Ok(we::table
            .filter(we::tenant_id.eq(tenant))
            .order(we::seq.asc())
            .select((we::id, we::event_type, we::install_id))
            .load(conn)?)
    })
    .await
}

/// Delivery states by endpoint: endpoint -> [(state, attempts)] in event order.
async fn delivery_states(app: &TestApp) -> BTreeMap<String, Vec<(String, i64)>> {
    let rows: Vec<(String, String, i64)> = app
        .db(|conn| {
            Ok(wd::table
                .order((wd::endpoint_id.asc(), wd::event_seq.asc()))
                .select((wd::endpoint_id, wd::state, wd::attempts))
                .load(conn)?)
        })
        .await;
    let mut map: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for (ep, state, attempts) in rows {
        map.entry(ep).or_default().push((state, attempts));
    }
    map
}

/// Moves the clock by `step` and waits for two full dispatcher passes after that (the first
/// may have started before the move), then for the receiver to settle.
async fn advance(app: &TestApp, clock: &ManualClock, step: Duration) {
    let mut passes = app.services.dispatcher.passes();
    passes.borrow_and_update();
    clock.advance(step);
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(30), passes.changed())
            .await
            .expect("a dispatcher pass within 30 s")
            .unwrap();
    }
}

fn fast_dispatch(s: &mut switchboard_config::Settings) {
    s.webhooks.poll_interval_ms = 10;
}

/// Every event arrives, signed (verified by the reference library), after the receiver's
/// failures, in order; a second endpoint that never accepts ends `failed` after the 24 h
/// window; the API shows the attempts; replay re-delivers; another tenant sees and replays
/// nothing.
async fn events_arrive_signed_in_order_despite_failures(backend: Backend) {
    let clock = ManualClock::new(now_ms());
    let app = TestApp::spawn_with_clock(backend, clock.clone(), fast_dispatch).await;
    let receiver = Receiver::start();
    let (hook_a, secret_a) = create_webhook(&app, &receiver.url("a"), json!([])).await;
    let (hook_b, secret_b) =
        create_webhook(&app, &receiver.url("b"), json!(["setup.changed"])).await;
    receiver.configure("a", &secret_a, 2, false).await;
    receiver.configure("b", &secret_b, 1_000_000, false).await;

    // setup.changed, install.authorized (static bearer), install.deleted.
    let install = canvas_install(&app).await;
    let (s, v) = app
        .delete(&format!("/v1/accounts/acc/installs/{install}"))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let written = events(&app).await;
    let types: Vec<&str> = written.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(
        types,
        ["setup.changed", "install.authorized", "install.deleted"]
    );
    let ids: Vec<String> = written.iter().map(|e| e.0.clone()).collect();

    // Two 500s for the first event, then everything in order.
    for _ in 0..20 {
        if receiver.accepted("a").await.len() == 3 {
            break;
        }
        advance(&app, &clock, Duration::from_secs(60)).await;
    }
    assert_eq!(receiver.accepted("a").await, ids, "order per endpoint");
    let seen = receiver.received("a").await;
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(seen.iter().all(|r| r["verified"] == true), "{seen:?}");
    assert_eq!(seen[0]["status"], 500);
    assert_eq!(seen[1]["status"], 500);
    assert_eq!(seen[0]["id"], seen[2]["id"]);
    let delivered = &seen[2..];
    assert_eq!(delivered[1]["payload"]["type"], "install.authorized");
    assert_eq!(delivered[1]["payload"]["data"]["install"], install.as_str());
    assert_eq!(delivered[1]["payload"]["data"]["status"], "authorized");
    assert_eq!(delivered[2]["payload"]["data"]["status"], "deleted");
    // No secret or token in any payload.
    for r in &seen {
        let text = r["payload"].to_string();
        assert!(!text.contains("webhook-test-token"), "{text}");
    }

    // The never-accepting endpoint: retried with growing gaps for 24 h, then failed.
    for _ in 0..40 {
        if delivery_states(&app).await[&hook_b][0].0 == "failed" {
            break;
        }
        advance(&app, &clock, Duration::from_secs(2 * 3600)).await;
    }
    let states = delivery_states(&app).await;
    assert_eq!(
        states[&hook_a],
        vec![
            ("delivered".into(), 3),
            ("delivered".into(), 1),
            ("delivered".into(), 1)
        ]
    );
    let (state, attempts) = &states[&hook_b][0];
    assert_eq!(state, "failed");
    assert!(*attempts >= 10, "{attempts} attempts in 24 h");
    assert_eq!(states[&hook_b].len(), 1, "b only takes setup.changed");

    // The API shows the same.
    let (s, v) = app
        .get(&format!("/v1/webhooks/{hook_a}/deliveries?limit=2"))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let page = v["deliveries"].as_array().unwrap();
    assert_eq!(page.len(), 2);
    assert_eq!(page[0]["event"]["id"], ids[0].as_str());
    assert_eq!(page[0]["attempts"], 3);
    assert_eq!(page[0]["state"], "delivered");
    assert_eq!(page[0]["last_status"], 204);
    let cursor = v["next_cursor"].as_str().unwrap();
    let (s, v) = app
        .get(&format!("/v1/webhooks/{hook_a}/deliveries?cursor={cursor}"))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["deliveries"][0]["event"]["id"], ids[2].as_str());
    assert!(v["next_cursor"].is_null());
    let (s, v) = app.get(&format!("/v1/webhooks/{hook_b}/deliveries")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["deliveries"][0]["state"], "failed");
    assert_eq!(v["deliveries"][0]["last_status"], 500);

    // Another tenant sees nothing of it and cannot replay it.
    let (_, other_key) = app.new_tenant("Other").await;
    let as_other = |method, path: String| {
        let app = &app;
        let key = other_key.clone();
        async move { app.call_as(&key, method, &path, None).await }
    };
    let (s, v) = as_other(reqwest::Method::GET, "/v1/webhooks".into()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["webhooks"], json!([]));
    for (method, path) in [
        (reqwest::Method::GET, format!("/v1/webhooks/{hook_a}")),
        (
            reqwest::Method::GET,
            format!("/v1/webhooks/{hook_a}/deliveries"),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/webhooks/{hook_a}/deliveries/{}/replay", ids[1]),
        ),
        (reqwest::Method::DELETE, format!("/v1/webhooks/{hook_a}")),
    ] {
        let (s, v) = as_other(method, path).await;
        assert_problem(s, &v, 404, "not_found");
    }
    assert_eq!(receiver.accepted("a").await.len(), 3);

    // Replay: the same event (same webhook-id) again, signed again.
    let (s, v) = app
        .post(
            &format!("/v1/webhooks/{hook_a}/deliveries/{}/replay", ids[1]),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["state"], "pending");
    for _ in 0..10 {
        if receiver.accepted("a").await.len() == 4 {
            break;
        }
        advance(&app, &clock, Duration::from_secs(1)).await;
    }
    let accepted = receiver.accepted("a").await;
    assert_eq!(accepted.len(), 4);
    assert_eq!(accepted[3], ids[1]);
    assert!(receiver
        .received("a")
        .await
        .iter()
        .all(|r| r["verified"] == true));
    let (s, v) = app
        .post(
            &format!("/v1/webhooks/{hook_b}/deliveries/{}/replay", ids[1]),
            json!({}),
        )
        .await;
    assert_problem(s, &v, 404, "not_found");

    // The endpoint list shows both, never a secret; delete removes one with its deliveries.
    let (s, v) = app.get("/v1/webhooks").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["webhooks"].as_array().unwrap().len(), 2);
    assert!(!v.to_string().contains("whsec_"), "{v}");
    let (s, _) = app.delete(&format!("/v1/webhooks/{hook_b}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(!delivery_states(&app).await.contains_key(&hook_b));
    let (s, v) = app.get(&format!("/v1/webhooks/{hook_b}")).await;
    assert_problem(s, &v, 404, "not_found");
    // The secret is stored sealed.
    assert!(!app.dump_database().contains(&secret_a));
}

/// A change whose transaction rolls back leaves no event and sends nothing; the next committed
/// change is delivered alone.
async fn a_rolled_back_change_emits_nothing(backend: Backend) {
    let clock = ManualClock::new(now_ms());
    let app = TestApp::spawn_with_clock(backend, clock.clone(), fast_dispatch).await;
    let receiver = Receiver::start();
    let (_, secret) = create_webhook(&app, &receiver.url("r"), json!([])).await;
    receiver.configure("r", &secret, 0, false).await;
    let install = canvas_install(&app).await;
    for _ in 0..10 {
        if receiver.accepted("r").await.len() == 2 {
            break;
        }
        advance(&app, &clock, Duration::from_secs(1)).await;
    }
    assert_eq!(receiver.accepted("r").await.len(), 2);

    // The status change and its event in one transaction that fails after both were written.
    let outbox = switchboard_service::webhooks::Outbox::new(std::sync::Arc::new(clock.clone()), 3);
    let tenant = app.tenant.clone();
    let id = install.clone();
    let rolled_back = app
        .services
        .db()
        .run(move |conn| {
            conn.transaction::<(), switchboard_db::DbError, _>(|conn| {
                switchboard_db::repo::installs::set_status(
                    conn,
                    &id,
                    InstallStatus::NeedsReauthorization,
                    Some("test"),
                    now_ms(),
                )?;
                let event = outbox.install_event(
                    EventType::InstallNeedsReauthorization,
                    InstallRef {
                        tenant_id: &tenant,
                        account_id: "acc",
                        install_id: &id,
                        connector_id: "canvas",
                        status: "needs_reauthorization",
                    },
                );
                assert_eq!(switchboard_db::repo::webhooks::emit(conn, &event)?, 1);
                Err(diesel::result::Error::RollbackTransaction.into())
            })
        })
        .await;
    assert!(rolled_back.is_err());
    assert_eq!(events(&app).await.len(), 2, "the rolled-back event is gone");
    let (_, v) = app
        .get(&format!("/v1/accounts/acc/installs/{install}"))
        .await;
    assert_eq!(v["status"], "authorized");

    let (s, _) = app
        .delete(&format!("/v1/accounts/acc/installs/{install}"))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    for _ in 0..10 {
        if receiver.accepted("r").await.len() == 3 {
            break;
        }
        advance(&app, &clock, Duration::from_secs(1)).await;
    }
    advance(&app, &clock, Duration::from_secs(3600)).await;
    let types: Vec<String> = receiver
        .received("r")
        .await
        .iter()
        .map(|r| r["payload"]["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        ["setup.changed", "install.authorized", "install.deleted"]
    );
}

/// The outbound policy applies to webhook URLs: private and loopback addresses are 422
/// `upstream_not_allowed` unless insecure upstreams are allowed; unknown event types are 400.
/// Nothing is written.
async fn private_addresses_and_unknown_events_are_refused(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.security.allow_insecure_upstreams = false;
    })
    .await;
    for url in [
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://[::1]/hook",
        "https://169.254.169.254/latest",
        "http://hooks.example.com/plain-http",
    ] {
        let (s, v) = app.post("/v1/webhooks", json!({"url": url})).await;
        assert_problem(s, &v, 422, "upstream_not_allowed");
    }
    let (s, v) = app
        .post(
            "/v1/webhooks",
            json!({"url": "https://hooks.example.com/x", "events": ["install.everything"]}),
        )
        .await;
    assert_problem(s, &v, 400, "invalid_request");
    let (s, v) = app.post("/v1/webhooks", json!({"url": "not a url"})).await;
    assert_problem(s, &v, 400, "invalid_request");
    let (s, v) = app.get("/v1/webhooks").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["webhooks"], json!([]));
    // A public https URL is accepted (nothing is sent until an event happens).
    let (s, v) = app
        .post(
            "/v1/webhooks",
            json!({"url": "https://hooks.example.com/x", "events": ["install.deleted"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["events"], json!(["install.deleted"]));
}

/// Delivery rows of one event: (endpoint, state).
async fn deliveries_of(app: &TestApp, event: &str) -> Vec<(String, String)> {
    let event = event.to_owned();
    app.db(move |conn| {
        Ok(wd::table
            .inner_join(we::table)
            .filter(we::id.eq(event))
            .order(wd::endpoint_id.asc())
            .select((wd::endpoint_id, wd::state))
            .load(conn)?)
    })
    .await
}

/// `webhooks.retention_days` (30 by default): events past it whose deliveries are all
/// delivered or failed go with their deliveries; an old event with a pending delivery (here
/// replayed) and recent events stay. Time moves on the ManualClock; the purge is the service
/// function the server runs hourly.
async fn retention_purges_old_finished_events(backend: Backend) {
    let start = now_ms();
    let clock = ManualClock::new(start);
    let app = TestApp::spawn_with_clock(backend, clock.clone(), fast_dispatch).await;
    assert_eq!(app.services.settings().webhooks.retention_days, 30);
    let receiver = Receiver::start();
    let (hook_a, secret_a) = create_webhook(&app, &receiver.url("a"), json!([])).await;
    let (hook_b, secret_b) =
        create_webhook(&app, &receiver.url("b"), json!(["install.deleted"])).await;
    receiver.configure("a", &secret_a, 0, false).await;
    receiver.configure("b", &secret_b, 1_000_000, false).await;

    // Old events: setup.changed, install.authorized (a only), install.deleted (a and b).
    let install = canvas_install(&app).await;
    let (s, v) = app
        .delete(&format!("/v1/accounts/acc/installs/{install}"))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let old: Vec<String> = events(&app).await.into_iter().map(|e| e.0).collect();
    assert_eq!(old.len(), 3);
    // a takes all three; b never accepts and fails after its 24 h window.
    for _ in 0..20 {
        let states = delivery_states(&app).await;
        let done = |hook: &str| {
            states
                .get(hook)
                .is_some_and(|v| v.iter().all(|(state, _)| state != "pending"))
        };
        if done(&hook_a) && done(&hook_b) {
            break;
        }
        advance(&app, &clock, Duration::from_secs(6 * 3600)).await;
    }
    let states = delivery_states(&app).await;
    assert!(
        states[&hook_a].iter().all(|(s, _)| s == "delivered"),
        "{states:?}"
    );
    assert_eq!(states[&hook_b].len(), 1, "{states:?}");
    assert_eq!(states[&hook_b][0].0, "failed", "{states:?}");

    // Nothing is past the retention yet.
    assert_eq!(app.services.dispatcher.purge().await.unwrap(), 0);
    assert_eq!(events(&app).await.len(), 3);

    // 31 days on: a recent event, delivered to a.
    clock.advance(Duration::from_secs(31 * 86_400));
    let (s, v) = app
        .post(
            "/v1/accounts/acc/installs",
            json!({"connector": "canvas", "auth_type": "static_bearer"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let recent = events(&app).await.last().unwrap().0.clone();
    for _ in 0..10 {
        if deliveries_of(&app, &recent).await == [(hook_a.clone(), "delivered".to_owned())] {
            break;
        }
        advance(&app, &clock, Duration::from_secs(1)).await;
    }
    assert_eq!(
        deliveries_of(&app, &recent).await,
        [(hook_a.clone(), "delivered".to_owned())]
    );
    // The install.deleted delivery to b is replayed: pending again (b still refuses, so it
    // stays pending after its next attempt), and that old event stays with both its rows.
    let (s, v) = app
        .post(
            &format!("/v1/webhooks/{hook_b}/deliveries/{}/replay", old[2]),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    advance(&app, &clock, Duration::from_secs(1)).await;
    let pending = deliveries_of(&app, &old[2]).await;
    assert!(
        pending.contains(&(hook_b.clone(), "pending".to_owned())),
        "{pending:?}"
    );

    // The two old, finished events go with their deliveries; the pending one and the recent
    // one stay.
    assert_eq!(app.services.dispatcher.purge().await.unwrap(), 2);
    let left: Vec<String> = events(&app).await.into_iter().map(|e| e.0).collect();
    assert_eq!(left, [old[2].clone(), recent.clone()]);
    for gone in &old[..2] {
        assert!(deliveries_of(&app, gone).await.is_empty());
    }
    let rows: i64 = app.db(|conn| Ok(wd::table.count().get_result(conn)?)).await;
    assert_eq!(
        rows, 3,
        "a's and b's rows of install.deleted, a's of the recent event"
    );
    let kept = deliveries_of(&app, &old[2]).await;
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(
        kept.contains(&(hook_b.clone(), "pending".to_owned())),
        "{kept:?}"
    );
    // The API still pages what is left.
    let (s, v) = app.get(&format!("/v1/webhooks/{hook_a}/deliveries")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["deliveries"].as_array().unwrap().len(), 2, "{v}");
    // Nothing more to purge.
    assert_eq!(app.services.dispatcher.purge().await.unwrap(), 0);
}

crate::both_backends! {
    events_arrive_signed_in_order_despite_failures => events_arrive_signed_in_order_despite_failures;
    a_rolled_back_change_emits_nothing => a_rolled_back_change_emits_nothing;
    private_addresses_and_unknown_events_are_refused => private_addresses_and_unknown_events_are_refused;
    webhook_retention_purges_old_finished_events => retention_purges_old_finished_events;
    disable_and_enable => a_disabled_endpoint_gets_nothing_and_resumes_when_enabled;
    auto_disable_failing => a_failing_endpoint_is_disabled_and_gets_its_kept_deliveries_when_enabled;
    disable_mid_queue => a_disable_committed_mid_queue_stops_the_next_delivery;
}

/// The tenant's `webhook.*` administrative records as `GET /v1/audit` shows them, oldest
/// first (after the audit writer caught up).
async fn webhook_audit(app: &TestApp, key: &str) -> Vec<Value> {
    app.services.audit.flush().await;
    let (s, v) = app
        .call_as(key, reqwest::Method::GET, "/v1/audit?limit=100", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["next_cursor"].is_null(), "{v}");
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "admin" && e["action"].as_str().unwrap().starts_with("webhook."))
        .cloned()
        .collect()
}

/// (action, by a key) of each record.
fn actions(records: &[Value]) -> Vec<(String, bool)> {
    records
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_owned(),
                r["api_key_id"].is_string(),
            )
        })
        .collect()
}

/// `PATCH /v1/webhooks/{id}`: a disabled endpoint gets no attempt (its failed-once pending
/// deliveries wait however long; events emitted while disabled are not queued for it); enabled
/// again, the pending ones are delivered at once, in order, signed. The event filter and URL
/// change too (the URL checked as at creation); another tenant cannot patch it.
async fn a_disabled_endpoint_gets_nothing_and_resumes_when_enabled(backend: Backend) {
    let clock = ManualClock::new(now_ms());
    let app = TestApp::spawn_with_clock(backend, clock.clone(), fast_dispatch).await;
    let receiver = Receiver::start();
    let (hook, secret) = create_webhook(&app, &receiver.url("p"), json!([])).await;
    receiver.configure("p", &secret, 1, false).await;

    // setup.changed and install.authorized queued; the first attempt fails (500).
    let install = canvas_install(&app).await;
    for _ in 0..10 {
        if !receiver.received("p").await.is_empty() {
            break;
        }
        advance(&app, &clock, Duration::from_secs(1)).await;
    }
    let seen = receiver.received("p").await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["status"], 500);

    let (s, v) = app
        .patch(&format!("/v1/webhooks/{hook}"), json!({"enabled": false}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["enabled"], false);
    assert!(v["disabled_at"].is_string(), "{v}");
    let (_, got) = app.get(&format!("/v1/webhooks/{hook}")).await;
    assert_eq!(got["enabled"], false);
    assert_eq!(got["disabled_at"], v["disabled_at"]);

    // Disabled: hours pass, no attempt; a new event is recorded but not queued for it.
    for _ in 0..3 {
        advance(&app, &clock, Duration::from_secs(3600)).await;
    }
    assert_eq!(
        receiver.received("p").await.len(),
        1,
        "no attempt while disabled"
    );
    let (s, _) = app
        .delete(&format!("/v1/accounts/acc/installs/{install}"))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let written = events(&app).await;
    assert_eq!(written.len(), 3, "the event is still written: {written:?}");
    assert_eq!(
        delivery_states(&app).await[&hook],
        vec![("pending".into(), 1), ("pending".into(), 0)],
        "kept, and nothing queued for install.deleted"
    );
    assert_eq!(
        actions(&webhook_audit(&app, &app.api_key).await),
        [
            (format!("webhook.created:{hook}"), true),
            (format!("webhook.disabled:{hook}"), true)
        ],
        "the creation and the PATCH are audited with their key"
    );

    // Enabled: both pending deliveries go out at once, in order.
    let (s, v) = app
        .patch(&format!("/v1/webhooks/{hook}"), json!({"enabled": true}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["enabled"], true);
    assert!(v["disabled_at"].is_null(), "{v}");
    for _ in 0..10 {
        if receiver.accepted("p").await.len() == 2 {
            break;
        }
        advance(&app, &clock, Duration::from_secs(1)).await;
    }
    let ids: Vec<String> = written[..2].iter().map(|e| e.0.clone()).collect();
    assert_eq!(receiver.accepted("p").await, ids);
    assert_eq!(
        actions(&webhook_audit(&app, &app.api_key).await),
        [
            (format!("webhook.created:{hook}"), true),
            (format!("webhook.disabled:{hook}"), true),
            (format!("webhook.enabled:{hook}"), true)
        ]
    );
    assert!(receiver
        .received("p")
        .await
        .iter()
        .all(|r| r["verified"] == true));

    // The filter and the URL change; a refused URL or unknown type changes nothing.
    let (s, v) = app
        .patch(
            &format!("/v1/webhooks/{hook}"),
            json!({"events": ["install.deleted", "install.deleted"], "url": receiver.url("q")}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["events"], json!(["install.deleted"]));
    assert_eq!(v["url"], receiver.url("q"));
    let (s, v) = app
        .patch(&format!("/v1/webhooks/{hook}"), json!({"events": ["nope"]}))
        .await;
    assert_problem(s, &v, 400, "invalid_request");
    let (s, v) = app
        .patch(
            &format!("/v1/webhooks/{hook}"),
            json!({"url": "ftp://hooks.example.com/x"}),
        )
        .await;
    assert_problem(s, &v, 400, "invalid_request");
    let (_, got) = app.get(&format!("/v1/webhooks/{hook}")).await;
    assert_eq!(got["url"], receiver.url("q"));
    let (_, other_key) = app.new_tenant("Other").await;
    let (s, v) = app
        .call_as(
            &other_key,
            reqwest::Method::PATCH,
            &format!("/v1/webhooks/{hook}"),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_problem(s, &v, 404, "not_found");
    let (_, got) = app.get(&format!("/v1/webhooks/{hook}")).await;
    assert_eq!(got["enabled"], true);

    // The accepted URL and filter change is audited once (the refused ones and the other
    // tenant's 404 are not), then the deletion; never the URL itself.
    let (s, _) = app.delete(&format!("/v1/webhooks/{hook}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let records = webhook_audit(&app, &app.api_key).await;
    assert_eq!(
        actions(&records),
        [
            (format!("webhook.created:{hook}"), true),
            (format!("webhook.disabled:{hook}"), true),
            (format!("webhook.enabled:{hook}"), true),
            (format!("webhook.updated:{hook}"), true),
            (format!("webhook.deleted:{hook}"), true)
        ]
    );
    let statuses: Vec<&Value> = records.iter().map(|r| &r["status"]).collect();
    assert_eq!(
        statuses,
        [
            &json!(201),
            &json!(200),
            &json!(200),
            &json!(200),
            &json!(204)
        ]
    );
    let text = serde_json::to_string(&records).unwrap();
    assert!(
        !text.contains(&receiver.url("p")) && !text.contains(&receiver.url("q")),
        "{text}"
    );
    assert!(webhook_audit(&app, &other_key).await.is_empty());
}

/// `webhooks.disable_after_failing_secs`: a receiver that answers 500 to everything is
/// disabled by the dispatcher at its first failed attempt once it has failed for the period
/// (not before), with the reason on the endpoint (`GET` and the list); its pending deliveries
/// are kept and not attempted; `PATCH {"enabled": true}` sends them, in order, signed.
async fn a_failing_endpoint_is_disabled_and_gets_its_kept_deliveries_when_enabled(
    backend: Backend,
) {
    const PERIOD_SECS: u64 = 6 * 3600;
    let clock = ManualClock::new(now_ms());
    let app = TestApp::spawn_with_clock(backend, clock.clone(), |s| {
        fast_dispatch(s);
        s.webhooks.disable_after_failing_secs = PERIOD_SECS;
    })
    .await;
    let receiver = Receiver::start();
    let (hook, secret) = create_webhook(&app, &receiver.url("f"), json!([])).await;
    receiver.configure("f", &secret, u32::MAX, false).await;

    // setup.changed and install.authorized queued; the first attempt fails.
    canvas_install(&app).await;
    for _ in 0..10 {
        if !receiver.received("f").await.is_empty() {
            break;
        }
        advance(&app, &clock, Duration::from_secs(1)).await;
    }
    assert_eq!(receiver.received("f").await[0]["status"], 500);
    // The receiver answered; the pass that sent the attempt records it when it ends (the
    // install's commit may have started that pass outside `advance`): wait for it.
    advance(&app, &clock, Duration::ZERO).await;
    let first_failure = clock.now_ms();
    let (_, v) = app.get(&format!("/v1/webhooks/{hook}")).await;
    assert_eq!(v["enabled"], true, "{v}");
    assert!(v["failing_since"].is_string(), "{v}");
    assert!(v["disabled_reason"].is_null(), "{v}");

    // Half-hour steps: the retries (doubling up to retry_max_interval_secs = 1 h) keep failing;
    // the endpoint stays enabled for the whole period, then is disabled.
    let mut disabled = None;
    for _ in 0..20 {
        advance(&app, &clock, Duration::from_secs(1800)).await;
        let (_, v) = app.get(&format!("/v1/webhooks/{hook}")).await;
        if v["enabled"] == false {
            disabled = Some(v);
            break;
        }
        assert!(
            clock.now_ms() - first_failure < (PERIOD_SECS as i64 + 3600 + 1800) * 1000,
            "still enabled long after the period: {v}"
        );
    }
    let v = disabled.expect("disabled within 10 h");
    let failing_for = clock.now_ms() - first_failure;
    assert!(
        failing_for >= PERIOD_SECS as i64 * 1000,
        "disabled after {failing_for} ms only"
    );
    assert_eq!(v["disabled_reason"], "failing", "{v}");
    assert!(v["disabled_at"].is_string(), "{v}");
    assert!(v["failing_since"].is_string(), "{v}");
    let (s, list) = app.get("/v1/webhooks").await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let listed = &list["webhooks"].as_array().unwrap()[0];
    assert_eq!(listed["id"], hook.as_str());
    assert_eq!(listed["enabled"], false);
    assert_eq!(listed["disabled_reason"], "failing");
    assert_eq!(listed["disabled_at"], v["disabled_at"]);

    // Audited for the tenant as a change no request made (no key, no request id), naming
    // the endpoint only (never its URL or secret); another tenant sees nothing of it.
    let records = webhook_audit(&app, &app.api_key).await;
    assert_eq!(
        actions(&records),
        [
            (format!("webhook.created:{hook}"), true),
            (format!("webhook.disabled:{hook}"), false)
        ],
        "{records:?}"
    );
    let record = &records[1];
    assert_eq!(record["status"], 200, "{record}");
    for field in [
        "request_id",
        "account_id",
        "install_id",
        "connector_id",
        "code",
    ] {
        assert!(record[field].is_null(), "{field}: {record}");
    }
    let text = record.to_string();
    assert!(
        !text.contains(&receiver.url("f")) && !text.contains(&secret),
        "{text}"
    );
    let (_, other_key) = app.new_tenant("Other").await;
    assert!(webhook_audit(&app, &other_key).await.is_empty());

    // Disabled: its deliveries are kept (pending) and nothing is attempted, hours on.
    let tried = receiver.received("f").await.len();
    assert!(tried > 5, "{tried} attempts");
    for _ in 0..3 {
        advance(&app, &clock, Duration::from_secs(3600)).await;
    }
    assert_eq!(
        receiver.received("f").await.len(),
        tried,
        "no attempt while disabled"
    );
    let states = delivery_states(&app).await;
    assert_eq!(states[&hook].len(), 2, "{states:?}");
    assert!(
        states[&hook].iter().all(|(s, _)| s == "pending"),
        "{states:?}"
    );

    // The receiver is fixed; enabling sends the kept deliveries, in order, signed.
    receiver.configure("f", &secret, 0, false).await;
    let (s, v) = app
        .patch(&format!("/v1/webhooks/{hook}"), json!({"enabled": true}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["enabled"], true);
    assert!(v["disabled_reason"].is_null(), "{v}");
    assert!(v["disabled_at"].is_null(), "{v}");
    assert!(v["failing_since"].is_null(), "{v}");
    for _ in 0..10 {
        if receiver.accepted("f").await.len() == 2 {
            break;
        }
        advance(&app, &clock, Duration::from_secs(1)).await;
    }
    let written: Vec<String> = events(&app).await.into_iter().map(|e| e.0).collect();
    assert_eq!(written.len(), 2);
    assert_eq!(receiver.accepted("f").await, written);
    assert_eq!(
        actions(&webhook_audit(&app, &app.api_key).await),
        [
            (format!("webhook.created:{hook}"), true),
            (format!("webhook.disabled:{hook}"), false),
            (format!("webhook.enabled:{hook}"), true)
        ]
    );
    assert!(receiver
        .received("f")
        .await
        .iter()
        .all(|r| r["verified"] == true));
    assert_eq!(
        delivery_states(&app).await[&hook]
            .iter()
            .map(|(s, _)| s.as_str())
            .collect::<Vec<_>>(),
        ["delivered", "delivered"]
    );
    let (_, v) = app.get(&format!("/v1/webhooks/{hook}")).await;
    assert_eq!(
        (v["enabled"].clone(), v["failing_since"].clone()),
        (json!(true), Value::Null)
    );
}

/// The race behind a flaky `disable_and_enable`: the dispatcher claimed an endpoint with two
/// due deliveries; while the first is being delivered, `PATCH {"enabled": false}` commits (the
/// receiver sends it before it answers). The attempt in flight finishes (delivered), and no
/// further attempt starts: the second delivery stays pending, untried, however late it gets,
/// until the endpoint is enabled. The dispatcher is driven pass by pass (`run_once`), on a
/// `ManualClock`.
async fn a_disable_committed_mid_queue_stops_the_next_delivery(backend: Backend) {
    use actix_web::{web, HttpRequest, HttpResponse};
    use std::sync::{Arc, Mutex, OnceLock};
    use switchboard_testkit::fhir::ServerThread;
    let clock = ManualClock::new(now_ms());
    let app = TestApp::spawn_with_clock(backend, clock.clone(), |s| {
        s.webhooks.dispatch = false;
    })
    .await;
    // The `webhook-id`s received, in order; the endpoint's PATCH URL and the key to call it.
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let patch: Arc<OnceLock<(String, String)>> = Arc::default();
    let (got_in, patch_in) = (got.clone(), patch.clone());
    let receiver = ServerThread::spawn("webhook-receiver", move |cfg: &mut web::ServiceConfig| {
        let (got, patch) = (got_in.clone(), patch_in.clone());
        cfg.default_service(web::to(move |req: HttpRequest| {
            let (got, patch) = (got.clone(), patch.clone());
            async move {
                let id = req
                    .headers()
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let first = {
                    let mut got = got.lock().unwrap();
                    got.push(id);
                    got.len() == 1
                };
                if first {
                    // Disabled (committed: the PATCH answered) before this delivery's answer.
                    let (patch_url, key) = patch.get().expect("endpoint created").clone();
                    let r = reqwest::Client::new()
                        .patch(patch_url)
                        .bearer_auth(key)
                        .json(&json!({"enabled": false}))
                        .send()
                        .await;
                    if !matches!(r, Ok(ref r) if r.status() == StatusCode::OK) {
                        return HttpResponse::InternalServerError().finish();
                    }
                }
                HttpResponse::NoContent().finish()
            }
        }));
    });
    let url = format!("http://{}/hook", receiver.addr());

    let (hook, _) = create_webhook(&app, &url, json!([])).await;
    patch
        .set((
            app.url(&format!("/v1/webhooks/{hook}")),
            app.api_key.clone(),
        ))
        .unwrap();
    // setup.changed and install.authorized, both due now.
    canvas_install(&app).await;
    let written: Vec<String> = events(&app).await.into_iter().map(|e| e.0).collect();
    assert_eq!(written.len(), 2);

    let dispatcher = &app.services.dispatcher;
    assert_eq!(dispatcher.run_once().await.unwrap(), 1, "one attempt");
    assert_eq!(*got.lock().unwrap(), written[..1]);
    assert_eq!(
        delivery_states(&app).await[&hook],
        vec![("delivered".into(), 1), ("pending".into(), 0)],
        "the attempt in flight is recorded; the next one never started"
    );
    let (_, v) = app.get(&format!("/v1/webhooks/{hook}")).await;
    assert_eq!(
        (v["enabled"].clone(), v["disabled_reason"].clone()),
        (json!(false), json!("manual")),
        "the delivery's result leaves the endpoint disabled: {v}"
    );

    // Disabled: a pass hours later attempts nothing.
    clock.advance(Duration::from_secs(3600));
    assert_eq!(dispatcher.run_once().await.unwrap(), 0);
    assert_eq!(got.lock().unwrap().len(), 1);

    // Enabled: the kept delivery goes out.
    let (s, v) = app
        .patch(&format!("/v1/webhooks/{hook}"), json!({"enabled": true}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(dispatcher.run_once().await.unwrap(), 1);
    assert_eq!(*got.lock().unwrap(), written);
    assert_eq!(
        delivery_states(&app).await[&hook],
        vec![("delivered".into(), 1), ("delivered".into(), 1)]
    );
    drop(receiver);
}

// ---------------------------------------------------------------------------------------------
// SIGKILL between the state change and the delivery
// ---------------------------------------------------------------------------------------------

/// `switchboard serve` as a child process, configured through the environment.
struct Host {
    child: Child,
    base: String,
    log: PathBuf,
}

fn host_cmd(args: &[&str], db_url: &str, work: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.args(args).current_dir(work).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("SWITCHBOARD") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.env("SWITCHBOARD__DATABASE__URL", db_url)
        .env("SWITCHBOARD__SECRETS__KEY_FILE", work.join("secret.key"))
        .env(
            "SWITCHBOARD__CONNECTORS__DIR",
            repo_root().join("connectors"),
        )
        .env("SWITCHBOARD__SECURITY__ALLOW_INSECURE_UPSTREAMS", "true")
        .env("SWITCHBOARD__TOKENS__BACKGROUND_REFRESH_INTERVAL_SECS", "0")
        .env("SWITCHBOARD__WEBHOOKS__POLL_INTERVAL_MS", "50")
        .env("SWITCHBOARD__WEBHOOKS__TIMEOUT_MS", "2500");
    cmd
}

impl Host {
    async fn start(db_url: &str, work: &Path, lease_ttl_ms: &str) -> Host {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = format!("http://127.0.0.1:{port}");
        let log = work.join(format!("serve-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = host_cmd(&["serve"], db_url, work)
            .env("SWITCHBOARD__SERVER__BIND", format!("127.0.0.1:{port}"))
            .env("SWITCHBOARD__SERVER__PUBLIC_URL", &base)
            .env("SWITCHBOARD__SERVER__WORKERS", "2")
            .env("SWITCHBOARD__WEBHOOKS__LEASE_TTL_MS", lease_ttl_ms)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn switchboard serve");
        let mut host = Host { child, base, log };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = host.child.try_wait().unwrap() {
                panic!("switchboard exited ({status}):\n{}", host.log_text());
            }
            if let Ok(r) = http.get(format!("{}/readyz", host.base)).send().await {
                if r.status() == StatusCode::OK {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "not ready:\n{}", host.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        host
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn call(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let r = reqwest::Client::new()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// SIGKILL: no shutdown, no lease release, nothing flushed.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The host is SIGKILLed while the delivery of a committed change is in flight (the receiver
/// holds the request unanswered): after the restart another process takes the lapsed endpoint
/// lease and delivers the event, with the same `webhook-id`, verified.
async fn sigkill_between_change_and_delivery(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let db_url = switchboard_testkit::backends::database_url(backend, work.path());
    let out = host_cmd(&["migrate"], &db_url, work.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = host_cmd(&["tenant", "create", "Kill"], &db_url, work.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = created["api_key"].as_str().unwrap().to_owned();

    let receiver = Receiver::start();
    let mut first = Host::start(&db_url, work.path(), "3000").await;
    let (s, v) = first
        .call(
            &key,
            reqwest::Method::POST,
            "/v1/webhooks",
            json!({"url": receiver.url("k")}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let secret = v["secret"].as_str().unwrap().to_owned();
    receiver.configure("k", &secret, 0, true).await;

    let (s, v) = first
        .call(
            &key,
            reqwest::Method::PUT,
            "/v1/connectors/canvas/setup",
            json!({"settings": {"api_token": "t", "fhir_base_url": "http://127.0.0.1:9/fhir"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The delivery is in flight (received, verified, unanswered): kill the host now.
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.received("k").await.is_empty() {
        assert!(Instant::now() < deadline, "{}", first.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill();
    let hung = receiver.received("k").await;
    assert_eq!(hung.len(), 1);
    assert_eq!(hung[0]["verified"], true);
    let event_id = hung[0]["id"].as_str().unwrap().to_owned();

    receiver.configure("k", &secret, 0, false).await;
    let second = Host::start(&db_url, work.path(), "3000").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.accepted("k").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "not delivered after the restart:\n{}",
            second.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(receiver.accepted("k").await, vec![event_id.clone()]);
    let last = receiver.received("k").await.pop().unwrap();
    assert_eq!(last["verified"], true);
    assert_eq!(last["payload"]["type"], "setup.changed");
    assert_eq!(last["payload"]["data"]["connector"], "canvas");
    let hook = v_id(&second, &key).await;
    let (s, v) = second
        .call(
            &key,
            reqwest::Method::GET,
            &format!("/v1/webhooks/{hook}/deliveries"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["deliveries"][0]["event"]["id"], event_id.as_str());
    assert_eq!(v["deliveries"][0]["state"], "delivered");
    drop(second);
    if backend == Backend::Postgres {
        switchboard_testkit::pg::cluster()
            .expect("PostgreSQL cluster")
            .drop_database(&db_url);
    }
}

async fn v_id(host: &Host, key: &str) -> String {
    let (s, v) = host
        .call(key, reqwest::Method::GET, "/v1/webhooks", Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["webhooks"][0]["id"].as_str().unwrap().to_owned()
}

crate::both_backends! {
    sigkill_between_change_and_delivery => sigkill_between_change_and_delivery;
}

// ---------------------------------------------------------------------------------------------
// Benchmark (docs/BENCHMARKS.md): fan-out of 10,000 events to 10 endpoints
// ---------------------------------------------------------------------------------------------

/// `cargo test --release --test it -- --ignored --nocapture webhook_fanout` (set
/// `BENCH_BACKENDS=sqlite,postgres` for both): writes 10,000 events, one transaction each (as
/// the services do), for a tenant with 10 endpoints on the Node receiver (which verifies every
/// signature), and measures how long the dispatcher takes to deliver all 100,000.
#[test]
#[ignore = "benchmark; see docs/BENCHMARKS.md"]
fn webhook_fanout_benchmark() {
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite".into());
    for name in backends.split(',') {
        let backend = match name.trim() {
            "postgres" => Backend::Postgres,
            _ => Backend::Sqlite,
        };
        actix_web::rt::System::new().block_on(fanout(backend));
    }
}

async fn fanout(backend: Backend) {
    const EVENTS: usize = 10_000;
    const ENDPOINTS: usize = 10;
    let app = TestApp::spawn_with(backend, |s| {
        s.webhooks.poll_interval_ms = 50;
        s.database.pool_size = 16;
    })
    .await;
    let receiver = Receiver::start();
    for n in 0..ENDPOINTS {
        let name = format!("e{n}");
        let (_, secret) = create_webhook(&app, &receiver.url(&name), json!([])).await;
        receiver.configure(&name, &secret, 0, false).await;
    }
    // The server's dispatcher delivers while the events are written (it polls every 50 ms:
    // this outbox is not the server's, so writes do not wake it).
    let outbox = std::sync::Arc::new(switchboard_service::webhooks::Outbox::new(
        std::sync::Arc::new(switchboard_service::SystemClock),
        3,
    ));
    let node_cpu_at_start = cpu_secs(receiver.child.id());
    let host_cpu_at_start = cpu_secs(std::process::id());
    let written = Instant::now();
    let mut tasks = Vec::new();
    for chunk in 0..8 {
        let (db, outbox, tenant) = (
            app.services.db().clone(),
            outbox.clone(),
            app.tenant.clone(),
        );
        tasks.push(db.clone().run(move |conn| {
            for i in (chunk..EVENTS).step_by(8) {
                let install = format!("ins_bench{i:05}");
                let event = outbox.install_event(
                    EventType::InstallAuthorized,
                    InstallRef {
                        tenant_id: &tenant,
                        account_id: "acc",
                        install_id: &install,
                        connector_id: "canvas",
                        status: "authorized",
                    },
                );
                // As the services do (BEGIN IMMEDIATE on SQLite).
                conn.write_transaction::<_, switchboard_db::DbError, _>(|c| {
                    switchboard_db::repo::webhooks::emit(c, &event)
                })?;
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let write_secs = written.elapsed().as_secs_f64();
    let started = Instant::now();
    let total = (EVENTS * ENDPOINTS) as i64;
    loop {
        let delivered: i64 = app
            .db(|conn| {
                Ok(wd::table
                    .filter(wd::state.eq("delivered"))
                    .count()
                    .get_result(conn)?)
            })
            .await;
        if delivered == total {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1800), "{delivered}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The whole delivery time includes the writing (the dispatcher starts at once).
    let secs = written.elapsed().as_secs_f64();
    // How busy the receiver was (a Node process near 100 % of a core would be the bottleneck)
    // and this process (server, dispatcher and writers).
    let node_cpu = (cpu_secs(receiver.child.id()) - node_cpu_at_start) / secs * 100.0;
    let host_cpu = (cpu_secs(std::process::id()) - host_cpu_at_start) / secs * 100.0;
    let attempts: i64 = app
        .db(|conn| {
            Ok(wd::table
                .select(wd::attempts)
                .load::<i64>(conn)?
                .into_iter()
                .sum())
        })
        .await;
    let seen = receiver.received("e0").await;
    assert!(seen.iter().all(|r| r["verified"] == true));
    // Per endpoint, deliveries arrived in seq order.
    let in_order: Vec<String> = events(&app).await.into_iter().map(|e| e.0).collect();
    assert_eq!(receiver.accepted("e0").await, in_order);
    println!(
        "webhook fan-out [{backend:?}]: {EVENTS} events x {ENDPOINTS} endpoints; events written in {write_secs:.1} s \
         ({:.0} events/s, 8 writers, one transaction each); all {total} deliveries done {secs:.1} s after the first \
         write = {:.0} deliveries/s; attempts {attempts}; e0 received {}; CPU: Node receiver {node_cpu:.0} %, \
         test process {host_cpu:.0} % of one core",
        EVENTS as f64 / write_secs,
        total as f64 / secs,
        seen.len()
    );
}

/// CPU seconds (user + system) the process has used so far, from /proc (USER_HZ = 100).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // The fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat") + 2..]
        .split(' ')
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}
