//! FHIR Bulk Data `$export` as asynchronous jobs (issue 12), end to end against FakeFhir's
//! Bulk Data routes (`switchboard_testkit::bulk`: kick-off 202 + Content-Location, polls of 202
//! with Retry-After and X-Progress, the manifest, NDJSON generated on the fly, DELETE; the
//! bearer token checked on every call): the kick-off stores a job; the poller, driven by a
//! manual clock (the server's own poller is off), honours Retry-After and reaches completed; the
//! manifest is shown with Switchboard URLs; files stream through and, once all are fetched, the
//! export is deleted upstream; a new application over the same database resumes polling and
//! serves the job (restart, second replica); cancel deletes upstream; a failure keeps the
//! OperationOutcome's diagnostics; a 401 on a poll refreshes once; an unfetched export is
//! deleted upstream after the retention; bad `_since` / unknown `_type` are refused with no
//! upstream call; a 10,000-resource file (~40 MiB) streams through a spawned `switchboard serve` whose
//! peak RSS (VmHWM) grows by less than 20 MiB.

use crate::methods::{install, Env, Via};
use crate::support::{assert_problem, Backend, TestApp};
use crate::token_lifecycle::{free_port, ChildServer};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use switchboard_db::repo::bulk_jobs;
use switchboard_service::{Clock, ManualClock};
use switchboard_testkit::bulk::BulkConfig;

const GROUP: &str = "grp-1";

async fn spawn(backend: Backend, clock: &ManualClock) -> TestApp {
    TestApp::spawn_with_clock(backend, clock.clone(), |s| s.bulk.poll = false).await
}

/// A second application (a restart, or another replica) over `app`'s database and key file,
/// on the same clock, its poller off too.
async fn replica(app: &TestApp, clock: &ManualClock) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        app.dir.path().join("secret.key"),
        dir.path().join("secret.key"),
    )
    .unwrap();
    let mut other = TestApp::spawn_on_clock(
        app.backend,
        dir,
        app.db_url.clone(),
        |s| s.bulk.poll = false,
        Arc::new(clock.clone()),
    )
    .await;
    // The same tenant calls it.
    other.tenant = app.tenant.clone();
    other.api_key = app.api_key.clone();
    other
}

async fn exporter(app: &TestApp, config: BulkConfig) -> Env {
    let via = Via::MedplumClientCredentials;
    let env = install(app, via, via.fhir()).await;
    env.fhir.set_bulk(config);
    env
}

fn jobs_path(env: &Env) -> String {
    format!("/v1/accounts/{}/installs/{}/jobs", env.account, env.install)
}

