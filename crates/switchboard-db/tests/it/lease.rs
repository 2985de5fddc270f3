use std::sync::Barrier;

use switchboard_db::repo::lease::{release_lease, try_acquire_lease};
use switchboard_db::{repo, Db};

use crate::common::{account, install, tenant};
use switchboard_testkit::both_backends;

both_backends!(lease_single_winner, lease_expiry_and_release);

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
