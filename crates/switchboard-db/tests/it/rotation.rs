//! Key rotation storage: the table-generic keyset scan and compare-and-swap over encrypted
//! columns (a write that happened meanwhile always wins; nothing but the column changes), and
//! the `key_rotation` progress rows.

use switchboard_core::InstallStatus;
use switchboard_db::repo::rotation::{self as rot, BlobKind, EncryptedColumn, StoredBlob};
use switchboard_db::{repo, Db, TokenWrite};
use switchboard_testkit::both_backends;

use crate::common;

const REFRESH: EncryptedColumn = EncryptedColumn {
    table: "installs",
    key_sql: "id",
    column: "refresh_token",
    kind: BlobKind::Bytes,
};

const SETUPS: EncryptedColumn = EncryptedColumn {
    table: "connector_setups",
    key_sql: "tenant_id || ':' || connector_id",
    column: "settings",
    kind: BlobKind::SettingsJson,
};

fn tokens(refresh: &[u8]) -> TokenWrite {
    TokenWrite {
        access_token: b"access".to_vec(),
        refresh_token: Some(refresh.to_vec()),
        expires_at: Some(9_000),
        scopes: None,
        context: None,
        status: InstallStatus::Authorized,
        last_error: None,
        last_refresh_at: Some(5_000),
        last_refresh_error: None,
        now: 5_000,
    }
}

fn bytes(v: &[u8]) -> StoredBlob {
    StoredBlob::Bytes(v.to_vec())
}

fn scan_walks_in_key_order_and_swaps_only_unchanged_values(db: &Db) {
    common::tenant(db, "ten_a");
    common::account(db, "ten_a", "acc");
    let mut conn = db.get().unwrap();
    for id in ["ins_c", "ins_a", "ins_b", "ins_d"] {
        common::install(db, "ten_a", "acc", id);
    }
    for id in ["ins_a", "ins_b", "ins_c"] {
        assert!(repo::installs::store_tokens(
            &mut conn,
            id,
            0,
            &tokens(format!("old-{id}").as_bytes())
        )
        .unwrap());
    }
    // ins_d has no refresh token (NULL): never returned.
    let first = rot::scan(&mut conn, &REFRESH, None, 2).unwrap();
    assert_eq!(
        first,
        vec![
            ("ins_a".to_owned(), bytes(b"old-ins_a")),
            ("ins_b".to_owned(), bytes(b"old-ins_b"))
        ]
    );
    let rest = rot::scan(&mut conn, &REFRESH, Some("ins_b"), 2).unwrap();
    assert_eq!(rest, vec![("ins_c".to_owned(), bytes(b"old-ins_c"))]);
    assert!(rot::scan(&mut conn, &REFRESH, Some("ins_c"), 2)
        .unwrap()
        .is_empty());

    // A refresh commits ins_b after the rotation read it: the swap loses, the refresh stays.
    assert!(repo::installs::store_tokens(&mut conn, "ins_b", 1, &tokens(b"refreshed")).unwrap());
    assert!(!rot::compare_and_swap(
        &mut conn,
        &REFRESH,
        "ins_b",
        &bytes(b"old-ins_b"),
        &bytes(b"rewrapped")
    )
    .unwrap());
    assert_eq!(
        rot::get(&mut conn, &REFRESH, "ins_b").unwrap(),
        Some(bytes(b"refreshed"))
    );
    // An unchanged value is swapped, and nothing else of the row moves (no token_version).
    let before = repo::installs::find_by_id(&mut conn, "ins_a")
        .unwrap()
        .unwrap();
    assert!(rot::compare_and_swap(
        &mut conn,
        &REFRESH,
        "ins_a",
        &bytes(b"old-ins_a"),
        &bytes(b"rewrapped")
    )
    .unwrap());
    let after = repo::installs::find_by_id(&mut conn, "ins_a")
        .unwrap()
        .unwrap();
    assert_eq!(after.refresh_token.as_deref(), Some(&b"rewrapped"[..]));
    assert_eq!(after.token_version, before.token_version);
    assert_eq!(after.access_token, before.access_token);
    assert_eq!(after.updated_at, before.updated_at);
    assert_eq!(rot::get(&mut conn, &REFRESH, "ins_d").unwrap(), None);

    // A composite key (setups): tenant:connector.
    repo::setups::upsert(
        &mut conn,
        "ten_a",
        "epic",
        r#"{"client_secret":{"enc":"AA=="}}"#,
        1,
    )
    .unwrap();
    let rows = rot::scan(&mut conn, &SETUPS, None, 10).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "ten_a:epic");
    let new = StoredBlob::Text(r#"{"client_secret":{"enc":"AQ=="}}"#.to_owned());
    assert!(rot::compare_and_swap(&mut conn, &SETUPS, "ten_a:epic", &rows[0].1, &new).unwrap());
    assert!(!rot::compare_and_swap(&mut conn, &SETUPS, "ten_a:epic", &rows[0].1, &new).unwrap());
    assert_eq!(
        rot::get(&mut conn, &SETUPS, "ten_a:epic").unwrap(),
        Some(new)
    );
}

fn progress_rows_start_advance_and_restart(db: &Db) {
    let mut conn = db.get().unwrap();
    assert!(rot::progress(&mut conn).unwrap().is_empty());
    let cols = vec!["a.x".to_owned(), "b.y".to_owned()];
    rot::start(&mut conn, &cols, "k2", 10).unwrap();
    rot::advance(&mut conn, "a.x", Some("row-7"), false, 3, 11).unwrap();
    rot::advance(&mut conn, "a.x", Some("row-9"), true, 2, 12).unwrap();
    let p = rot::progress(&mut conn).unwrap();
    assert_eq!(p.len(), 2);
    assert_eq!(
        (p[0].cursor.as_deref(), p[0].done, p[0].rewritten),
        (Some("row-9"), 1, 5)
    );
    assert_eq!(
        (p[1].cursor.as_deref(), p[1].done, p[1].rewritten),
        (None, 0, 0)
    );
    assert!(p.iter().all(|r| r.target_kid == "k2" && r.started_at == 10));
    rot::mark_verified(&mut conn, "a.x").unwrap();
    assert_eq!(rot::progress(&mut conn).unwrap()[0].done, 2);
    // A new rotation replaces the previous progress.
    rot::start(&mut conn, &cols[..1], "k3", 20).unwrap();
    let p = rot::progress(&mut conn).unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].target_kid.as_str(), p[0].done, p[0].cursor.as_deref()),
        ("k3", 0, None)
    );
}

both_backends!(
    scan_walks_in_key_order_and_swaps_only_unchanged_values,
    progress_rows_start_advance_and_restart,
);
