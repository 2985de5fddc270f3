//! Connect sessions (`connect_sessions`): a tenant's single-use link to the hosted connect page.
//! Only the SHA-256 of the link token is stored (the caller hashes). The link is consumed by
//! [`claim`], one conditional `UPDATE`, so of two concurrent submissions exactly one wins on both
//! backends.

use diesel::prelude::*;

use crate::schema::connect_sessions::dsl as c;
use crate::{AnyConnection, DbError};

/// Not used yet (expired when `expires_at` has passed).
pub const PENDING: &str = "pending";
/// Its form was submitted: the install was created (or is being created).
pub const USED: &str = "used";

/// One session row.
#[derive(Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = crate::schema::connect_sessions)]
pub struct ConnectSession {
    pub id: String,
    pub tenant_id: String,
    pub account_id: String,
    pub connector_id: String,
    pub token_hash: String,
    pub return_url: Option<String>,
    pub api_key_id: Option<String>,
    pub status: String,
    pub install_id: Option<String>,
    pub expires_at: i64,
    pub created_at: i64,
    pub used_at: Option<i64>,
}

impl std::fmt::Debug for ConnectSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token hash stays out of debug output like every other credential column.
        f.debug_struct("ConnectSession")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("status", &self.status)
            .field("install_id", &self.install_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

pub fn insert(conn: &mut AnyConnection, row: &ConnectSession) -> Result<(), DbError> {
    diesel::insert_into(c::connect_sessions)
        .values(row)
        .execute(conn)?;
    Ok(())
}

/// The tenant's session `id`.
pub fn find(
    conn: &mut AnyConnection,
    tenant_id: &str,
    id: &str,
) -> Result<Option<ConnectSession>, DbError> {
    Ok(c::connect_sessions
        .filter(c::tenant_id.eq(tenant_id))
        .filter(c::id.eq(id))
        .select(ConnectSession::as_select())
        .first(conn)
        .optional()?)
}

/// The session whose link token hashes to `token_hash` (the link is the only credential of the
/// hosted page, so this lookup is not tenant-scoped: the row names its tenant).
pub fn find_by_token_hash(
    conn: &mut AnyConnection,
    token_hash: &str,
) -> Result<Option<ConnectSession>, DbError> {
    Ok(c::connect_sessions
        .filter(c::token_hash.eq(token_hash))
        .select(ConnectSession::as_select())
        .first(conn)
        .optional()?)
}

/// Consumes a pending, unexpired session: `true` for exactly one caller.
pub fn claim(conn: &mut AnyConnection, id: &str, now: i64) -> Result<bool, DbError> {
    let n = diesel::update(
        c::connect_sessions
            .filter(c::id.eq(id))
            .filter(c::status.eq(PENDING))
            .filter(c::expires_at.gt(now)),
    )
    .set((c::status.eq(USED), c::used_at.eq(Some(now))))
    .execute(conn)?;
    Ok(n == 1)
}

/// Gives a claimed session back (its install could not be created: the person may correct the
/// form and submit again). Only a claim that has no install yet is released.
pub fn release(conn: &mut AnyConnection, id: &str) -> Result<(), DbError> {
    diesel::update(
        c::connect_sessions
            .filter(c::id.eq(id))
            .filter(c::status.eq(USED))
            .filter(c::install_id.is_null()),
    )
    .set((c::status.eq(PENDING), c::used_at.eq(None::<i64>)))
    .execute(conn)?;
    Ok(())
}

/// Records the install a used session created.
pub fn set_install(conn: &mut AnyConnection, id: &str, install_id: &str) -> Result<(), DbError> {
    diesel::update(c::connect_sessions.filter(c::id.eq(id)))
        .set(c::install_id.eq(Some(install_id)))
        .execute(conn)?;
    Ok(())
}

/// How many of the tenant's sessions are pending (not used, not expired at `now`): the
/// `limits.max_pending_connect_sessions_per_tenant` quota.
pub fn count_pending(conn: &mut AnyConnection, tenant_id: &str, now: i64) -> Result<u64, DbError> {
    let n: i64 = c::connect_sessions
        .filter(c::tenant_id.eq(tenant_id))
        .filter(c::status.eq(PENDING))
        .filter(c::expires_at.gt(now))
        .count()
        .get_result(conn)?;
    Ok(n.max(0) as u64)
}

/// Deletes the tenant's sessions that expired before `before`; returns how many.
pub fn purge_expired(
    conn: &mut AnyConnection,
    tenant_id: &str,
    before: i64,
) -> Result<usize, DbError> {
    Ok(diesel::delete(
        c::connect_sessions
            .filter(c::tenant_id.eq(tenant_id))
            .filter(c::expires_at.lt(before)),
    )
    .execute(conn)?)
}
