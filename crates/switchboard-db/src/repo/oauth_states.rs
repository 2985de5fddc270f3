use diesel::prelude::*;

use crate::models::{NewOAuthState, OAuthState};
use crate::schema::oauth_states::dsl as o;
use crate::{AnyConnection, DbError};

pub fn insert(conn: &mut AnyConnection, new: &NewOAuthState) -> Result<(), DbError> {
    diesel::insert_into(o::oauth_states)
        .values(new)
        .execute(conn)?;
    Ok(())
}

/// Consumes a state: `DELETE ... RETURNING`, so of two concurrent callbacks with the same state
/// exactly one gets the row. An expired state is deleted too and yields `None`.
pub fn take(
    conn: &mut AnyConnection,
    state_hash: &str,
    now: i64,
) -> Result<Option<OAuthState>, DbError> {
    let row: Option<OAuthState> = diesel::delete(o::oauth_states.find(state_hash))
        .returning(crate::schema::oauth_states::all_columns)
        .get_result(conn)
        .optional()?;
    Ok(row.filter(|s| s.expires_at > now))
}

/// Drops the install's pending states (re-authorisation started over, install deleted).
pub fn delete_for_install(conn: &mut AnyConnection, install_id: &str) -> Result<usize, DbError> {
    Ok(diesel::delete(o::oauth_states.filter(o::install_id.eq(install_id))).execute(conn)?)
}

/// Deletes states that expired at or before `now`; returns how many.
pub fn purge_expired(conn: &mut AnyConnection, now: i64) -> Result<usize, DbError> {
    Ok(diesel::delete(o::oauth_states.filter(o::expires_at.le(now))).execute(conn)?)
}

/// How many of the tenant's authorization requests are still pending (not used, not expired
/// at `now`): the `limits.max_pending_oauth_states_per_tenant` quota.
pub fn count_pending(conn: &mut AnyConnection, tenant_id: &str, now: i64) -> Result<u64, DbError> {
    let n: i64 = o::oauth_states
        .filter(o::tenant_id.eq(tenant_id))
        .filter(o::expires_at.gt(now))
        .count()
        .get_result(conn)?;
    Ok(n.max(0) as u64)
}
