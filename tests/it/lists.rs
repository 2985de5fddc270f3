//! Lists that scale: cursor pagination of accounts, installs and API keys (`limit`, `cursor`,
//! `next_cursor`), the tenant-wide installs list with its filters, and what a bad page request
//! gets. Every test runs on SQLite and PostgreSQL.

use crate::both_backends;
use crate::support::{assert_problem, Backend, TestApp};
use diesel::Connection;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use switchboard_core::InstallStatus;
use switchboard_db::repo;

both_backends! {
    accounts_walk_in_pages_of_at_most_500 => accounts_walk_in_pages_of_at_most_500;
    inserts_and_deletes_between_pages_neither_repeat_nor_skip => inserts_and_deletes_between_pages_neither_repeat_nor_skip;
    bad_limits_and_cursors_are_400 => bad_limits_and_cursors_are_400;
    cursor_walks_stay_inside_the_tenant => cursor_walks_stay_inside_the_tenant;
    installs_across_accounts_by_status_and_connector => installs_across_accounts_by_status_and_connector;
    api_keys_paginate => api_keys_paginate;
}

/// One page: the ids of `field` and the `next_cursor` (None when null).
async fn page(app: &TestApp, key: &str, path: &str, field: &str) -> (Vec<String>, Option<String>) {
    let (s, v) = app.call_as(key, Method::GET, path, None).await;
    assert_eq!(s, StatusCode::OK, "{path}: {v}");
    let ids = v[field]
        .as_array()
        .unwrap_or_else(|| panic!("{path}: no {field} array: {v}"))
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        v.get("next_cursor").is_some(),
        "next_cursor is always present: {v}"
    );
    let next = v["next_cursor"].as_str().map(str::to_owned);
    (ids, next)
}

/// `path` with `limit` and an optional cursor appended (path may already have a query).
fn with_page(path: &str, limit: u32, cursor: Option<&str>) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    match cursor {
        Some(c) => format!("{path}{sep}limit={limit}&cursor={c}"),
        None => format!("{path}{sep}limit={limit}"),
    }
}

/// Follows `next_cursor` from the first page to the last; returns the pages' ids.
async fn walk(app: &TestApp, key: &str, path: &str, field: &str, limit: u32) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let (ids, next) = page(app, key, &with_page(path, limit, cursor.as_deref()), field).await;
        assert!(ids.len() <= limit as usize, "{} > {limit}", ids.len());
        pages.push(ids);
        assert!(pages.len() <= 10_000, "the walk does not end");
        match next {
            Some(c) => cursor = Some(c),
            None => return pages,
        }
    }
}

/// Inserts accounts straight through the repository in one transaction (1,050 HTTP creates
/// would only slow the suite down); `created_at` is given so that several rows share one.
async fn insert_accounts(app: &TestApp, tenant: &str, rows: Vec<(String, i64)>) {
    let tenant = tenant.to_owned();
    app.db(move |conn| {
        conn.transaction::<_, switchboard_db::DbError, _>(|c| {
            for (id, created_at) in rows {
                repo::accounts::insert(
                    c,
                    &switchboard_db::NewAccount {
                        tenant_id: tenant.clone(),
                        id: id.clone(),
                        name: format!("Account {id}"),
                        created_at,
                    },
                )?;
            }
            Ok(())
        })
    })
    .await;
}

async fn account_count(app: &TestApp) -> usize {
    let tenant = app.tenant.clone();
    app.db(move |conn| repo::accounts::list_page(conn, &tenant, None, 10_000).map(|p| p.rows))
        .await
        .len()
}

fn assert_each_once(pages: &[Vec<String>], expected: &BTreeSet<String>) {
    let all: Vec<&String> = pages.iter().flatten().collect();
    let distinct: BTreeSet<String> = all.iter().map(|s| s.to_string()).collect();
    assert_eq!(all.len(), distinct.len(), "an id came twice");
    assert_eq!(&distinct, expected);
}

// ---------------------------------------------------------------------------------------------

