//! Cross-replica single flight on an install (token refresh): a lease taken by a conditional
//! UPDATE, where "rows affected = 1" decides the winner. The same statement serialises correctly
//! on both backends (PostgreSQL row locks + re-check of the WHERE clause under READ COMMITTED;
//! SQLite's single writer), so there is no backend-specific code. Hold the lease only around
//! the upstream call, never a transaction; write the result with `installs::store_tokens`.

use diesel::prelude::*;

use crate::schema::installs::dsl as i;
use crate::schema::instances::dsl as n;
use crate::{AnyConnection, DbError};

/// Takes (or extends, for the same owner) the lease until `now + ttl_ms`. True if `owner` holds
/// it now; false if another owner's lease is still live (`lease_until > now`) or the install
/// does not exist.
pub fn try_acquire_lease(
    conn: &mut AnyConnection,
    install_id: &str,
    owner: &str,
    now: i64,
    ttl_ms: i64,
) -> Result<bool, DbError> {
    let n = diesel::update(
        i::installs.filter(i::id.eq(install_id)).filter(
            i::lease_until
                .is_null()
                .or(i::lease_until.le(now))
                .or(i::lease_owner.eq(owner)),
        ),
    )
    .set((
        i::lease_owner.eq(owner),
        i::lease_until.eq(now.saturating_add(ttl_ms)),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Like [`try_acquire_lease`], for owners that are `instances` rows with a heartbeat: the lease
/// is free, or `owner`'s, or its holder's heartbeat is at or before `stale_before` (the holder
/// died: taken over at once, whatever `lease_until` says), or it expired and its holder has no
/// instance row at all (the TTL stays the outer bound for holders without a heartbeat). The
/// lease of a holder whose heartbeat is fresh is never taken, even past `lease_until`: a live
/// slow refresh may still be at the provider.
pub fn try_take_lease(
    conn: &mut AnyConnection,
    install_id: &str,
    owner: &str,
    now: i64,
    ttl_ms: i64,
    stale_before: i64,
) -> Result<bool, DbError> {
    let holder = n::instances.filter(n::id.nullable().eq(i::lease_owner));
    let n = diesel::update(
        i::installs.filter(i::id.eq(install_id)).filter(
            i::lease_until
                .is_null()
                .or(i::lease_owner.eq(owner))
                .or(diesel::dsl::exists(
                    holder.filter(n::heartbeat_at.le(stale_before)),
                ))
                .or(i::lease_until
                    .le(now)
                    .and(diesel::dsl::not(diesel::dsl::exists(holder)))),
        ),
    )
    .set((
        i::lease_owner.eq(owner),
        i::lease_until.eq(now.saturating_add(ttl_ms)),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Releases the lease if `owner` still holds it. False if it had expired and been taken over.
pub fn release_lease(
    conn: &mut AnyConnection,
    install_id: &str,
    owner: &str,
) -> Result<bool, DbError> {
    let n = diesel::update(
        i::installs
            .filter(i::id.eq(install_id))
            .filter(i::lease_owner.eq(owner)),
    )
    .set((
        i::lease_owner.eq(None::<String>),
        i::lease_until.eq(None::<i64>),
    ))
    .execute(conn)?;
    Ok(n == 1)
}