/// Kicks off `export_group`; returns the job id and its Location.
async fn kick_off(app: &TestApp, env: &Env, params: Value) -> (String, String) {
    let resp = app
        .http
        .post(app.url(&format!(
            "/v1/accounts/{}/installs/{}/methods/export_group",
            env.account, env.install
        )))
        .bearer_auth(&app.api_key)
        .json(&json!({ "params": params }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp
        .headers()
        .get("location")
        .expect("Location")
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = resp.json().await.unwrap();
    let id = body["job_id"].as_str().expect("job_id").to_owned();
    assert!(id.starts_with("job_"), "{body}");
    assert_eq!(body["status_url"], location.as_str());
    assert_eq!(location, format!("{}/{id}", jobs_path(env)));
    (id, location)
}

async fn job_row(app: &TestApp, id: &str) -> Option<bulk_jobs::BulkJob> {
    let id = id.to_owned();
    app.db(move |conn| bulk_jobs::get(conn, &id)).await
}

async fn poll(app: &TestApp) -> usize {
    app.services
        .bulk_poller
        .run_once()
        .await
        .expect("poller pass")
}

async fn download(app: &TestApp, path: &str) -> (StatusCode, String, String) {
    let resp = app
        .http
        .get(app.url(path))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, resp.text().await.unwrap())
}

/// Audit records of `action` on the tenant, waiting for the batch writer (bounded).
async fn audited(app: &TestApp, action: &str, want: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = app.get("/v1/audit?limit=500").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let found: Vec<Value> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == action)
            .cloned()
            .collect();
        if found.len() >= want || std::time::Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kick-off -> job row -> polls honouring Retry-After on the manual clock -> completed ->
/// manifest with Switchboard URLs -> both files streamed -> export deleted upstream; audited.
async fn export_end_to_end(backend: Backend) {
    let clock = ManualClock::new(switchboard_core::now_ms());
    let app = spawn(backend, &clock).await;
    let env = exporter(&app, BulkConfig::default()).await;
    let (id, location) = kick_off(
        &app,
        &env,
        json!({ "id": GROUP, "_type": "Patient,Observation", "_since": "2026-01-01T00:00:00Z" }),
    )
    .await;
    let stats = env.fhir.bulk_stats();
    assert_eq!(stats.kickoffs, 1);
    assert_eq!(stats.kickoff_paths, vec![format!("Group/{GROUP}/$export")]);
    let q = &stats.kickoff_queries[0];
    assert!(
        q.contains("_type=Patient%2CObservation") || q.contains("_type=Patient,Observation"),
        "{q}"
    );
    assert!(q.contains("_since=2026-01-01T00"), "{q}");
    let kick = env.fhir.last_request().unwrap();
    assert_eq!(kick.header("prefer"), Some("respond-async"));
    assert_eq!(kick.header("accept"), Some("application/fhir+json"));

    // The row: accepted, the status URL sealed.
    let row = job_row(&app, &id).await.expect("row");
    assert_eq!(row.state, bulk_jobs::ACCEPTED);
    assert_eq!(row.install_id, env.install);
    assert_eq!(row.method_id, "export_group");
    assert!(
        !String::from_utf8_lossy(&row.status_url).contains("bulk-status"),
        "the status URL is sealed"
    );
    let (s, v) = app.get(&location).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "accepted");
    assert!(v.get("manifest").is_none(), "{v}");

    // First poll: 202, Retry-After 2 s, X-Progress.
    assert_eq!(poll(&app).await, 1);
    let (_, v) = app.get(&location).await;
    assert_eq!(v["state"], "in_progress", "{v}");
    assert_eq!(v["progress"], "33% done");
    let row = job_row(&app, &id).await.unwrap();
    assert_eq!(row.next_poll_at, clock.now_ms() + 2000);
    // Not due yet: no poll.
    assert_eq!(poll(&app).await, 0);
    assert_eq!(env.fhir.bulk_stats().status_polls, 1);
    clock.advance(Duration::from_secs(2));
    assert_eq!(poll(&app).await, 1);
    let (_, v) = app.get(&location).await;
    assert_eq!(v["progress"], "66% done");
    clock.advance(Duration::from_secs(2));
    assert_eq!(poll(&app).await, 1);
    assert_eq!(env.fhir.bulk_stats().status_polls, 3);

    // Completed: the manifest with Switchboard URLs only.
    let (s, v) = app.get(&location).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "completed", "{v}");
    assert_eq!(v["polls"], 3);
    let m = &v["manifest"];
    assert_eq!(m["transaction_time"], "2026-12-01T00:00:00Z");
    assert_eq!(m["requires_access_token"], true);
    let outputs = m["output"].as_array().unwrap();
    assert_eq!(outputs.len(), 2, "{m}");
    assert_eq!(outputs[0]["type"], "Patient");
    assert_eq!(outputs[0]["count"], 3);
    assert_eq!(outputs[0]["url"], format!("{location}/files/0"));
    assert_eq!(outputs[1]["url"], format!("{location}/files/1"));
    assert!(
        !v.to_string().contains(env.fhir.origin()),
        "no upstream URL: {v}"
    );

    // The list.
    let (s, v) = app.get(&jobs_path(&env)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(v["jobs"][0]["id"], id.as_str());
    assert!(v["next_cursor"].is_null());

    // Files, streamed; the token was required upstream (FakeFhir refuses without it).
    let (s, ct, body) = download(&app, &format!("{location}/files/0")).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(ct, "application/fhir+ndjson");
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["resourceType"] == "Patient"));
    assert_eq!(env.fhir.bulk_stats().deletes, 0, "one file still to fetch");
    let (s, _, body) = download(&app, &format!("{location}/files/1")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body.lines().count(), 10);
    assert!(env.fhir.last_request().unwrap().bearer().is_some());
    // Every file fetched: the export is deleted upstream, and no longer served.
    assert_eq!(env.fhir.bulk_stats().deletes, 1);
    let row = job_row(&app, &id).await.unwrap();
    assert!(row.upstream_deleted_at.is_some());
    assert_eq!(row.downloaded_indexes(), vec![0, 1]);
    let (s, _, body) = download(&app, &format!("{location}/files/0")).await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("bulk_job_not_ready"), "{body}");
    let (s, _, _) = download(&app, &format!("{location}/files/7")).await;
    assert_eq!(s, StatusCode::CONFLICT);

    // Audit: the kick-off (202) and one record per file download.
    let kicks = audited(&app, "export_group", 1).await;
    assert_eq!(kicks.len(), 1);
    assert_eq!(kicks[0]["status"], 202);
    assert_eq!(kicks[0]["upstream_status"], 202);
    let files = audited(&app, "bulk_export.file_downloaded", 2).await;
    assert_eq!(files.len(), 2);
}

