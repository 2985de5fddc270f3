//! Running processes (`instances`): each `serve` process writes its heartbeat here, so a refresh
//! lease held by a process that died is recognised by its stale heartbeat and taken over in
//! seconds instead of after the lease TTL (see `lease::try_take_lease`). Host-level rows: no
//! tenant.

use diesel::prelude::*;

use crate::schema::instances::dsl as n;
use crate::{AnyConnection, DbError};

/// Writes `now` as the instance's heartbeat, creating its row (started now) if there is none
/// (first beat, or a purge removed it while the process was paused).
pub fn heartbeat(conn: &mut AnyConnection, id: &str, now: i64) -> Result<(), DbError> {
    let n = diesel::update(n::instances.find(id))
        .set(n::heartbeat_at.eq(now))
        .execute(conn)?;
    if n == 0 {
        diesel::insert_into(n::instances)
            .values((n::id.eq(id), n::started_at.eq(now), n::heartbeat_at.eq(now)))
            .execute(conn)?;
    }
    Ok(())
}

/// Removes the instance's row (graceful shutdown). False if there was none.
pub fn remove(conn: &mut AnyConnection, id: &str) -> Result<bool, DbError> {
    Ok(diesel::delete(n::instances.find(id)).execute(conn)? == 1)
}

/// Deletes the rows of instances whose last heartbeat is older than `before`; returns how many.
pub fn purge_dead(conn: &mut AnyConnection, before: i64) -> Result<usize, DbError> {
    Ok(diesel::delete(n::instances.filter(n::heartbeat_at.lt(before))).execute(conn)?)
}

/// The heartbeat of an instance (None: no row).
pub fn heartbeat_of(conn: &mut AnyConnection, id: &str) -> Result<Option<i64>, DbError> {
    Ok(n::instances
        .find(id)
        .select(n::heartbeat_at)
        .first(conn)
        .optional()?)
}

/// How many instance rows exist.
pub fn count(conn: &mut AnyConnection) -> Result<i64, DbError> {
    Ok(n::instances.count().get_result(conn)?)
}