async fn accounts_walk_in_pages_of_at_most_500(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // 1,050 accounts, 7 per millisecond (ties are broken by id), ids in random order relative
    // to creation time.
    let base = 1_700_000_000_000_i64;
    let rows: Vec<(String, i64)> = (0..1050)
        .map(|n| {
            let id = format!("a{:04}", (n * 7919) % 1050);
            (id, base + n / 7)
        })
        .collect();
    let mut in_order = rows.clone();
    in_order.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    let in_order: Vec<String> = in_order.into_iter().map(|r| r.0).collect();
    let expected: BTreeSet<String> = in_order.iter().cloned().collect();
    insert_accounts(&app, &app.tenant.clone(), rows).await;

    // limit 500: 500 + 500 + 50, the last page says there is no more.
    let pages = walk(&app, &app.api_key, "/v1/accounts", "accounts", 500).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [500, 500, 50]
    );
    assert_each_once(&pages, &expected);
    // Oldest first, ties by id: the order the lists have always had.
    assert_eq!(pages.concat(), in_order);

    // A limit that divides the count: no empty page at the end.
    let pages = walk(&app, &app.api_key, "/v1/accounts", "accounts", 350).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [350, 350, 350]
    );
    assert_each_once(&pages, &expected);

    // No limit: the first 100 and a cursor.
    let (s, v) = app.get("/v1/accounts").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["accounts"].as_array().unwrap().len(), 100);
    assert_eq!(v["accounts"][0]["id"], in_order[0].as_str());
    assert_eq!(v["accounts"][0]["name"], format!("Account {}", in_order[0]));
    assert!(v["next_cursor"].is_string(), "{v}");
    // Its cursor continues at the 101st.
    let (ids, _) = page(
        &app,
        &app.api_key,
        &with_page("/v1/accounts", 3, v["next_cursor"].as_str()),
        "accounts",
    )
    .await;
    assert_eq!(ids, in_order[100..103]);

    // A small list is one page with a null cursor.
    let (_, key_b) = app.new_tenant("Small").await;
    let (s, v) = app.call_as(&key_b, Method::GET, "/v1/accounts", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!({"accounts": [], "next_cursor": null}));
}

async fn inserts_and_deletes_between_pages_neither_repeat_nor_skip(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut originals = BTreeSet::new();
    for n in 0..24 {
        let id = format!("orig-{n:02}");
        app.create_account(&id).await;
        originals.insert(id);
    }
    // Rows that existed before the walk but were created in the same millisecond as others
    // and rows dated before everything (the walk must not depend on ids being time-ordered).
    let tenant = app.tenant.clone();
    insert_accounts(
        &app,
        &tenant,
        vec![
            ("old-b".into(), 1),
            ("old-a".into(), 1),
            ("old-c".into(), 2),
        ],
    )
    .await;
    originals.extend(["old-a", "old-b", "old-c"].map(String::from));

    let mut pages: Vec<Vec<String>> = Vec::new();
    let mut added = BTreeSet::new();
    let mut deleted = BTreeSet::new();
    let mut cursor: Option<String> = None;
    let mut round = 0;
    loop {
        let (ids, next) = page(
            &app,
            &app.api_key,
            &with_page("/v1/accounts", 5, cursor.as_deref()),
            "accounts",
        )
        .await;
        pages.push(ids.clone());
        let Some(next) = next else { break };
        // Between two fetches: new accounts whose ids sort before and after everything, one
        // dated before the cursor (never shown to this walk, which is fine), and the deletion
        // of the row the cursor points at and of one not yet seen.
        for id in [format!("0-new-{round}"), format!("zz-new-{round}")] {
            app.create_account(&id).await;
            added.insert(id);
        }
        insert_accounts(&app, &tenant, vec![(format!("past-{round}"), 0)]).await;
        let last = ids.last().unwrap().clone();
        let (s, _) = app.delete(&format!("/v1/accounts/{last}")).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        deleted.insert(last);
        let unseen = originals
            .iter()
            .find(|id| !pages.concat().contains(id) && !deleted.contains(*id))
            .cloned();
        if round == 1 {
            if let Some(u) = unseen {
                let (s, _) = app.delete(&format!("/v1/accounts/{u}")).await;
                assert_eq!(s, StatusCode::NO_CONTENT);
                deleted.insert(u);
            }
        }
        cursor = Some(next);
        round += 1;
        assert!(round < 100, "the walk does not end");
    }
    let seen: Vec<String> = pages.concat();
    let distinct: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), distinct.len(), "an id came twice: {seen:?}");
    // Every row that existed at the start and was not deleted before its turn came exactly
    // once; so did every row created during the walk (they sort after the cursor).
    for id in &originals {
        assert!(
            distinct.contains(id) || deleted.contains(id),
            "{id} was skipped: {seen:?}"
        );
    }
    for id in &added {
        assert!(distinct.contains(id), "{id} (added mid-walk) is missing");
    }
    assert!(!distinct.iter().any(|id| id.starts_with("past-")));
    assert!(round >= 5, "the walk had {round} rounds");
}

