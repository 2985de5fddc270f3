//! Keyset pages of the tenant lists (`list_page`): `(created_at, id)` order, ties broken by id,
//! no page past the last row, a start key that no longer exists, filters and tenant scope.

use switchboard_core::InstallStatus;
use switchboard_db::repo::installs::InstallFilter;
use switchboard_db::repo::page::{After, Page};
use switchboard_db::{repo, Account, Db, NewApiKey};

use crate::common::{account, new_install, tenant};
use switchboard_testkit::both_backends;

both_backends!(
    account_pages_follow_created_at_then_id,
    install_pages_filter_within_the_tenant,
    api_key_pages_skip_revoked_keys,
);

fn ids<T>(page: &Page<T>, id: impl Fn(&T) -> String) -> Vec<String> {
    page.rows.iter().map(id).collect()
}

fn account_pages_follow_created_at_then_id(db: &Db) {
    tenant(db, "ten_a");
    tenant(db, "ten_b");
    let mut c = db.get().unwrap();
    // Ids sort against time; "m" and "b" share a millisecond.
    for (id, at) in [("z", 10), ("m", 20), ("b", 20), ("a", 30)] {
        repo::accounts::insert(
            &mut c,
            &Account {
                tenant_id: "ten_a".into(),
                id: id.into(),
                name: id.into(),
                created_at: at,
            },
        )
        .unwrap();
    }
    drop(c);
    account(db, "ten_b", "b");
    let mut c = db.get().unwrap();
    let id = |a: &Account| a.id.clone();

    let p1 = repo::accounts::list_page(&mut c, "ten_a", None, 3).unwrap();
    assert_eq!(ids(&p1, id), ["z", "b", "m"]);
    let next = p1.next.clone().expect("more follow");
    assert_eq!(
        next,
        After {
            created_at: 20,
            id: "m".into()
        }
    );
    let p2 = repo::accounts::list_page(&mut c, "ten_a", Some(&next), 3).unwrap();
    assert_eq!((ids(&p2, id), p2.next), (vec!["a".to_owned()], None));
    // Exactly `limit` rows left: no further page is announced.
    let p = repo::accounts::list_page(&mut c, "ten_a", None, 4).unwrap();
    assert_eq!((p.rows.len(), p.next), (4, None));
    // Inside a tie.
    let after_b = After {
        created_at: 20,
        id: "b".into(),
    };
    let p = repo::accounts::list_page(&mut c, "ten_a", Some(&after_b), 10).unwrap();
    assert_eq!(ids(&p, id), ["m", "a"]);
    // The start row may be gone (deleted since): the page starts after its key all the same.
    assert!(repo::accounts::delete(&mut c, "ten_a", "m").unwrap());
    let p = repo::accounts::list_page(&mut c, "ten_a", Some(&next), 10).unwrap();
    assert_eq!(ids(&p, id), ["a"]);
    // Another tenant's rows never show, whatever the key.
    let p = repo::accounts::list_page(&mut c, "ten_b", None, 10).unwrap();
    assert_eq!(ids(&p, id), ["b"]);
    let p = repo::accounts::list_page(
        &mut c,
        "ten_b",
        Some(&After {
            created_at: 0,
            id: String::new(),
        }),
        10,
    )
    .unwrap();
    assert_eq!(ids(&p, id), ["b"]);
}

fn install_pages_filter_within_the_tenant(db: &Db) {
    tenant(db, "ten_a");
    tenant(db, "ten_b");
    for (t, a) in [("ten_a", "acme"), ("ten_a", "beta"), ("ten_b", "acme")] {
        account(db, t, a);
    }
    let mut c = db.get().unwrap();
    let rows = [
        ("ten_a", "acme", "i1", "epic", InstallStatus::Authorized, 1),
        (
            "ten_a",
            "beta",
            "i2",
            "canvas",
            InstallStatus::NeedsReauthorization,
            2,
        ),
        (
            "ten_b",
            "acme",
            "i3",
            "epic",
            InstallStatus::NeedsReauthorization,
            3,
        ),
        (
            "ten_a",
            "acme",
            "i4",
            "canvas",
            InstallStatus::NeedsReauthorization,
            4,
        ),
        (
            "ten_a",
            "beta",
            "i5",
            "epic",
            InstallStatus::PendingAuthorization,
            5,
        ),
    ];
    for (t, a, i, conn_id, status, at) in rows {
        let mut n = new_install(t, a, i);
        n.connector_id = conn_id.into();
        n.status = status;
        n.created_at = at;
        repo::installs::insert(&mut c, &n).unwrap();
    }
    let id = |i: &switchboard_db::Install| i.id.clone();
    let page = |c: &mut switchboard_db::PooledConn,
                t: &str,
                f: &InstallFilter,
                after: Option<&After>,
                limit| { repo::installs::list_page(c, t, f, after, limit).unwrap() };
    let all = InstallFilter::default();
    assert_eq!(
        ids(&page(&mut c, "ten_a", &all, None, 10), id),
        ["i1", "i2", "i4", "i5"]
    );
    assert_eq!(ids(&page(&mut c, "ten_b", &all, None, 10), id), ["i3"]);
    let needs = InstallFilter {
        status: Some(InstallStatus::NeedsReauthorization),
        ..Default::default()
    };
    let p = page(&mut c, "ten_a", &needs, None, 1);
    assert_eq!(ids(&p, id), ["i2"]);
    let p = page(&mut c, "ten_a", &needs, p.next.as_ref(), 1);
    assert_eq!((ids(&p, id), p.next), (vec!["i4".to_owned()], None));
    let f = InstallFilter {
        account_id: Some("beta".into()),
        connector_id: Some("epic".into()),
        status: None,
    };
    assert_eq!(ids(&page(&mut c, "ten_a", &f, None, 10), id), ["i5"]);
    let f = InstallFilter {
        account_id: Some("acme".into()),
        ..Default::default()
    };
    assert_eq!(ids(&page(&mut c, "ten_a", &f, None, 10), id), ["i1", "i4"]);
    assert_eq!(ids(&page(&mut c, "ten_b", &f, None, 10), id), ["i3"]);
}

fn api_key_pages_skip_revoked_keys(db: &Db) {
    tenant(db, "ten_a");
    let mut c = db.get().unwrap();
    for (n, id) in ["k1", "k2", "k3"].iter().enumerate() {
        repo::api_keys::insert(
            &mut c,
            &NewApiKey {
                id: (*id).into(),
                tenant_id: "ten_a".into(),
                name: (*id).into(),
                prefix: "sb_x".into(),
                key_hash: format!("hash-{id}"),
                created_at: n as i64,
            },
        )
        .unwrap();
    }
    assert!(repo::api_keys::revoke(&mut c, "ten_a", "k2", 9).unwrap());
    let id = |k: &switchboard_db::ApiKey| k.id.clone();
    let p = repo::api_keys::list_page(&mut c, "ten_a", None, 1).unwrap();
    assert_eq!(ids(&p, id), ["k1"]);
    let p = repo::api_keys::list_page(&mut c, "ten_a", p.next.as_ref(), 1).unwrap();
    assert_eq!((ids(&p, id), p.next), (vec!["k3".to_owned()], None));
}
