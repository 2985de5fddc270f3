//! The webhook outbox on both backends: fan-out by filter at write time, nothing left by a
//! rolled-back transaction, queue head in `seq` order, the endpoint lease as the fence of an
//! attempt, tenant-scoped history and replay, `seq` order = commit order under concurrent
//! writers, and an endpoint failing for the configured period disabled with its queue kept.

use diesel::Connection;
use switchboard_db::repo::webhooks::{self as wh, Attempt, Recorded};
use switchboard_db::{AnyConnection, Db, DbError, NewWebhookEvent, WebhookEndpoint};

use crate::common::tenant;
use switchboard_testkit::both_backends;

both_backends!(
    fan_out_order_and_fence,
    rollback_and_tenant_scope,
    seq_order_is_commit_order,
    failing_endpoint_is_disabled_and_keeps_its_queue,
    a_disable_stops_the_next_attempt
);

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
            failing_since: None,
            disabled_reason: None,
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

/// `PATCH {"enabled": …}` of tenant `ten_a`'s endpoint `whk_a` at `at`; the endpoint after it.
fn set_enabled(c: &mut AnyConnection, enabled: bool, at: i64) -> WebhookEndpoint {
    let change = wh::EndpointChange {
        enabled: Some(enabled),
        ..Default::default()
    };
    wh::update_endpoint(c, "ten_a", "whk_a", &change, at)
        .unwrap()
        .unwrap()
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
    assert!(
        wh::head(&mut c, "whk_all", "b", 1_000).unwrap().is_none(),
        "not b's lease"
    );
    let (head, ev) = wh::head(&mut c, "whk_all", "a", 1_000).unwrap().unwrap();
    assert_eq!(ev.id, "msg_1");
    let delivered = Attempt {
        at: 1_100,
        state: wh::DELIVERED,
        next_attempt_at: 1_100,
        status: Some(204),
        error: None,
    };
    assert_eq!(
        wh::record_attempt(
            &mut c,
            "whk_all",
            head.event_seq,
            "a",
            1_600,
            &delivered,
            None
        )
        .unwrap(),
        Recorded::Written
    );
    assert_eq!(
        wh::head(&mut c, "whk_all", "a", 1_100)
            .unwrap()
            .unwrap()
            .1
            .id,
        "msg_2"
    );

    // The lease lapses and b takes it: a's late result is fenced out, nothing written.
    assert!(wh::claim_endpoint(&mut c, "whk_all", "b", 1_700, 500).unwrap());
    assert!(wh::head(&mut c, "whk_all", "a", 1_700).unwrap().is_none());
    let seq2 = wh::head(&mut c, "whk_all", "b", 1_700)
        .unwrap()
        .unwrap()
        .0
        .event_seq;
    assert_eq!(
        wh::record_attempt(&mut c, "whk_all", seq2, "a", 2_000, &delivered, None).unwrap(),
        Recorded::LeaseLost
    );
    let (d, _) = wh::head(&mut c, "whk_all", "b", 1_700).unwrap().unwrap();
    assert_eq!((d.attempts, d.state.as_str()), (0, "pending"));
    let retry = Attempt {
        at: 1_800,
        state: wh::PENDING,
        next_attempt_at: 9_000,
        status: Some(500),
        error: Some("receiver answered 500".into()),
    };
    assert_eq!(
        wh::record_attempt(&mut c, "whk_all", seq2, "b", 2_300, &retry, None).unwrap(),
        Recorded::Written
    );
    // The head waits for its retry; nothing behind it overtakes it.
    assert!(wh::head(&mut c, "whk_all", "b", 8_999).unwrap().is_none());
    assert_eq!(
        wh::head(&mut c, "whk_all", "b", 9_000)
            .unwrap()
            .unwrap()
            .0
            .event_seq,
        seq2
    );
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

/// Writers of one tenant emit concurrently (one transaction each) while a reader keeps
/// listing the tenant's event `seq`s: every listing must hold every event with a smaller `seq`
/// than its largest one (a dispatcher that sees an event never misses an earlier one later).
/// On PostgreSQL this is the tenant's advisory lock in `emit`; SQLite has one writer.
fn seq_order_is_commit_order(db: &Db) {
    use diesel::prelude::*;
    use switchboard_db::schema::webhook_events as we;
    const WRITERS: usize = 4;
    const EACH: usize = 100;
    tenant(db, "ten_a");
    endpoint(db, "ten_a", "whk_all", "");
    let done = std::sync::atomic::AtomicUsize::new(0);
    let seen: Vec<(usize, i64)> = std::thread::scope(|scope| {
        for w in 0..WRITERS {
            let done = &done;
            scope.spawn(move || {
                let mut c = db.get().unwrap();
                for i in 0..EACH {
                    let e = event("ten_a", &format!("msg_{w}_{i}"), "setup.changed", 5);
                    c.write_transaction::<_, DbError, _>(|c| wh::emit(c, &e))
                        .unwrap();
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        let reader = scope.spawn(|| {
            let mut c = db.get().unwrap();
            let mut seen = Vec::new();
            while done.load(std::sync::atomic::Ordering::SeqCst) < WRITERS {
                let seqs: Vec<i64> = we::table
                    .filter(we::tenant_id.eq("ten_a"))
                    .select(we::seq)
                    .load(&mut c)
                    .unwrap();
                if let Some(max) = seqs.iter().max() {
                    seen.push((seqs.len(), *max));
                }
            }
            seen
        });
        reader.join().unwrap()
    });
    let mut c = db.get().unwrap();
    let all: Vec<i64> = we::table.select(we::seq).load(&mut c).unwrap();
    assert_eq!(all.len(), WRITERS * EACH);
    assert!(!seen.is_empty());
    for (len, max) in seen {
        let before = all.iter().filter(|s| **s <= max).count();
        assert_eq!(
            len,
            before,
            "a listing with seq {max} missed {} earlier events",
            before - len
        );
    }
    assert_eq!(wh::pending_count(&mut c).unwrap(), (WRITERS * EACH) as i64);
}

/// `failing_since` is set by the first failure after a delivery and cleared by a delivery; a
/// failure once the endpoint has failed for the period disables it (reason `failing`), its
/// pending deliveries kept and out of the dispatcher's way; enabling clears both and makes
/// them due. A manual disable says `manual`.
fn failing_endpoint_is_disabled_and_keeps_its_queue(db: &Db) {
    tenant(db, "ten_a");
    endpoint(db, "ten_a", "whk_a", "");
    for (id, at) in [("msg_1", 100), ("msg_2", 200), ("msg_3", 300)] {
        emit(db, &event("ten_a", id, "setup.changed", at));
    }
    let mut c = db.get().unwrap();
    let fail = |at: i64| Attempt {
        at,
        state: wh::PENDING,
        next_attempt_at: at + 10,
        status: Some(500),
        error: Some("receiver answered 500".into()),
    };
    fn state(c: &mut AnyConnection) -> (Option<i64>, Option<i64>, Option<String>) {
        let ep = wh::find_endpoint(c, "ten_a", "whk_a").unwrap().unwrap();
        (ep.failing_since, ep.disabled_at, ep.disabled_reason)
    }
    fn head(c: &mut AnyConnection) -> i64 {
        // Due or not: the attempts below choose their own times.
        wh::head(c, "whk_a", "a", i64::MAX)
            .unwrap()
            .unwrap()
            .0
            .event_seq
    }
    const PERIOD: i64 = 5_000;
    /// The attempt on the head delivery `seq` under lease `a`; with `period`, an endpoint
    /// failing since `attempt.at - period` or earlier is disabled.
    fn record(
        c: &mut AnyConnection,
        seq: i64,
        attempt: &Attempt,
        period: Option<i64>,
    ) -> Result<Recorded, switchboard_db::DbError> {
        let before = period.map(|p| attempt.at - p);
        wh::record_attempt(c, "whk_a", seq, "a", 100_000, attempt, before)
    }
    assert!(wh::claim_endpoint(&mut c, "whk_a", "a", 1_000, 100_000).unwrap());
    let seq = head(&mut c);
    let r = record(&mut c, seq, &fail(1_000), Some(PERIOD));
    assert_eq!(r.unwrap(), Recorded::Written);
    assert_eq!(state(&mut c), (Some(1_000), None, None));
    let r = record(&mut c, seq, &fail(3_000), Some(PERIOD));
    assert_eq!(r.unwrap(), Recorded::Written);
    assert_eq!(
        state(&mut c),
        (Some(1_000), None, None),
        "the first failure counts"
    );
    // A delivery ends the failing period.
    let ok = Attempt {
        at: 5_500,
        state: wh::DELIVERED,
        next_attempt_at: 5_500,
        status: Some(204),
        error: None,
    };
    let r = record(&mut c, seq, &ok, Some(PERIOD));
    assert_eq!(r.unwrap(), Recorded::Written);
    assert_eq!(state(&mut c), (None, None, None));
    let seq = head(&mut c);
    let r = record(&mut c, seq, &fail(6_000), Some(PERIOD));
    assert_eq!(r.unwrap(), Recorded::Written);
    // Without a period (0 = never) nothing is disabled, however long it fails.
    let r = record(&mut c, seq, &fail(60_000), None);
    assert_eq!(r.unwrap(), Recorded::Written);
    assert_eq!(state(&mut c), (Some(6_000), None, None));
    // Failing since 6_000, the period is over at 11_000.
    let r = record(&mut c, seq, &fail(10_999), Some(PERIOD));
    assert_eq!(r.unwrap(), Recorded::Written);
    let r = record(&mut c, seq, &fail(11_000), Some(PERIOD));
    assert_eq!(r.unwrap(), Recorded::Disabled);
    assert_eq!(
        state(&mut c),
        (Some(6_000), Some(11_000), Some(wh::DISABLED_FAILING.into()))
    );
    assert!(wh::release_endpoint(&mut c, "whk_a", "a").unwrap());
    // Kept, not due while disabled, and no new event is queued for it.
    assert_eq!(wh::pending_count(&mut c).unwrap(), 2);
    assert!(wh::due_endpoints(&mut c, 1_000_000, 10).unwrap().is_empty());
    assert_eq!(
        emit(db, &event("ten_a", "msg_4", "setup.changed", 12_000)),
        0
    );

    let ep = set_enabled(&mut c, true, 20_000);
    assert_eq!(
        (ep.failing_since, ep.disabled_at, ep.disabled_reason),
        (None, None, None)
    );
    assert_eq!(wh::due_endpoints(&mut c, 20_000, 10).unwrap(), ["whk_a"]);
    assert!(wh::claim_endpoint(&mut c, "whk_a", "a", 20_000, 100_000).unwrap());
    let (d, e) = wh::head(&mut c, "whk_a", "a", 20_000).unwrap().unwrap();
    assert_eq!(
        (e.id.as_str(), d.next_attempt_at, d.retry_from),
        ("msg_2", 20_000, 20_000)
    );

    let ep = set_enabled(&mut c, false, 21_000);
    assert_eq!(
        (ep.disabled_at, ep.disabled_reason.as_deref()),
        (Some(21_000), Some(wh::DISABLED_MANUAL))
    );
}

/// A disable committed while a dispatcher holds the lease stops its next attempt: the head is
/// no longer served to the lease holder, and the endpoint cannot be claimed again. The result
/// of the attempt that was in flight is recorded, and changes neither `disabled_at` nor the
/// reason (even a failure past the failing period); enabling brings claim and head back.
fn a_disable_stops_the_next_attempt(db: &Db) {
    tenant(db, "ten_a");
    endpoint(db, "ten_a", "whk_a", "");
    emit(db, &event("ten_a", "msg_1", "install.authorized", 100));
    emit(db, &event("ten_a", "msg_2", "install.deleted", 200));
    let mut c = db.get().unwrap();
    assert!(wh::claim_endpoint(&mut c, "whk_a", "a", 1_000, 100_000).unwrap());
    let (in_flight, _) = wh::head(&mut c, "whk_a", "a", 1_000).unwrap().unwrap();

    set_enabled(&mut c, false, 1_050);
    assert!(
        wh::head(&mut c, "whk_a", "a", 1_100).unwrap().is_none(),
        "no attempt starts after the disable"
    );
    // The attempt in flight finishes: a failure past the failing period does not turn the
    // manual disable into a `failing` one, a delivery does not enable it.
    let failed = Attempt {
        at: 1_100,
        state: wh::PENDING,
        next_attempt_at: 1_200,
        status: Some(500),
        error: Some("receiver answered 500".into()),
    };
    let r = wh::record_attempt(
        &mut c,
        "whk_a",
        in_flight.event_seq,
        "a",
        101_100,
        &failed,
        Some(1_100),
    );
    assert_eq!(r.unwrap(), Recorded::Written);
    let delivered = Attempt {
        at: 1_300,
        state: wh::DELIVERED,
        next_attempt_at: 1_300,
        status: Some(204),
        error: None,
    };
    let r = wh::record_attempt(
        &mut c,
        "whk_a",
        in_flight.event_seq,
        "a",
        101_300,
        &delivered,
        None,
    );
    assert_eq!(r.unwrap(), Recorded::Written);
    let ep = wh::find_endpoint(&mut c, "ten_a", "whk_a")
        .unwrap()
        .unwrap();
    assert_eq!(
        (ep.disabled_at, ep.disabled_reason.as_deref()),
        (Some(1_050), Some(wh::DISABLED_MANUAL))
    );
    assert!(wh::head(&mut c, "whk_a", "a", 2_000).unwrap().is_none());
    // Neither the holder (extending) nor anyone after the lease can claim it.
    assert!(!wh::claim_endpoint(&mut c, "whk_a", "a", 2_000, 100_000).unwrap());
    assert!(wh::release_endpoint(&mut c, "whk_a", "a").unwrap());
    assert!(!wh::claim_endpoint(&mut c, "whk_a", "b", 2_000, 100_000).unwrap());
    assert!(wh::due_endpoints(&mut c, 2_000, 10).unwrap().is_empty());

    set_enabled(&mut c, true, 3_000);
    assert!(wh::claim_endpoint(&mut c, "whk_a", "b", 3_000, 100_000).unwrap());
    let (d, e) = wh::head(&mut c, "whk_a", "b", 3_000).unwrap().unwrap();
    assert_eq!((e.id.as_str(), d.state.as_str()), ("msg_2", "pending"));
}
