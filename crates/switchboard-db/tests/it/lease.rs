use std::sync::Barrier;

use switchboard_db::repo::instances;
use switchboard_db::repo::lease::{release_lease, try_acquire_lease, try_take_lease};
use switchboard_db::{repo, Db};

use crate::common::{account, install, tenant};
use switchboard_testkit::both_backends;

both_backends!(
    lease_single_winner,
    lease_expiry_and_release,
    lease_takeover_follows_the_holders_heartbeat
);

const THREADS: usize = 12;

fn lease_single_winner(db: &Db) {
    tenant(db, "ten_a");
    account(db, "ten_a", "acme");
    install(db, "ten_a", "acme", "ins_1");
    let now = 1_000_000;
    // Several rounds so that the winner is not decided by thread start order alone.
    for round in 0..5i64 {
        let at = now + round * 100_000;
        let barrier = Barrier::new(THREADS);
        let winners: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|n| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        let mut c = db.get().unwrap();
                        let owner = format!("replica-{n}");
                        barrier.wait();
                        try_acquire_lease(&mut c, "ins_1", &owner, at, 30_000)
                            .unwrap()
                            .then_some(owner)
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let mut c = db.get().unwrap();
        let row = repo::installs::find_by_id(&mut c, "ins_1")
            .unwrap()
            .unwrap();
        assert_eq!(row.lease_owner.as_deref(), Some(winners[0].as_str()));
        assert_eq!(row.lease_until, Some(at + 30_000));
        // Leave the lease to expire before the next round.
    }
}

fn lease_expiry_and_release(db: &Db) {
    tenant(db, "ten_a");
    account(db, "ten_a", "acme");
    install(db, "ten_a", "acme", "ins_1");
    let mut c = db.get().unwrap();
    assert!(try_acquire_lease(&mut c, "ins_1", "a", 1_000, 500).unwrap());
    // Live: others are refused, the owner may extend.
    assert!(!try_acquire_lease(&mut c, "ins_1", "b", 1_499, 500).unwrap());
    assert!(try_acquire_lease(&mut c, "ins_1", "a", 1_400, 500).unwrap());
    assert!(!try_acquire_lease(&mut c, "ins_1", "b", 1_899, 500).unwrap());
    // Expired (lease_until <= now): taken over.
    assert!(try_acquire_lease(&mut c, "ins_1", "b", 1_900, 500).unwrap());
    // The old owner's release does nothing; the new owner's frees it at once.
    assert!(!release_lease(&mut c, "ins_1", "a").unwrap());
    assert!(!try_acquire_lease(&mut c, "ins_1", "c", 2_000, 500).unwrap());
    assert!(release_lease(&mut c, "ins_1", "b").unwrap());
    let row = repo::installs::find_by_id(&mut c, "ins_1")
        .unwrap()
        .unwrap();
    assert_eq!((row.lease_owner, row.lease_until), (None, None));
    assert!(try_acquire_lease(&mut c, "ins_1", "c", 2_000, 500).unwrap());
    assert!(!try_acquire_lease(&mut c, "ins_nope", "c", 2_000, 500).unwrap());
    // The lease does not touch the token fence.
    let row = repo::installs::find_by_id(&mut c, "ins_1")
        .unwrap()
        .unwrap();
    assert_eq!(row.token_version, 0);
}

/// Issue 10: a lease is taken over at once when its holder's heartbeat is stale, never while
/// it is fresh (even past `lease_until`); a holder without an instance row keeps the TTL rule.
fn lease_takeover_follows_the_holders_heartbeat(db: &Db) {
    tenant(db, "ten_a");
    account(db, "ten_a", "acme");
    install(db, "ten_a", "acme", "ins_1");
    let mut c = db.get().unwrap();
    instances::heartbeat(&mut c, "live", 10_000).unwrap();
    instances::heartbeat(&mut c, "dead", 10_000).unwrap();
    assert_eq!(instances::count(&mut c).unwrap(), 2);
    // "live" holds a 60 s lease; at 20 s with a 3 s staleness, "live" beat at 19 s.
    assert!(try_take_lease(&mut c, "ins_1", "live", 10_000, 60_000, 7_000).unwrap());
    instances::heartbeat(&mut c, "live", 19_000).unwrap();
    assert!(!try_take_lease(&mut c, "ins_1", "other", 20_000, 60_000, 17_000).unwrap());
    // Past its lease, still beating: not taken.
    instances::heartbeat(&mut c, "live", 80_000).unwrap();
    assert!(!try_take_lease(&mut c, "ins_1", "other", 80_500, 60_000, 77_500).unwrap());
    // Its heartbeat goes stale (at or before now - 3 s): taken at once, long before the TTL.
    assert!(try_take_lease(&mut c, "ins_1", "dead", 83_000, 60_000, 80_000).unwrap());
    instances::heartbeat(&mut c, "dead", 83_000).unwrap();
    // "dead" stops beating; 3 s later "live" takes it over, though lease_until is 143 s.
    assert!(!try_take_lease(&mut c, "ins_1", "live", 85_999, 60_000, 82_999).unwrap());
    assert!(try_take_lease(&mut c, "ins_1", "live", 86_000, 60_000, 83_000).unwrap());
    assert!(release_lease(&mut c, "ins_1", "live").unwrap());
    // A holder with no instance row (an older version): the TTL rule.
    assert!(try_take_lease(&mut c, "ins_1", "proc_old", 90_000, 5_000, 87_000).unwrap());
    assert!(!try_take_lease(&mut c, "ins_1", "live", 94_999, 60_000, 91_999).unwrap());
    assert!(try_take_lease(&mut c, "ins_1", "live", 95_000, 60_000, 92_000).unwrap());
    // Purge and removal of instance rows.
    assert_eq!(instances::purge_dead(&mut c, 80_000).unwrap(), 0);
    assert_eq!(
        instances::purge_dead(&mut c, 81_000).unwrap(),
        1,
        "live, beat at 80 s"
    );
    assert_eq!(instances::heartbeat_of(&mut c, "live").unwrap(), None);
    assert_eq!(
        instances::heartbeat_of(&mut c, "dead").unwrap(),
        Some(83_000)
    );
    assert!(instances::remove(&mut c, "dead").unwrap());
    assert!(!instances::remove(&mut c, "dead").unwrap());
    assert_eq!(instances::count(&mut c).unwrap(), 0);
}
