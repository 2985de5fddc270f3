//! Agent sessions (`agent_sessions`, issue 15): bearer access of an MCP client to one install's
//! methods. Only the token's SHA-256 is stored; the service mints and hashes it.

use diesel::prelude::*;

use crate::repo::page::{after_key, fetch_count, After, AnyBackend, Page};
use crate::schema::agent_sessions::dsl as s;
use crate::{AnyConnection, DbError};

/// One session row. `Debug` leaves out the token hash.
#[derive(Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = crate::schema::agent_sessions, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct AgentSession {
    pub id: String,
    pub tenant_id: String,
    pub account_id: String,
    pub install_id: String,
    pub connector_id: String,
    /// Hex SHA-256 of the whole token (the token itself is never stored).
    pub token_hash: String,
    /// JSON array of method ids.
    pub methods: String,
    /// 1 when write methods may be offered, else 0.
    pub allow_writes: i64,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

impl std::fmt::Debug for AgentSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSession")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("install_id", &self.install_id)
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

/// Inserts `row` unless the tenant already has `limit` sessions that are neither revoked nor
/// expired at `now` (0 = no limit). False when the quota refused it.
pub fn insert_within_quota(
    conn: &mut AnyConnection,
    row: &AgentSession,
    limit: u64,
    now: i64,
) -> Result<bool, DbError> {
    conn.write_transaction(|conn| {
        if limit > 0 && count_live(conn, &row.tenant_id, now)? >= limit {
            return Ok(false);
        }
        diesel::insert_into(s::agent_sessions)
            .values(row)
            .execute(conn)?;
        Ok(true)
    })
}

/// How many sessions of the tenant are neither revoked nor expired at `now`.
pub fn count_live(conn: &mut AnyConnection, tenant_id: &str, now: i64) -> Result<u64, DbError> {
    let n: i64 = s::agent_sessions
        .filter(s::tenant_id.eq(tenant_id))
        .filter(s::revoked_at.is_null())
        .filter(s::expires_at.gt(now))
        .count()
        .get_result(conn)?;
    Ok(n.max(0) as u64)
}

/// The session a token hash names, unless revoked (unscoped: the hash identifies the tenant).
/// Expiry is the caller's check, on its clock.
pub fn find_active_by_hash(
    conn: &mut AnyConnection,
    token_hash: &str,
) -> Result<Option<AgentSession>, DbError> {
    Ok(s::agent_sessions
        .filter(s::token_hash.eq(token_hash))
        .filter(s::revoked_at.is_null())
        .select(AgentSession::as_select())
        .first(conn)
        .optional()?)
}

/// One page of the tenant's sessions that are not revoked (expired ones included), in
/// `(created_at, id)` order, starting after `after`.
pub fn list_page(
    conn: &mut AnyConnection,
    tenant_id: &str,
    after: Option<&After>,
    limit: i64,
) -> Result<Page<AgentSession>, DbError> {
    let query = s::agent_sessions
        .filter(s::tenant_id.eq(tenant_id))
        .filter(s::revoked_at.is_null())
        .into_boxed::<AnyBackend>();
    let rows = after_key!(query, s::created_at, s::id, after)
        .order((s::created_at.asc(), s::id.asc()))
        .limit(fetch_count(limit))
        .select(AgentSession::as_select())
        .load(conn)?;
    Ok(Page::from_rows(rows, limit, |r: &AgentSession| After {
        created_at: r.created_at,
        id: r.id.clone(),
    }))
}

/// The tenant's session `id` (revoked or not).
pub fn find(
    conn: &mut AnyConnection,
    tenant_id: &str,
    id: &str,
) -> Result<Option<AgentSession>, DbError> {
    Ok(s::agent_sessions
        .filter(s::tenant_id.eq(tenant_id))
        .filter(s::id.eq(id))
        .select(AgentSession::as_select())
        .first(conn)
        .optional()?)
}

/// Revokes a session of the tenant. False if there is no such session that is not revoked.
pub fn revoke(
    conn: &mut AnyConnection,
    tenant_id: &str,
    id: &str,
    now: i64,
) -> Result<bool, DbError> {
    let n = diesel::update(
        s::agent_sessions
            .filter(s::tenant_id.eq(tenant_id))
            .filter(s::id.eq(id))
            .filter(s::revoked_at.is_null()),
    )
    .set(s::revoked_at.eq(now))
    .execute(conn)?;
    Ok(n == 1)
}