/// A job kicked off by one application is polled to completion by another over the same
/// database (a restart in the middle, or a second replica), which then serves its files.
async fn restart_resumes_polling(backend: Backend) {
    let clock = ManualClock::new(switchboard_core::now_ms());
    let first = spawn(backend, &clock).await;
    let env = exporter(&first, BulkConfig::default()).await;
    let (id, location) = kick_off(&first, &env, json!({ "id": GROUP })).await;
    assert_eq!(poll(&first).await, 1);
    assert_eq!(
        job_row(&first, &id).await.unwrap().state,
        bulk_jobs::IN_PROGRESS
    );

    // The first application stops polling; a new one takes over from the database.
    let second = replica(&first, &clock).await;
    assert_ne!(
        first.services.tokens.instance_id(),
        second.services.tokens.instance_id()
    );
    assert_eq!(poll(&second).await, 0, "not due yet");
    clock.advance(Duration::from_secs(2));
    assert_eq!(poll(&second).await, 1);
    clock.advance(Duration::from_secs(2));
    assert_eq!(poll(&second).await, 1);
    assert_eq!(env.fhir.bulk_stats().status_polls, 3);
    let (s, v) = second.get(&location).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "completed", "{v}");
    // Either serves it.
    let (s, _, body) = download(&second, &format!("{location}/files/1")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body.lines().count(), 10);
    let (s, v) = first.get(&location).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["state"], "completed");

    // A job leased by a replica that died mid-poll is polled by another once the lease lapses.
    let (id2, _) = kick_off(&first, &env, json!({ "id": GROUP })).await;
    let dead_owner = "ins-dead-replica".to_owned();
    let (jid, now) = (id2.clone(), clock.now_ms());
    let claimed = first
        .db(move |conn| bulk_jobs::claim(conn, &jid, &dead_owner, now, 60_000))
        .await;
    assert!(claimed.is_some());
    assert_eq!(poll(&second).await, 0, "leased elsewhere");
    clock.advance(Duration::from_millis(60_001));
    assert_eq!(poll(&second).await, 1, "the lapsed lease is taken over");
    assert_eq!(
        job_row(&second, &id2).await.unwrap().state,
        bulk_jobs::IN_PROGRESS
    );
}