async fn bad_limits_and_cursors_are_400(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for n in 0..3 {
        app.create_account(&format!("acc-{n}")).await;
    }
    let (_, first) = page(&app, &app.api_key, "/v1/accounts?limit=1", "accounts").await;
    let cursor = first.expect("a cursor");
    let (_, key_cursor) = {
        let r = app.post("/v1/api-keys", json!({"name": "second"})).await;
        assert_eq!(r.0, StatusCode::CREATED);
        page(&app, &app.api_key, "/v1/api-keys?limit=1", "api_keys").await
    };
    let key_cursor = key_cursor.expect("a cursor");
    // One character changed, in the middle.
    let mut tampered = cursor.clone().into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();

    let before = account_count(&app).await;
    let bad = [
        "/v1/accounts?limit=0".to_string(),
        "/v1/accounts?limit=501".to_string(),
        "/v1/accounts?limit=-1".to_string(),
        "/v1/accounts?limit=abc".to_string(),
        "/v1/accounts?limit=99999999999".to_string(),
        "/v1/accounts?limit=".to_string(),
        "/v1/accounts?cursor=not-a-cursor".to_string(),
        "/v1/accounts?cursor=".to_string(),
        format!("/v1/accounts?cursor={tampered}"),
        format!("/v1/accounts?cursor={}", &cursor[..cursor.len() - 2]),
        format!("/v1/accounts?cursor={}", "A".repeat(2000)),
        // Another list's cursor.
        format!("/v1/accounts?cursor={key_cursor}"),
        format!("/v1/api-keys?cursor={cursor}"),
        format!("/v1/installs?cursor={cursor}"),
        format!("/v1/accounts/acc-0/installs?cursor={cursor}"),
        "/v1/accounts?colour=red".to_string(),
        "/v1/api-keys?limit=0".to_string(),
        "/v1/accounts/acc-0/installs?limit=501".to_string(),
        "/v1/installs?limit=0".to_string(),
        "/v1/installs?status=sleeping".to_string(),
        "/v1/installs?status=".to_string(),
        "/v1/installs?connector=a%20b".to_string(),
        "/v1/installs?account=..%2Fx".to_string(),
    ];
    for path in &bad {
        let (s, v) = app.get(path).await;
        assert_problem(s, &v, 400, "invalid_request");
        assert!(v.get("accounts").is_none() && v.get("installs").is_none());
    }
    // The value sent is never echoed.
    let (_, v) = app.get(&format!("/v1/accounts?cursor={tampered}")).await;
    assert!(!v.to_string().contains(&tampered), "{v}");
    let (_, v) = app.get("/v1/installs?status=sleeping").await;
    assert!(!v.to_string().contains("sleeping"), "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("needs_reauthorization"),
        "{v}"
    );
    let (_, v) = app.get("/v1/accounts?limit=501").await;
    assert!(v["detail"].as_str().unwrap().contains("limit"), "{v}");

    // Nothing changed, and the good cursor still works after all that.
    assert_eq!(account_count(&app).await, before);
    let (ids, _) = page(
        &app,
        &app.api_key,
        &with_page("/v1/accounts", 500, Some(&cursor)),
        "accounts",
    )
    .await;
    assert_eq!(ids, ["acc-1", "acc-2"]);
    // The edges of the range are fine.
    page(&app, &app.api_key, "/v1/accounts?limit=1", "accounts").await;
    page(&app, &app.api_key, "/v1/accounts?limit=500", "accounts").await;
}

