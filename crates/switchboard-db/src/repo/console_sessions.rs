//! Web console sessions (`console_sessions`): one row per signed-in browser, keyed by the
//! SHA-256 of its opaque token (the caller hashes; this module never sees the token).

use diesel::prelude::*;

use crate::schema::api_keys::dsl as k;
use crate::schema::console_sessions::dsl as s;
use crate::{AnyConnection, DbError};

/// One session row.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct ConsoleSession {
    pub token_hash: String,
    pub tenant_id: String,
    pub api_key_id: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
}

pub fn insert(conn: &mut AnyConnection, row: &ConsoleSession) -> Result<(), DbError> {
    diesel::insert_into(s::console_sessions)
        .values((
            s::token_hash.eq(&row.token_hash),
            s::tenant_id.eq(&row.tenant_id),
            s::api_key_id.eq(&row.api_key_id),
            s::created_at.eq(row.created_at),
            s::last_seen_at.eq(row.last_seen_at),
            s::expires_at.eq(row.expires_at),
        ))
        .execute(conn)?;
    Ok(())
}

/// The session of `token_hash` while the API key it was opened with is not revoked (expiry is
/// the caller's decision: it knows the idle limit and the clock).
pub fn find_with_active_key(
    conn: &mut AnyConnection,
    token_hash: &str,
) -> Result<Option<ConsoleSession>, DbError> {
    Ok(s::console_sessions
        .inner_join(k::api_keys)
        .filter(s::token_hash.eq(token_hash))
        .filter(k::revoked_at.is_null())
        .select((
            s::token_hash,
            s::tenant_id,
            s::api_key_id,
            s::created_at,
            s::last_seen_at,
            s::expires_at,
        ))
        .first(conn)
        .optional()?)
}

/// Records activity (the idle clock restarts).
pub fn touch(conn: &mut AnyConnection, token_hash: &str, now: i64) -> Result<(), DbError> {
    diesel::update(s::console_sessions.find(token_hash))
        .set(s::last_seen_at.eq(now))
        .execute(conn)?;
    Ok(())
}

/// Deletes one session; `true` when it existed.
pub fn delete(conn: &mut AnyConnection, token_hash: &str) -> Result<bool, DbError> {
    Ok(diesel::delete(s::console_sessions.find(token_hash)).execute(conn)? > 0)
}

/// Deletes the sessions past their absolute expiry or idle since before `idle_before`.
pub fn purge(conn: &mut AnyConnection, now: i64, idle_before: i64) -> Result<usize, DbError> {
    Ok(diesel::delete(
        s::console_sessions.filter(s::expires_at.le(now).or(s::last_seen_at.lt(idle_before))),
    )
    .execute(conn)?)
}