/// DELETE on the job cancels it and deletes the export upstream; it is never polled again and
/// serves no file.
async fn cancel_deletes_upstream(backend: Backend) {
    let clock = ManualClock::new(switchboard_core::now_ms());
    let app = spawn(backend, &clock).await;
    let env = exporter(&app, BulkConfig::default()).await;
    let (id, location) = kick_off(&app, &env, json!({ "id": GROUP })).await;
    assert_eq!(poll(&app).await, 1);
    let (s, v) = app.delete(&location).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "cancelled");
    assert!(v["upstream_deleted_at"].is_string(), "{v}");
    let stats = env.fhir.bulk_stats();
    assert_eq!(stats.deletes, 1);
    let del = env.fhir.last_request().unwrap();
    assert_eq!(del.method, "DELETE");
    assert!(del.path().contains("$bulk-status/"), "{}", del.path());
    assert!(del.bearer().is_some());
    clock.advance(Duration::from_secs(60));
    assert_eq!(poll(&app).await, 0);
    assert_eq!(env.fhir.bulk_stats().status_polls, stats.status_polls);
    assert_eq!(
        job_row(&app, &id).await.unwrap().state,
        bulk_jobs::CANCELLED
    );
    let (s, _, body) = download(&app, &format!("{location}/files/0")).await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    // Unknown jobs and other installs' jobs are 404.
    let (s, _) = app.get(&format!("{}/job_unknown", jobs_path(&env))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, other_key) = app.new_tenant("Other").await;
    let r = app
        .http
        .get(app.url(&location))
        .bearer_auth(other_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// An export the EHR fails: the job is failed with the OperationOutcome's diagnostics.
async fn failure_keeps_diagnostics(backend: Backend) {
    let clock = ManualClock::new(switchboard_core::now_ms());
    let app = spawn(backend, &clock).await;
    let outcome = switchboard_testkit::fhir::operation_outcome(
        "error",
        "exception",
        "Group grp-1 has no members",
    );
    let env = exporter(
        &app,
        BulkConfig {
            polls_before_done: 0,
            fail_with: Some((500, outcome)),
            ..BulkConfig::default()
        },
    )
    .await;
    let (_, location) = kick_off(&app, &env, json!({ "id": GROUP })).await;
    assert_eq!(poll(&app).await, 1);
    let (_, v) = app.get(&location).await;
    assert_eq!(v["state"], "failed", "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(error.contains("HTTP 500"), "{error}");
    assert!(error.contains("Group grp-1 has no members"), "{error}");
    clock.advance(Duration::from_secs(60));
    assert_eq!(poll(&app).await, 0, "a failed job is not polled again");
}

/// Bad `_since`, unknown `_type`, a missing group id: 422 naming the field, nothing sent.
async fn validation_refusals(backend: Backend) {
    let clock = ManualClock::new(switchboard_core::now_ms());
    let app = spawn(backend, &clock).await;
    let env = exporter(&app, BulkConfig::default()).await;
    let before = env.fhir.request_count();
    for (params, field) in [
        (json!({ "id": GROUP, "_since": "2026-01-01" }), "_since"),
        (json!({ "id": GROUP, "_since": "yesterday" }), "_since"),
        (
            json!({ "id": GROUP, "_type": "Patient,Spaceship" }),
            "_type",
        ),
        (
            json!({ "id": GROUP, "_outputFormat": "text/csv" }),
            "_outputFormat",
        ),
        (json!({ "_type": "Patient" }), "id"),
    ] {
        let (s, v) = env
            .call(&app, "export_group", json!({ "params": params }))
            .await;
        assert_problem(s, &v, 422, "invalid_params");
        assert!(v.to_string().contains(field), "{field}: {v}");
    }
    assert_eq!(env.fhir.request_count(), before, "no upstream call");
    assert_eq!(env.fhir.bulk_stats().kickoffs, 0);
    let (_, v) = app.get(&jobs_path(&env)).await;
    assert_eq!(v["jobs"].as_array().unwrap().len(), 0);
}

/// A status poll answered 401 refreshes the install's token once (client credentials) and
/// polls again with the new one; a completed export whose files are never fetched is deleted
/// upstream after `bulk.retention_secs` (`expired`, files no longer served).
async fn refresh_on_401_and_retention(backend: Backend) {
    let clock = ManualClock::new(switchboard_core::now_ms());
    let app = spawn(backend, &clock).await;
    let env = exporter(
        &app,
        BulkConfig {
            polls_before_done: 1,
            ..BulkConfig::default()
        },
    )
    .await;
    let (id, location) = kick_off(&app, &env, json!({ "id": GROUP })).await;
    let old = env
        .fhir
        .last_request()
        .unwrap()
        .bearer()
        .unwrap()
        .to_owned();
    env.fhir.revoke_token(&old);
    assert_eq!(poll(&app).await, 1);
    let reqs = env.fhir.requests();
    let polls: Vec<_> = reqs
        .iter()
        .filter(|r| r.path().contains("$bulk-status/"))
        .collect();
    assert_eq!(polls.len(), 2, "refused, then resent");
    assert_eq!(polls[0].bearer(), Some(old.as_str()));
    let new = polls[1].bearer().unwrap();
    assert_ne!(new, old, "a new token after the refresh");
    assert_eq!(
        job_row(&app, &id).await.unwrap().state,
        bulk_jobs::IN_PROGRESS
    );
    clock.advance(Duration::from_secs(2));
    assert_eq!(poll(&app).await, 1);
    assert_eq!(
        job_row(&app, &id).await.unwrap().state,
        bulk_jobs::COMPLETED
    );
    // Retention (default 24 h): nothing before it, then DELETE upstream and `expired`.
    clock.advance(Duration::from_secs(86_399));
    poll(&app).await;
    assert_eq!(env.fhir.bulk_stats().deletes, 0);
    clock.advance(Duration::from_secs(2));
    poll(&app).await;
    assert_eq!(env.fhir.bulk_stats().deletes, 1);
    let (_, v) = app.get(&location).await;
    assert_eq!(v["state"], "expired", "{v}");
    let (s, _, _) = download(&app, &format!("{location}/files/0")).await;
    assert_eq!(s, StatusCode::CONFLICT);
    poll(&app).await;
    assert_eq!(env.fhir.bulk_stats().deletes, 1, "deleted once");
}

/// Who offers which export (the connector files cite the vendors): Medplum group and system,
/// Epic Backend Services group; Canvas and user-facing Epic none. Shown with kind and level.
async fn catalogue_lists_exports(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for (connector, want) in [
        ("medplum", vec!["export_group", "export_system"]),
        ("epic_backend", vec!["export_group"]),
        ("epic", vec![]),
        ("canvas", vec![]),
    ] {
        let (s, v) = app.get(&format!("/v1/connectors/{connector}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let exports: Vec<&Value> = v["methods"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["kind"] == "bulk_export")
            .collect();
        let ids: Vec<&str> = exports.iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(ids, want, "{connector}");
        for m in exports {
            assert_eq!(m["writes"], false, "{m}");
            assert_eq!(m["verb"], "GET");
            assert_eq!(m["scope"], "system/*.read");
            let level = if m["id"] == "export_group" {
                "group"
            } else {
                "system"
            };
            assert_eq!(m["level"], level, "{m}");
            let names: Vec<&str> = m["params"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert!(names.contains(&"_type") && names.contains(&"_since"), "{m}");
        }
    }
}

crate::both_backends! {
    bulk_catalogue_lists_exports => catalogue_lists_exports;
    bulk_refresh_on_401_and_retention => refresh_on_401_and_retention;
    bulk_export_end_to_end => export_end_to_end;
    bulk_restart_resumes_polling => restart_resumes_polling;
    bulk_cancel_deletes_upstream => cancel_deletes_upstream;
    bulk_failure_keeps_diagnostics => failure_keeps_diagnostics;
    bulk_validation_refusals => validation_refusals;
    bulk_file_streams_in_flat_memory => file_streams_in_flat_memory;
}

/// Peak resident set (VmHWM) of a process, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// A 10,000-resource file of ~40 MiB streams through a spawned `switchboard serve` (a second
/// replica over the same database): every line arrives, and the server's peak RSS grows by
/// less than 20 MiB (the file is never held whole).
async fn file_streams_in_flat_memory(backend: Backend) {
    let clock = ManualClock::new(switchboard_core::now_ms());
    let app = spawn(backend, &clock).await;
    const N: usize = 10_000;
    let env = exporter(
        &app,
        BulkConfig {
            polls_before_done: 0,
            files: vec![("Patient".into(), 1), ("Observation".into(), N)],
            line_padding: 4096,
            ..BulkConfig::default()
        },
    )
    .await;
    let (_, location) = kick_off(&app, &env, json!({ "id": GROUP })).await;
    assert_eq!(poll(&app).await, 1);
    let work = tempfile::tempdir().unwrap();
    let child = ChildServer::start(
        free_port(),
        &app.db_url,
        &app.dir.path().join("secret.key"),
        work.path(),
        &[("SWITCHBOARD__BULK__POLL", "false")],
    )
    .await;
    let get = |path: String| {
        let url = format!("{}{path}", child.base);
        let key = app.api_key.clone();
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
        }
    };
    // Warm up (pools, caches) with the small file, then measure the large one.
    let r = get(format!("{location}/files/0")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap().lines().count(), 1);
    let pid = child.child.id();
    let before = vm_hwm_kib(pid);
    let mut r = get(format!("{location}/files/1")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let (mut bytes, mut newlines) = (0usize, 0usize);
    while let Some(chunk) = r.chunk().await.unwrap() {
        bytes += chunk.len();
        newlines += chunk.iter().filter(|b| **b == b'\n').count();
    }
    assert_eq!(newlines, N);
    assert!(bytes > 40 * 1024 * 1024, "{bytes} bytes streamed");
    let after = vm_hwm_kib(pid);
    let growth_mib = (after.saturating_sub(before)) as f64 / 1024.0;
    eprintln!(
        "bulk stream: {bytes} bytes, peak RSS {before} -> {after} KiB (+{growth_mib:.1} MiB)"
    );
    assert!(
        growth_mib < 20.0,
        "peak RSS grew by {growth_mib:.1} MiB ({before} -> {after} KiB) streaming {bytes} bytes"
    );
    drop(child);
}
