//! The webhook outbox on both backends: fan-out by filter at write time, nothing left by a
//! rolled-back transaction, queue head in `seq` order, the endpoint lease as the fence of an
//! attempt, tenant-scoped history and replay.

use diesel::Connection;
use switchboard_db::repo::webhooks::{self as wh, Attempt};
use switchboard_db::{Db, DbError, NewWebhookEvent, WebhookEndpoint};

use crate::common::tenant;
use switchboard_testkit::both_backends;

both_backends!(fan_out_order_and_fence, rollback_and_tenant_scope);

fn endpoint(db: &Db, tenant_id: &str, id: &str, events: &str) {
    let mut c = db.get().unwrap();
    wh::insert_endpoint(
        &mut c,
        &WebhookEndpoint {
            id: id.into(),
            tenant_id: tenant_id.into(),
            url: format!("https://hooks.example/{id}"),
            events: events.into(),
            secret: vec![1, 2, 3],
            created_at: 10,
            disabled_at: None,
            lease_owner: None,
            lease_until: None,
        },
    )
    .unwrap();
}

fn event(tenant_id: &str, id: &str, kind: &str, at: i64) -> NewWebhookEvent {
    NewWebhookEvent {
        id: id.into(),
        tenant_id: tenant_id.into(),
        event_type: kind.into(),
        install_id: Some("ins_1".into()),
        payload: format!(r#"{{"type":"{kind}"}}"#),
        created_at: at,
    }
}

fn emit(db: &Db, e: &NewWebhookEvent) -> usize {
    let mut c = db.get().unwrap();
    c.transaction::<_, DbError, _>(|c| wh::emit(c, e)).unwrap()
}

fn fan_out_order_and_fence(db: &Db) {
    tenant(db, "ten_a");
    endpoint(db, "ten_a", "whk_all", "");
    endpoint(db, "ten_a", "whk_del", "install.deleted");
    assert_eq!(
        emit(db, &event("ten_a", "msg_1", "install.authorized", 100)),
        1
    );
    assert_eq!(
        emit(db, &event("ten_a", "msg_2", "install.deleted", 200)),
        2
    );
    let mut c = db.get().unwrap();
    assert_eq!(
        wh::latest_install_event(&mut c, "ins_1")
            .unwrap()
            .as_deref(),
        Some("install.deleted")
    );
    assert_eq!(wh::pending_count(&mut c).unwrap(), 3);
    // Nothing is due before the events' time.
    assert!(wh::due_endpoints(&mut c, 99, 10).unwrap().is_empty());
    let mut due = wh::due_endpoints(&mut c, 1_000, 10).unwrap();
    due.sort();
    assert_eq!(due, ["whk_all", "whk_del"]);

    // One lease holder at a time; the head is the oldest pending event.
    assert!(wh::claim_endpoint(&mut c, "whk_all", "a", 1_000, 500).unwrap());
    assert!(!wh::claim_endpoint(&mut c, "whk_all", "b", 1_200, 500).unwrap());
    assert_eq!(wh::due_endpoints(&mut c, 1_000, 10).unwrap(), ["whk_del"]);
    let (head, ev) = wh::head(&mut c, "whk_all").unwrap().unwrap();
    assert_eq!(ev.id, "msg_1");
    let delivered = Attempt {
        at: 1_100,
        state: wh::DELIVERED,
        next_attempt_at: 1_100,
        status: Some(204),
        error: None,
    };
    assert!(wh::record_attempt(&mut c, "whk_all", head.event_seq, "a", 1_600, &delivered).unwrap());
    assert_eq!(wh::head(&mut c, "whk_all").unwrap().unwrap().1.id, "msg_2");

    // The lease lapses and b takes it: a's late result is fenced out, nothing written.
    assert!(wh::claim_endpoint(&mut c, "whk_all", "b", 1_700, 500).unwrap());
    let seq2 = wh::head(&mut c, "whk_all").unwrap().unwrap().0.event_seq;
    assert!(!wh::record_attempt(&mut c, "whk_all", seq2, "a", 2_000, &delivered).unwrap());
    let (d, _) = wh::head(&mut c, "whk_all").unwrap().unwrap();
    assert_eq!((d.attempts, d.state.as_str()), (0, "pending"));
    let retry = Attempt {
        at: 1_800,
        state: wh::PENDING,
        next_attempt_at: 9_000,
        status: Some(500),
        error: Some("receiver answered 500".into()),
    };
    assert!(wh::record_attempt(&mut c, "whk_all", seq2, "b", 2_300, &retry).unwrap());
    assert!(wh::release_endpoint(&mut c, "whk_all", "b").unwrap());
    let page = wh::list_deliveries(&mut c, "ten_a", "whk_all", None, 10).unwrap();
    let rows: Vec<_> = page
        .rows
        .iter()
        .map(|(d, e)| (e.id.as_str(), d.state.as_str(), d.attempts, d.last_status))
        .collect();
    assert_eq!(
        rows,
        [
            ("msg_1", "delivered", 1, Some(204)),
            ("msg_2", "pending", 1, Some(500))
        ]
    );
    assert!(page.next.is_none());
    let first = wh::list_deliveries(&mut c, "ten_a", "whk_all", None, 1).unwrap();
    let rest = wh::list_deliveries(&mut c, "ten_a", "whk_all", first.next.as_ref(), 1).unwrap();
    assert_eq!(rest.rows[0].1.id, "msg_2");
}

fn rollback_and_tenant_scope(db: &Db) {
    tenant(db, "ten_a");
    tenant(db, "ten_b");
    endpoint(db, "ten_a", "whk_a", "");
    let mut c = db.get().unwrap();
    let rolled_back = c.transaction::<(), DbError, _>(|c| {
        assert_eq!(
            wh::emit(c, &event("ten_a", "msg_x", "setup.changed", 5)).unwrap(),
            1
        );
        Err(diesel::result::Error::RollbackTransaction.into())
    });
    assert!(rolled_back.is_err());
    assert_eq!(wh::pending_count(&mut c).unwrap(), 0);
    assert!(wh::latest_install_event(&mut c, "ins_1").unwrap().is_none());

    emit(db, &event("ten_a", "msg_y", "setup.changed", 5));
    // Another tenant's event reaches no endpoint of ten_a.
    assert_eq!(emit(db, &event("ten_b", "msg_z", "setup.changed", 5)), 0);
    assert!(wh::find_endpoint(&mut c, "ten_b", "whk_a")
        .unwrap()
        .is_none());
    assert!(wh::list_deliveries(&mut c, "ten_b", "whk_a", None, 10)
        .unwrap()
        .rows
        .is_empty());
    assert!(wh::replay(&mut c, "ten_b", "whk_a", "msg_y", 50)
        .unwrap()
        .is_none());
    assert!(wh::replay(&mut c, "ten_a", "whk_a", "msg_z", 50)
        .unwrap()
        .is_none());
    let (d, e) = wh::replay(&mut c, "ten_a", "whk_a", "msg_y", 50)
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            e.id.as_str(),
            d.state.as_str(),
            d.next_attempt_at,
            d.retry_from
        ),
        ("msg_y", "pending", 50, 50)
    );
    assert!(!wh::delete_endpoint(&mut c, "ten_b", "whk_a").unwrap());
    assert!(wh::delete_endpoint(&mut c, "ten_a", "whk_a").unwrap());
    assert_eq!(wh::pending_count(&mut c).unwrap(), 0);
}
