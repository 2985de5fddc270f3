use switchboard_core::InstallStatus;
use switchboard_db::{repo, Db, DbError, NewApiKey, OAuthState, TokenWrite};

use crate::common::{account, install, new_install, tenant};
use switchboard_testkit::both_backends;

both_backends!(
    tenants_roundtrip,
    api_keys_lifecycle,
    setups_upsert_and_scope,
    accounts_scope_and_conflict,
    account_delete_cascades,
    installs_scope,
    install_needs_its_account,
    store_tokens_is_fenced,
    refresh_errors,
    refresh_candidates,
    oauth_state_single_use,
    oauth_state_concurrent_take,
    install_status_column,
);

fn tenants_roundtrip(db: &Db) {
    let t = tenant(db, "ten_a");
    let mut c = db.get().unwrap();
    assert_eq!(
        repo::tenants::find(&mut c, "ten_a").unwrap(),
        Some(t.clone())
    );
    assert_eq!(repo::tenants::find(&mut c, "ten_b").unwrap(), None);
    assert!(repo::tenants::set_allowed_return_urls(&mut c, "ten_a", r#"["https://x/"]"#).unwrap());
    assert!(!repo::tenants::set_allowed_return_urls(&mut c, "ten_zz", "[]").unwrap());
    let found = repo::tenants::find(&mut c, "ten_a").unwrap().unwrap();
    assert_eq!(found.allowed_return_urls, r#"["https://x/"]"#);
    assert!(matches!(
        repo::tenants::insert(&mut c, &t),
        Err(DbError::Conflict)
    ));
    drop(c);
    tenant(db, "ten_b");
    let mut c = db.get().unwrap();
    assert_eq!(
        repo::tenants::find(&mut c, "ten_b").unwrap().map(|t| t.id),
        Some("ten_b".to_owned())
    );
}

fn key(tenant_id: &str, id: &str, hash: &str, at: i64) -> NewApiKey {
    NewApiKey {
        id: id.to_owned(),
        tenant_id: tenant_id.to_owned(),
        name: format!("key {id}"),
        prefix: "sb_abcd".to_owned(),
        key_hash: hash.to_owned(),
        created_at: at,
    }
}

fn api_keys_lifecycle(db: &Db) {
    tenant(db, "ten_a");
    tenant(db, "ten_b");
    let mut c = db.get().unwrap();
    let k1 = repo::api_keys::insert(&mut c, &key("ten_a", "key_1", "h1", 10)).unwrap();
    assert_eq!(k1.last_used_at, None);
    assert_eq!(k1.revoked_at, None);
    repo::api_keys::insert(&mut c, &key("ten_a", "key_2", "h2", 20)).unwrap();
    repo::api_keys::insert(&mut c, &key("ten_b", "key_3", "h3", 30)).unwrap();
    // key_hash is unique across tenants.
    assert!(matches!(
        repo::api_keys::insert(&mut c, &key("ten_b", "key_4", "h1", 40)),
        Err(DbError::Conflict)
    ));

    assert_eq!(
        repo::api_keys::find_active_by_hash(&mut c, "h1").unwrap(),
        Some(k1.clone())
    );
    let ids = |v: Vec<switchboard_db::ApiKey>| v.into_iter().map(|k| k.id).collect::<Vec<_>>();
    assert_eq!(
        ids(repo::api_keys::list_page(&mut c, "ten_a", None, 10_000)
            .map(|p| p.rows)
            .unwrap()),
        ["key_1", "key_2"]
    );
    assert_eq!(
        ids(repo::api_keys::list_page(&mut c, "ten_b", None, 10_000)
            .map(|p| p.rows)
            .unwrap()),
        ["key_3"]
    );
    assert_eq!(
        repo::api_keys::find(&mut c, "ten_b", "key_1").unwrap(),
        None
    );

    // Tenant B cannot revoke tenant A's key.
    assert!(!repo::api_keys::revoke(&mut c, "ten_b", "key_1", 50).unwrap());
    assert!(repo::api_keys::revoke(&mut c, "ten_a", "key_1", 50).unwrap());
    assert!(!repo::api_keys::revoke(&mut c, "ten_a", "key_1", 60).unwrap());
    assert_eq!(
        repo::api_keys::find_active_by_hash(&mut c, "h1").unwrap(),
        None
    );
    assert_eq!(
        ids(repo::api_keys::list_page(&mut c, "ten_a", None, 10_000)
            .map(|p| p.rows)
            .unwrap()),
        ["key_2"]
    );
    assert_eq!(
        repo::api_keys::find(&mut c, "ten_a", "key_1")
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(50)
    );

    let touched = repo::api_keys::touch_last_used(
        &mut c,
        &[
            "key_2".to_owned(),
            "key_3".to_owned(),
            "key_nope".to_owned(),
        ],
        99,
    )
    .unwrap();
    assert_eq!(touched, 2);
    assert_eq!(
        repo::api_keys::touch_last_used(&mut c, &[], 100).unwrap(),
        0
    );
    let k2 = repo::api_keys::find_active_by_hash(&mut c, "h2")
        .unwrap()
        .unwrap();
    assert_eq!(k2.last_used_at, Some(99));
}

fn setups_upsert_and_scope(db: &Db) {
    tenant(db, "ten_a");
    tenant(db, "ten_b");
    let mut c = db.get().unwrap();
    let s = repo::setups::upsert(&mut c, "ten_a", "epic", r#"{"v":1}"#, 100).unwrap();
    assert_eq!(
        (s.created_at, s.updated_at, s.settings.as_str()),
        (100, 100, r#"{"v":1}"#)
    );
    let s = repo::setups::upsert(&mut c, "ten_a", "epic", r#"{"v":2}"#, 200).unwrap();
    assert_eq!(
        (s.created_at, s.updated_at, s.settings.as_str()),
        (100, 200, r#"{"v":2}"#)
    );
    assert_eq!(
        repo::setups::find(&mut c, "ten_a", "epic").unwrap(),
        Some(s)
    );
    repo::setups::upsert(&mut c, "ten_a", "canvas", "{}", 300).unwrap();
    repo::setups::upsert(&mut c, "ten_b", "epic", r#"{"b":true}"#, 300).unwrap();

    assert_eq!(
        repo::setups::find(&mut c, "ten_b", "epic")
            .unwrap()
            .unwrap()
            .settings,
        r#"{"b":true}"#
    );
    assert_eq!(repo::setups::find(&mut c, "ten_b", "canvas").unwrap(), None);
    let names = |v: Vec<switchboard_db::ConnectorSetup>| {
        v.into_iter()
            .map(|s| format!("{}/{}", s.tenant_id, s.connector_id))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(repo::setups::list(&mut c, "ten_a").unwrap()),
        ["ten_a/canvas", "ten_a/epic"]
    );

    assert!(!repo::setups::delete(&mut c, "ten_b", "canvas").unwrap());
    assert!(repo::setups::delete(&mut c, "ten_a", "canvas").unwrap());
    assert!(!repo::setups::delete(&mut c, "ten_a", "canvas").unwrap());
    assert_eq!(repo::setups::find(&mut c, "ten_a", "canvas").unwrap(), None);
    // Settings of an unknown tenant violate the foreign key.
    assert!(repo::setups::upsert(&mut c, "ten_zz", "epic", "{}", 1).is_err());
}

fn accounts_scope_and_conflict(db: &Db) {
    tenant(db, "ten_a");
    tenant(db, "ten_b");
    let a = account(db, "ten_a", "acme");
    let mut c = db.get().unwrap();
    assert!(matches!(
        repo::accounts::insert(&mut c, &a),
        Err(DbError::Conflict)
    ));
    drop(c);
    // The same account id under another tenant is a different account.
    let b = account(db, "ten_b", "acme");
    account(db, "ten_a", "beta");
    let mut c = db.get().unwrap();
    assert_eq!(
        repo::accounts::find(&mut c, "ten_a", "acme").unwrap(),
        Some(a)
    );
    assert_eq!(
        repo::accounts::find(&mut c, "ten_b", "acme").unwrap(),
        Some(b)
    );
    assert_eq!(repo::accounts::find(&mut c, "ten_b", "beta").unwrap(), None);
    let ids = |v: Vec<switchboard_db::Account>| v.into_iter().map(|a| a.id).collect::<Vec<_>>();
    assert_eq!(
        ids(repo::accounts::list_page(&mut c, "ten_a", None, 10_000)
            .map(|p| p.rows)
            .unwrap()),
        ["acme", "beta"]
    );
    assert_eq!(
        ids(repo::accounts::list_page(&mut c, "ten_b", None, 10_000)
            .map(|p| p.rows)
            .unwrap()),
        ["acme"]
    );
    assert!(!repo::accounts::delete(&mut c, "ten_b", "beta").unwrap());
    assert!(repo::accounts::delete(&mut c, "ten_b", "acme").unwrap());
    assert_eq!(
        ids(repo::accounts::list_page(&mut c, "ten_a", None, 10_000)
            .map(|p| p.rows)
            .unwrap()),
        ["acme", "beta"]
    );
    // An account of an unknown tenant violates the foreign key (and is not a "conflict").
    let err = repo::accounts::insert(
        &mut c,
        &switchboard_db::Account {
            tenant_id: "ten_zz".to_owned(),
            id: "x-secret-looking-id".to_owned(),
            name: "Patient Jane Doe".to_owned(),
            created_at: 1,
        },
    )
    .unwrap_err();
    assert!(matches!(err, DbError::Query(_)), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains("Jane") && !shown.contains("x-secret"),
        "{shown}"
    );
}

fn state(install_id: &str, hash: &str, expires_at: i64) -> OAuthState {
    OAuthState {
        state_hash: hash.to_owned(),
        install_id: install_id.to_owned(),
        tenant_id: "ten_a".to_owned(),
        verifier: vec![1, 2, 3],
        token_url: "https://fhir.example/token".to_owned(),
        redirect_uri: "http://127.0.0.1:8080/connector/callback".to_owned(),
        expected_issuer: Some("https://fhir.example".to_owned()),
        return_url: None,
        expires_at,
        created_at: 1,
        api_key_id: Some("key_a".to_owned()),
    }
}

fn account_delete_cascades(db: &Db) {
    tenant(db, "ten_a");
    account(db, "ten_a", "acme");
    account(db, "ten_a", "keep");
    install(db, "ten_a", "acme", "ins_1");
    install(db, "ten_a", "acme", "ins_2");
    install(db, "ten_a", "keep", "ins_3");
    let mut c = db.get().unwrap();
    repo::oauth_states::insert(&mut c, &state("ins_1", "s1", 10_000)).unwrap();
    repo::oauth_states::insert(&mut c, &state("ins_3", "s3", 10_000)).unwrap();

    assert!(repo::accounts::delete(&mut c, "ten_a", "acme").unwrap());
    assert_eq!(repo::installs::find_by_id(&mut c, "ins_1").unwrap(), None);
    assert_eq!(repo::installs::find_by_id(&mut c, "ins_2").unwrap(), None);
    assert!(repo::installs::find_by_id(&mut c, "ins_3")
        .unwrap()
        .is_some());
    assert_eq!(repo::oauth_states::take(&mut c, "s1", 0).unwrap(), None);
    assert!(repo::oauth_states::take(&mut c, "s3", 0).unwrap().is_some());

    // Deleting an install drops its states too.
    repo::oauth_states::insert(&mut c, &state("ins_3", "s4", 10_000)).unwrap();
    assert!(repo::installs::delete(&mut c, "ten_a", "keep", "ins_3").unwrap());
    assert_eq!(repo::oauth_states::take(&mut c, "s4", 0).unwrap(), None);
}

fn installs_scope(db: &Db) {
    tenant(db, "ten_a");
    tenant(db, "ten_b");
    account(db, "ten_a", "acme");
    account(db, "ten_a", "beta");
    account(db, "ten_b", "acme");
    let mut c = db.get().unwrap();
    let ins = repo::installs::insert(&mut c, &new_install("ten_a", "acme", "ins_1")).unwrap();
    assert_eq!(ins.token_version, 0);
    assert_eq!(ins.access_token, None);
    assert_eq!(
        ins.install_status(),
        Some(InstallStatus::PendingAuthorization)
    );
    assert_eq!(
        ins.return_url.as_deref(),
        Some("https://console.example/done")
    );
    repo::installs::insert(&mut c, &new_install("ten_a", "acme", "ins_2")).unwrap();
    repo::installs::insert(&mut c, &new_install("ten_b", "acme", "ins_3")).unwrap();
    assert!(matches!(
        repo::installs::insert(&mut c, &new_install("ten_a", "beta", "ins_1")),
        Err(DbError::Conflict)
    ));

    assert_eq!(
        repo::installs::find(&mut c, "ten_a", "acme", "ins_1").unwrap(),
        Some(ins.clone())
    );
    // Same account id, other tenant; other account, same tenant: invisible.
    assert_eq!(
        repo::installs::find(&mut c, "ten_b", "acme", "ins_1").unwrap(),
        None
    );
    assert_eq!(
        repo::installs::find(&mut c, "ten_a", "beta", "ins_1").unwrap(),
        None
    );
    assert_eq!(
        repo::installs::find_by_id(&mut c, "ins_1").unwrap(),
        Some(ins)
    );
    let ids = |v: Vec<switchboard_db::Install>| v.into_iter().map(|i| i.id).collect::<Vec<_>>();
    assert_eq!(
        ids(repo::installs::list(&mut c, "ten_a", "acme").unwrap()),
        ["ins_1", "ins_2"]
    );
    assert_eq!(
        ids(repo::installs::list(&mut c, "ten_b", "acme").unwrap()),
        ["ins_3"]
    );
    assert!(repo::installs::list(&mut c, "ten_a", "beta")
        .unwrap()
        .is_empty());

    assert!(!repo::installs::set_return_url(&mut c, "ten_b", "acme", "ins_1", None, 6).unwrap());
    assert!(repo::installs::set_return_url(&mut c, "ten_a", "acme", "ins_1", None, 6).unwrap());
    assert!(
        repo::installs::set_status(&mut c, "ins_1", InstallStatus::Error, Some("boom"), 7).unwrap()
    );
    assert!(
        !repo::installs::set_status(&mut c, "ins_nope", InstallStatus::Error, None, 7).unwrap()
    );
    let got = repo::installs::find_by_id(&mut c, "ins_1")
        .unwrap()
        .unwrap();
    assert_eq!(got.return_url, None);
    assert_eq!(got.status, "error");
    assert_eq!(got.last_error.as_deref(), Some("boom"));
    assert_eq!(got.updated_at, 7);
    assert!(
        repo::installs::set_status(&mut c, "ins_1", InstallStatus::Authorized, None, 8).unwrap()
    );
    let got = repo::installs::find_by_id(&mut c, "ins_1")
        .unwrap()
        .unwrap();
    assert_eq!((got.status.as_str(), got.last_error), ("authorized", None));

    assert!(!repo::installs::delete(&mut c, "ten_b", "acme", "ins_1").unwrap());
    assert!(!repo::installs::delete(&mut c, "ten_a", "beta", "ins_1").unwrap());
    assert!(repo::installs::delete(&mut c, "ten_a", "acme", "ins_1").unwrap());
    assert_eq!(repo::installs::find_by_id(&mut c, "ins_1").unwrap(), None);
}

fn install_needs_its_account(db: &Db) {
    tenant(db, "ten_a");
    tenant(db, "ten_b");
    account(db, "ten_b", "acme");
    let mut c = db.get().unwrap();
    // Tenant A has no account "acme" (tenant B does): the composite foreign key refuses.
    let err = repo::installs::insert(&mut c, &new_install("ten_a", "acme", "ins_1")).unwrap_err();
    assert!(matches!(err, DbError::Query(_)), "{err:?}");
}

fn tokens(access: &[u8], refresh: Option<&[u8]>, now: i64) -> TokenWrite {
    TokenWrite {
        access_token: access.to_vec(),
        refresh_token: refresh.map(<[u8]>::to_vec),
        expires_at: Some(now + 3_600_000),
        scopes: Some("patient/*.read offline_access".to_owned()),
        context: Some(r#"{"patient":"p1"}"#.to_owned()),
        status: InstallStatus::Authorized,
        last_error: None,
        last_refresh_at: Some(now),
        last_refresh_error: None,
        now,
    }
}

fn store_tokens_is_fenced(db: &Db) {
    tenant(db, "ten_a");
    account(db, "ten_a", "acme");
    install(db, "ten_a", "acme", "ins_1");
    let mut c = db.get().unwrap();
    repo::installs::set_status(&mut c, "ins_1", InstallStatus::Error, Some("old"), 1).unwrap();

    assert!(
        repo::installs::store_tokens(&mut c, "ins_1", 0, &tokens(b"a1", Some(b"r1"), 100)).unwrap()
    );
    let got = repo::installs::find_by_id(&mut c, "ins_1")
        .unwrap()
        .unwrap();
    assert_eq!(got.token_version, 1);
    assert_eq!(got.access_token.as_deref(), Some(&b"a1"[..]));
    assert_eq!(got.refresh_token.as_deref(), Some(&b"r1"[..]));
    assert_eq!(got.token_expires_at, Some(3_600_100));
    assert_eq!(got.scopes.as_deref(), Some("patient/*.read offline_access"));
    assert_eq!(got.context.as_deref(), Some(r#"{"patient":"p1"}"#));
    assert_eq!(got.status, "authorized");
    assert_eq!(got.last_error, None);
    assert_eq!((got.last_refresh_at, got.updated_at), (Some(100), 100));

    // A writer that read version 0 lost the race.
    assert!(
        !repo::installs::store_tokens(&mut c, "ins_1", 0, &tokens(b"stale", None, 150)).unwrap()
    );
    assert!(
        !repo::installs::store_tokens(&mut c, "ins_nope", 0, &tokens(b"x", None, 150)).unwrap()
    );

    // No refresh token in the response: the stored one is kept; None fields become NULL.
    let mut w = tokens(b"a2", None, 200);
    w.expires_at = None;
    w.context = None;
    w.scopes = None;
    w.last_refresh_error = Some("was slow".to_owned());
    assert!(repo::installs::store_tokens(&mut c, "ins_1", 1, &w).unwrap());
    let got = repo::installs::find_by_id(&mut c, "ins_1")
        .unwrap()
        .unwrap();
    assert_eq!(got.token_version, 2);
    assert_eq!(got.access_token.as_deref(), Some(&b"a2"[..]));
    assert_eq!(got.refresh_token.as_deref(), Some(&b"r1"[..]));
    assert_eq!(
        (got.token_expires_at, &got.scopes, &got.context),
        (None, &None, &None)
    );
    assert_eq!(got.last_refresh_error.as_deref(), Some("was slow"));

    let shown = format!("{got:?} {w:?}");
    assert!(
        !shown.contains("a2") && !shown.contains("r1") && !shown.contains("97, 50"),
        "{shown}"
    );

    // Concurrent writers at the same version: exactly one wins.
    drop(c);
    let barrier = std::sync::Barrier::new(8);
    let winners = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|n| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut c = db.get().unwrap();
                    let token = format!("c{n}");
                    barrier.wait();
                    repo::installs::store_tokens(
                        &mut c,
                        "ins_1",
                        2,
                        &tokens(token.as_bytes(), None, 300),
                    )
                    .unwrap()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|w| *w)
            .count()
    });
    assert_eq!(winners, 1);
    let mut c = db.get().unwrap();
    assert_eq!(
        repo::installs::find_by_id(&mut c, "ins_1")
            .unwrap()
            .unwrap()
            .token_version,
        3
    );
}

fn refresh_errors(db: &Db) {
    tenant(db, "ten_a");
    account(db, "ten_a", "acme");
    install(db, "ten_a", "acme", "ins_1");
    let mut c = db.get().unwrap();
    assert!(
        repo::installs::store_tokens(&mut c, "ins_1", 0, &tokens(b"a1", Some(b"r1"), 100)).unwrap()
    );

    assert!(repo::installs::set_refresh_error(&mut c, "ins_1", "invalid_grant", 500).unwrap());
    let got = repo::installs::find_by_id(&mut c, "ins_1")
        .unwrap()
        .unwrap();
    assert_eq!(got.last_refresh_error.as_deref(), Some("invalid_grant"));
    assert_eq!((got.last_refresh_at, got.updated_at), (Some(500), 500));
    assert_eq!(got.status, "authorized");
    // Recording a failure never fences out a refresher: the token version is unchanged.
    assert_eq!(got.token_version, 1);
    assert_eq!(got.refresh_token.as_deref(), Some(&b"r1"[..]));
}

fn refresh_candidates(db: &Db) {
    tenant(db, "ten_a");
    account(db, "ten_a", "acme");
    for id in [
        "ins_soon",
        "ins_later",
        "ins_far",
        "ins_norefresh",
        "ins_reauth",
        "ins_pending",
    ] {
        install(db, "ten_a", "acme", id);
    }
    let mut c = db.get().unwrap();
    let now = 1_000_000;
    let mut write = |id: &str, expires: i64, refresh: Option<&[u8]>, status: InstallStatus| {
        let mut w = tokens(b"a", refresh, now);
        w.expires_at = Some(expires);
        w.status = status;
        assert!(repo::installs::store_tokens(&mut c, id, 0, &w).unwrap());
    };
    write(
        "ins_soon",
        now + 10_000,
        Some(b"r"),
        InstallStatus::Authorized,
    );
    write(
        "ins_later",
        now + 50_000,
        Some(b"r"),
        InstallStatus::Authorized,
    );
    write(
        "ins_far",
        now + 500_000,
        Some(b"r"),
        InstallStatus::Authorized,
    );
    write(
        "ins_norefresh",
        now + 10_000,
        None,
        InstallStatus::Authorized,
    );
    write(
        "ins_reauth",
        now + 10_000,
        Some(b"r"),
        InstallStatus::NeedsReauthorization,
    );
    let mut c = db.get().unwrap();
    let ids: Vec<String> = repo::installs::list_refresh_candidates(&mut c, now, 60_000)
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, ["ins_soon", "ins_later"]);
}

fn oauth_state_single_use(db: &Db) {
    tenant(db, "ten_a");
    account(db, "ten_a", "acme");
    install(db, "ten_a", "acme", "ins_1");
    install(db, "ten_a", "acme", "ins_2");
    let mut c = db.get().unwrap();
    let s1 = state("ins_1", "s1", 1_000);
    repo::oauth_states::insert(&mut c, &s1).unwrap();
    assert!(matches!(
        repo::oauth_states::insert(&mut c, &s1),
        Err(DbError::Conflict)
    ));
    assert_eq!(
        repo::oauth_states::take(&mut c, "s1", 999).unwrap(),
        Some(s1.clone())
    );
    assert_eq!(repo::oauth_states::take(&mut c, "s1", 999).unwrap(), None);
    assert_eq!(repo::oauth_states::take(&mut c, "nope", 0).unwrap(), None);

    // An expired state yields nothing and is gone afterwards.
    repo::oauth_states::insert(&mut c, &s1).unwrap();
    assert_eq!(repo::oauth_states::take(&mut c, "s1", 1_000).unwrap(), None);
    repo::oauth_states::insert(&mut c, &state("ins_1", "s1", 5_000)).unwrap();
    assert!(repo::oauth_states::take(&mut c, "s1", 1_000)
        .unwrap()
        .is_some());

    for (hash, install, exp) in [
        ("a", "ins_1", 100),
        ("b", "ins_1", 200),
        ("c", "ins_2", 300),
        ("d", "ins_2", 400),
    ] {
        repo::oauth_states::insert(&mut c, &state(install, hash, exp)).unwrap();
    }
    assert_eq!(repo::oauth_states::purge_expired(&mut c, 200).unwrap(), 2);
    assert_eq!(
        repo::oauth_states::delete_for_install(&mut c, "ins_2").unwrap(),
        2
    );
    assert_eq!(
        repo::oauth_states::purge_expired(&mut c, i64::MAX).unwrap(),
        0
    );

    let shown = format!("{s1:?}");
    assert!(
        shown.contains("redacted 3 bytes") && !shown.contains("[1, 2, 3]"),
        "{shown}"
    );
}

fn oauth_state_concurrent_take(db: &Db) {
    tenant(db, "ten_a");
    account(db, "ten_a", "acme");
    install(db, "ten_a", "acme", "ins_1");
    repo::oauth_states::insert(&mut db.get().unwrap(), &state("ins_1", "s1", 1_000)).unwrap();
    let barrier = std::sync::Barrier::new(8);
    let taken = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let mut c = db.get().unwrap();
                    barrier.wait();
                    repo::oauth_states::take(&mut c, "s1", 0).unwrap()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(Option::is_some)
            .count()
    });
    assert_eq!(taken, 1);
}

/// `installs.status` is read and written as `InstallStatus`, stored as its snake_case name; a
/// name the enum does not know fails the read instead of becoming some other status.
fn install_status_column(db: &Db) {
    use diesel::prelude::*;
    use switchboard_db::schema::installs::dsl as i;
    tenant(db, "ten_a");
    account(db, "ten_a", "acme");
    let mut c = db.get().unwrap();
    let all = [
        InstallStatus::PendingAuthorization,
        InstallStatus::Authorized,
        InstallStatus::NeedsReauthorization,
        InstallStatus::Error,
    ];
    for (n, status) in all.into_iter().enumerate() {
        let id = format!("ins_{n}");
        let new = switchboard_db::NewInstall {
            status,
            ..new_install("ten_a", "acme", &id)
        };
        let inserted = repo::installs::insert(&mut c, &new).unwrap();
        assert_eq!(inserted.status, status);
        let got = repo::installs::find_by_id(&mut c, &id).unwrap().unwrap();
        assert_eq!(got.status, status);
        let raw: String = i::installs
            .find(&id)
            .select(i::status)
            .first(&mut c)
            .unwrap();
        assert_eq!(raw, status.as_str());
    }
    diesel::update(i::installs.find("ins_0"))
        .set(i::status.eq("paused"))
        .execute(&mut c)
        .unwrap();
    assert!(repo::installs::find_by_id(&mut c, "ins_0").is_err());
    assert_eq!(
        repo::installs::find_by_id(&mut c, "ins_1")
            .unwrap()
            .unwrap()
            .status,
        InstallStatus::Authorized
    );
}

// Issue 15: console sessions.
both_backends!(console_sessions_follow_their_key_and_expire);

fn console_sessions_follow_their_key_and_expire(db: &Db) {
    use repo::console_sessions::{self as cs, ConsoleSession};
    tenant(db, "ten_a");
    let mut c = db.get().unwrap();
    repo::api_keys::insert(&mut c, &key("ten_a", "key_1", "h1", 1)).unwrap();
    let row = |hash: &str, seen: i64, expires: i64| ConsoleSession {
        token_hash: hash.to_owned(),
        tenant_id: "ten_a".to_owned(),
        api_key_id: "key_1".to_owned(),
        created_at: 100,
        last_seen_at: seen,
        expires_at: expires,
    };
    cs::insert(&mut c, &row("s_live", 100, 10_000)).unwrap();
    cs::insert(&mut c, &row("s_idle", 100, 10_000)).unwrap();
    cs::insert(&mut c, &row("s_over", 900, 1_000)).unwrap();
    assert!(matches!(
        cs::insert(&mut c, &row("s_live", 1, 1)),
        Err(DbError::Conflict)
    ));
    assert_eq!(
        cs::find_with_active_key(&mut c, "s_live").unwrap(),
        Some(row("s_live", 100, 10_000))
    );
    assert_eq!(cs::find_with_active_key(&mut c, "nope").unwrap(), None);
    cs::touch(&mut c, "s_live", 950).unwrap();
    // At 1000 with an idle limit reaching back to 500: s_idle (seen at 100) and s_over (past
    // its absolute expiry) go, s_live (seen at 950) stays.
    assert_eq!(cs::purge(&mut c, 1_000, 500).unwrap(), 2);
    assert_eq!(
        cs::find_with_active_key(&mut c, "s_live")
            .unwrap()
            .map(|s| s.last_seen_at),
        Some(950)
    );
    // A revoked key hides its sessions.
    assert!(repo::api_keys::revoke(&mut c, "ten_a", "key_1", 2_000).unwrap());
    assert_eq!(cs::find_with_active_key(&mut c, "s_live").unwrap(), None);
    assert!(cs::delete(&mut c, "s_live").unwrap());
    assert!(!cs::delete(&mut c, "s_live").unwrap());
}