async fn cursor_walks_stay_inside_the_tenant(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, key_b) = app.new_tenant("Tenant B").await;
    // Same ids in both tenants, interleaved in time.
    let mut a_ids = BTreeSet::new();
    let mut b_ids = BTreeSet::new();
    for n in 0..12 {
        let id = format!("shared-{n:02}");
        app.create_account(&id).await;
        a_ids.insert(id.clone());
        if n % 2 == 0 {
            let (s, v) = app
                .call_as(
                    &key_b,
                    Method::POST,
                    "/v1/accounts",
                    Some(json!({"id": id, "name": "B's"})),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
            b_ids.insert(id);
        }
        let (s, v) = app
            .call_as(
                &key_b,
                Method::POST,
                "/v1/accounts",
                Some(json!({"name": format!("B only {n}")})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        b_ids.insert(v["id"].as_str().unwrap().to_owned());
    }
    let pages_b = walk(&app, &key_b, "/v1/accounts", "accounts", 4).await;
    assert_each_once(&pages_b, &b_ids);
    assert_eq!(pages_b.len(), 18usize.div_ceil(4));
    let pages_a = walk(&app, &app.api_key, "/v1/accounts", "accounts", 5).await;
    assert_each_once(&pages_a, &a_ids);
    // B's rows carry B's names only.
    let (_, v) = app
        .call_as(&key_b, Method::GET, "/v1/accounts?limit=500", None)
        .await;
    for a in v["accounts"].as_array().unwrap() {
        let name = a["name"].as_str().unwrap();
        assert!(name == "B's" || name.starts_with("B only"), "{a}");
    }

    // A's cursor is refused for B (and the other way round), even though the ids exist in B.
    let (_, cursor_a) = page(&app, &app.api_key, "/v1/accounts?limit=2", "accounts").await;
    let (_, cursor_b) = page(&app, &key_b, "/v1/accounts?limit=2", "accounts").await;
    let (s, v) = app
        .call_as(
            &key_b,
            Method::GET,
            &format!("/v1/accounts?cursor={}", cursor_a.clone().unwrap()),
            None,
        )
        .await;
    assert_problem(s, &v, 400, "invalid_request");
    let (s, v) = app
        .get(&format!("/v1/accounts?cursor={}", cursor_b.unwrap()))
        .await;
    assert_problem(s, &v, 400, "invalid_request");
    // Installs across accounts: each tenant sees its own only.
    canvas_bearer_setup(&app, &app.api_key).await;
    canvas_bearer_setup(&app, &key_b).await;
    let ia = create_install(&app, &app.api_key, "shared-00", "canvas", "static_bearer").await;
    let ib = create_install(&app, &key_b, "shared-00", "canvas", "static_bearer").await;
    let (ids, next) = page(&app, &key_b, "/v1/installs", "installs").await;
    assert_eq!((ids, next), (vec![ib.clone()], None));
    let (ids, _) = page(&app, &app.api_key, "/v1/installs", "installs").await;
    assert_eq!(ids, [ia]);
}

async fn canvas_bearer_setup(app: &TestApp, key: &str) {
    let (s, v) = app
        .call_as(
            key,
            Method::PUT,
            "/v1/connectors/canvas/setup",
            Some(json!({"settings": {"api_token": "tok", "fhir_base_url": "http://127.0.0.1:9/"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

async fn epic_setup(app: &TestApp) {
    let (s, v) = app
        .put(
            "/v1/connectors/epic/setup",
            json!({"settings": {
                "endpoint": "http://127.0.0.1:9/interconnect/",
                "client_id": "epic-app",
                "client_secret": "s3cret-value",
            }}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// Creates an install; returns its id.
async fn create_install(
    app: &TestApp,
    key: &str,
    account: &str,
    connector: &str,
    auth_type: &str,
) -> String {
    let (s, v) = app
        .call_as(
            key,
            Method::POST,
            &format!("/v1/accounts/{account}/installs"),
            Some(json!({"connector": connector, "auth_type": auth_type})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

async fn installs_across_accounts_by_status_and_connector(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let key = app.api_key.clone();
    canvas_bearer_setup(&app, &key).await;
    epic_setup(&app).await;
    for a in ["a1", "a2", "a3"] {
        app.create_account(a).await;
    }
    // Creation order: c1 (a1), e1 (a1), c2 (a2), e3 (a3), c3 (a3).
    let c1 = create_install(&app, &key, "a1", "canvas", "static_bearer").await;
    let e1 = create_install(&app, &key, "a1", "epic", "oauth2_authorization_code").await;
    let c2 = create_install(&app, &key, "a2", "canvas", "static_bearer").await;
    let e3 = create_install(&app, &key, "a3", "epic", "oauth2_authorization_code").await;
    let c3 = create_install(&app, &key, "a3", "canvas", "static_bearer").await;
    // c2's provider stopped accepting its credentials (what a refused refresh records).
    let id = c2.clone();
    assert!(
        app.db(move |conn| repo::installs::set_status(
            conn,
            &id,
            InstallStatus::NeedsReauthorization,
            Some("the refresh token was rejected"),
            switchboard_core::now_ms(),
        ))
        .await
    );

    let ids = |v: &[&String]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (all, next) = page(&app, &key, "/v1/installs", "installs").await;
    assert_eq!(all, ids(&[&c1, &e1, &c2, &e3, &c3]));
    assert_eq!(next, None);

    // The console's health view.
    let (s, v) = app.get("/v1/installs?status=needs_reauthorization").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["installs"].as_array().unwrap().len(), 1, "{v}");
    let row = &v["installs"][0];
    assert_eq!(row["id"], c2.as_str());
    assert_eq!(row["account"], "a2");
    assert_eq!(row["connector"], "canvas");
    assert_eq!(row["status"], "needs_reauthorization");
    assert_eq!(row["last_error"], "the refresh token was rejected");
    assert!(row.get("access_token").is_none() && !v.to_string().contains("\"tok\""));
    assert_eq!(v["next_cursor"], Value::Null);

    let cases: [(&str, Vec<String>); 8] = [
        ("status=authorized", ids(&[&c1, &c3])),
        ("status=pending_authorization", ids(&[&e1, &e3])),
        ("status=error", vec![]),
        ("connector=epic", ids(&[&e1, &e3])),
        ("connector=canvas&status=authorized", ids(&[&c1, &c3])),
        ("account=a3", ids(&[&e3, &c3])),
        (
            "account=a1&connector=epic&status=pending_authorization",
            ids(&[&e1]),
        ),
        ("account=no-such-account", vec![]),
    ];
    for (q, want) in cases {
        let (got, next) = page(&app, &key, &format!("/v1/installs?{q}"), "installs").await;
        assert_eq!(got, want, "{q}");
        assert_eq!(next, None, "{q}");
    }

    // Filters and pages together: one at a time, the filter kept by the cursor's list.
    let pages = walk(&app, &key, "/v1/installs?connector=canvas", "installs", 1).await;
    assert_eq!(
        pages,
        [vec![c1.clone()], vec![c2.clone()], vec![c3.clone()]]
    );
    let (_, cursor) = page(
        &app,
        &key,
        "/v1/installs?status=authorized&limit=1",
        "installs",
    )
    .await;
    let cursor = cursor.expect("a cursor");
    let (rest, _) = page(
        &app,
        &key,
        &format!("/v1/installs?status=authorized&limit=1&cursor={cursor}"),
        "installs",
    )
    .await;
    assert_eq!(rest, [c3.as_str()]);
    // The same cursor with other filters is another list's cursor.
    let (s, v) = app
        .get(&format!(
            "/v1/installs?status=pending_authorization&cursor={cursor}"
        ))
        .await;
    assert_problem(s, &v, 400, "invalid_request");

    // An account's installs page too, and the account list is the same list as `account=`.
    let pages = walk(&app, &key, "/v1/accounts/a1/installs", "installs", 1).await;
    assert_eq!(pages, [vec![c1.clone()], vec![e1.clone()]]);
    let (_, cursor) = page(&app, &key, "/v1/accounts/a3/installs?limit=1", "installs").await;
    let (rest, _) = page(
        &app,
        &key,
        &format!("/v1/installs?account=a3&cursor={}", cursor.unwrap()),
        "installs",
    )
    .await;
    assert_eq!(rest, [c3.as_str()]);
    // A missing account is still a 404 on the account's list.
    let (s, v) = app.get("/v1/accounts/nope/installs").await;
    assert_problem(s, &v, 404, "not_found");

    // Deleting an account takes all of its installs, whatever the page size.
    let (s, _) = app.delete("/v1/accounts/a1").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (all, _) = page(&app, &key, "/v1/installs", "installs").await;
    assert_eq!(all, ids(&[&c2, &e3, &c3]));
}

async fn api_keys_paginate(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut created = BTreeMap::new();
    for n in 0..6 {
        let (s, v) = app
            .post("/v1/api-keys", json!({"name": format!("key {n}")}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        created.insert(v["id"].as_str().unwrap().to_owned(), n);
    }
    // The spawn key plus six.
    let pages = walk(&app, &app.api_key, "/v1/api-keys", "api_keys", 3).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    let all: BTreeSet<String> = pages.concat().into_iter().collect();
    assert_eq!(all.len(), 7);
    assert!(created.keys().all(|k| all.contains(k)));

    // A key revoked mid-walk (the one the cursor points at) does not break the walk.
    let (first, cursor) = page(&app, &app.api_key, "/v1/api-keys?limit=2", "api_keys").await;
    let revoked = first[1].clone();
    let own_key_id = pages[0][0].clone();
    assert_ne!(revoked, own_key_id);
    let (s, _) = app.delete(&format!("/v1/api-keys/{revoked}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (rest, next) = page(
        &app,
        &app.api_key,
        &with_page("/v1/api-keys", 500, cursor.as_deref()),
        "api_keys",
    )
    .await;
    assert_eq!(next, None);
    assert_eq!(rest, pages.concat()[2..]);
    // Never a secret in the list.
    let (_, v) = app.get("/v1/api-keys").await;
    assert!(!v.to_string().contains(&app.api_key));
    assert!(v["api_keys"][0].get("key_hash").is_none());
}
