//! The audit trail repository: batch insert, filtered keyset pages within a tenant, the export
//! walk and the retention purge.

use switchboard_db::repo::audit::{AuditFilter, Outcome};
use switchboard_db::repo::page::After;
use switchboard_db::{repo, AuditEvent, AuditKey, Db};
use switchboard_testkit::both_backends;

both_backends!(
    audit_batches_page_by_at_then_id_within_the_tenant,
    audit_filters_narrow_the_page,
    audit_purge_deletes_only_older_rows,
    audit_key_first_stored_wins,
);

fn event(tenant: &str, id: &str, at: i64, status: i64) -> AuditEvent {
    AuditEvent {
        id: id.to_owned(),
        tenant_id: tenant.to_owned(),
        at,
        kind: "method_call".to_owned(),
        action: "get_patient".to_owned(),
        api_key_id: Some("key_1".to_owned()),
        account_id: Some("acc".to_owned()),
        install_id: Some("ins_1".to_owned()),
        connector_id: Some("canvas".to_owned()),
        status,
        code: (status >= 400).then(|| "upstream_error".to_owned()),
        upstream_status: Some(status),
        duration_ms: Some(3),
        request_id: Some(format!("req_{id}")),
        patient_hash: Some("ab".repeat(32)),
    }
}

fn ids(rows: &[AuditEvent]) -> Vec<&str> {
    rows.iter().map(|r| r.id.as_str()).collect()
}

fn audit_batches_page_by_at_then_id_within_the_tenant(db: &Db) {
    let mut c = db.get().unwrap();
    // 1,200 rows: more than one INSERT chunk, in one call.
    let many: Vec<_> = (0..1_200)
        .map(|i| event("ten_a", &format!("bulk_{i:04}"), 100 + i, 200))
        .collect();
    assert_eq!(repo::audit::insert_batch(&mut c, &many).unwrap(), 1_200);
    let rows = vec![
        event("ten_a", "z", 10, 200),
        event("ten_a", "m", 20, 200),
        event("ten_a", "b", 20, 502),
        event("ten_b", "a", 15, 200),
    ];
    assert_eq!(repo::audit::insert_batch(&mut c, &rows).unwrap(), 4);
    assert_eq!(repo::audit::insert_batch(&mut c, &[]).unwrap(), 0);

    let all = AuditFilter::default();
    let p1 = repo::audit::list_page(&mut c, "ten_a", &all, None, 2).unwrap();
    assert_eq!(ids(&p1.rows), ["z", "b"]);
    let p2 = repo::audit::list_page(&mut c, "ten_a", &all, p1.next.as_ref(), 2).unwrap();
    assert_eq!(ids(&p2.rows), ["m", "bulk_0000"]);
    assert_eq!(p1.rows[1], rows[2], "every column reads back");

    let b = repo::audit::list_page(&mut c, "ten_b", &all, None, 10).unwrap();
    assert_eq!(ids(&b.rows), ["a"]);
    assert!(b.next.is_none());

    let export = repo::audit::export_page(&mut c, 15, None, 3).unwrap();
    assert_eq!(ids(&export), ["a", "b", "m"]);
    let last = export.last().unwrap();
    let after = After {
        created_at: last.at,
        id: last.id.clone(),
    };
    let more = repo::audit::export_page(&mut c, 15, Some(&after), 1).unwrap();
    assert_eq!(ids(&more), ["bulk_0000"]);
}

fn audit_filters_narrow_the_page(db: &Db) {
    let mut c = db.get().unwrap();
    let mut other = event("ten_a", "o", 30, 404);
    other.install_id = Some("ins_2".into());
    other.account_id = Some("acc2".into());
    other.action = "search_patients".into();
    other.patient_hash = None;
    let rows = vec![
        event("ten_a", "x", 10, 200),
        event("ten_a", "y", 20, 502),
        other,
    ];
    repo::audit::insert_batch(&mut c, &rows).unwrap();
    let page = |c: &mut _, f: AuditFilter| {
        let p = repo::audit::list_page(c, "ten_a", &f, None, 10).unwrap();
        p.rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>()
    };
    let f = |f: fn(&mut AuditFilter)| {
        let mut v = AuditFilter::default();
        f(&mut v);
        v
    };
    assert_eq!(
        page(&mut c, f(|v| v.install_id = Some("ins_2".into()))),
        ["o"]
    );
    assert_eq!(
        page(&mut c, f(|v| v.account_id = Some("acc".into()))),
        ["x", "y"]
    );
    assert_eq!(
        page(&mut c, f(|v| v.action = Some("get_patient".into()))),
        ["x", "y"]
    );
    assert_eq!(page(&mut c, f(|v| v.outcome = Some(Outcome::Ok))), ["x"]);
    assert_eq!(
        page(&mut c, f(|v| v.outcome = Some(Outcome::Error))),
        ["y", "o"]
    );
    assert_eq!(
        page(&mut c, f(|v| v.outcome = Some(Outcome::Status(404)))),
        ["o"]
    );
    assert_eq!(page(&mut c, f(|v| v.from = Some(20))), ["y", "o"]);
    assert_eq!(page(&mut c, f(|v| v.to = Some(20))), ["x"]);
    assert_eq!(
        page(&mut c, f(|v| v.patient_hash = Some("ab".repeat(32)))),
        ["x", "y"]
    );
    assert!(page(&mut c, f(|v| v.patient_hash = Some("cd".into()))).is_empty());
}

fn audit_purge_deletes_only_older_rows(db: &Db) {
    let mut c = db.get().unwrap();
    let rows = vec![
        event("ten_a", "old", 10, 200),
        event("ten_b", "old_b", 19, 200),
        event("ten_a", "new", 20, 200),
    ];
    repo::audit::insert_batch(&mut c, &rows).unwrap();
    assert_eq!(repo::audit::purge_before(&mut c, 20).unwrap(), 2);
    let left = repo::audit::export_page(&mut c, 0, None, 10).unwrap();
    assert_eq!(ids(&left), ["new"]);
    assert_eq!(repo::audit::purge_before(&mut c, 20).unwrap(), 0);
}

fn audit_key_first_stored_wins(db: &Db) {
    let mut c = db.get().unwrap();
    assert!(repo::audit::find_key(&mut c, "ten_a").unwrap().is_none());
    let key = |b: u8| AuditKey {
        tenant_id: "ten_a".into(),
        sealed_key: vec![b; 8],
        created_at: 1,
    };
    assert_eq!(repo::audit::key_or_insert(&mut c, &key(1)).unwrap(), key(1));
    assert_eq!(repo::audit::key_or_insert(&mut c, &key(2)).unwrap(), key(1));
    assert!(
        !format!("{:?}", key(7)).contains("7, 7"),
        "Debug hides the sealed key"
    );
}
