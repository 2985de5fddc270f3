//! Agent sessions (`agent_sessions`, issue 15): bearer access of an MCP client to one install's
//! methods. Only the token's SHA-256 is stored; the service mints and hashes it. Expiry is the
//! caller's check, on its clock: `find_active_by_hash` and `list_page` include expired sessions.

use diesel::prelude::*;

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

crate::repo::revocable::revocable_rows!(agent_sessions, AgentSession, token_hash, "session");
