//! Idempotency-Key records of write method calls (`idempotency_keys`), one per (install, key):
//! claimed `in_flight` before the upstream write, `done` with the sealed response after it.
//! The response blob is sealed by the caller (the service); this module never sees plaintext.

use diesel::prelude::*;

use crate::schema::idempotency_keys::dsl as k;
use crate::{AnyConnection, DbError};

/// The call holding the key has not finished.
pub const IN_FLIGHT: &str = "in_flight";
/// The call succeeded; `response` holds its sealed answer.
pub const DONE: &str = "done";

/// One record.
#[derive(Debug, Clone, Queryable)]
pub struct IdempotencyRecord {
    pub tenant_id: String,
    pub install_id: String,
    pub key: String,
    pub request_hash: String,
    pub status: String,
    pub response: Option<Vec<u8>>,
    pub created_at: i64,
}

/// Claims `key` on the install (`in_flight`); `false` when a record already holds it.
pub fn claim(
    conn: &mut AnyConnection,
    tenant_id: &str,
    install_id: &str,
    key: &str,
    request_hash: &str,
    now: i64,
) -> Result<bool, DbError> {
    let res = diesel::insert_into(k::idempotency_keys)
        .values((
            k::tenant_id.eq(tenant_id),
            k::install_id.eq(install_id),
            k::key.eq(key),
            k::request_hash.eq(request_hash),
            k::status.eq(IN_FLIGHT),
            k::created_at.eq(now),
        ))
        .execute(conn);
    match res.map_err(DbError::from) {
        Ok(_) => Ok(true),
        Err(DbError::Conflict) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The record of `key` on the install.
pub fn find(
    conn: &mut AnyConnection,
    install_id: &str,
    key: &str,
) -> Result<Option<IdempotencyRecord>, DbError> {
    Ok(k::idempotency_keys
        .find((install_id, key))
        .select((
            k::tenant_id,
            k::install_id,
            k::key,
            k::request_hash,
            k::status,
            k::response,
            k::created_at,
        ))
        .first(conn)
        .optional()?)
}

/// Marks the claimed record `done` with the sealed response.
pub fn complete(
    conn: &mut AnyConnection,
    install_id: &str,
    key: &str,
    sealed_response: &[u8],
) -> Result<(), DbError> {
    diesel::update(k::idempotency_keys.find((install_id, key)))
        .set((k::status.eq(DONE), k::response.eq(Some(sealed_response))))
        .execute(conn)?;
    Ok(())
}

/// Releases a key (the call failed, so a retry with it runs again).
pub fn release(conn: &mut AnyConnection, install_id: &str, key: &str) -> Result<(), DbError> {
    diesel::delete(k::idempotency_keys.find((install_id, key))).execute(conn)?;
    Ok(())
}

/// Deletes the install's records created before `before`; returns how many.
pub fn purge_install(
    conn: &mut AnyConnection,
    install_id: &str,
    before: i64,
) -> Result<usize, DbError> {
    Ok(diesel::delete(
        k::idempotency_keys
            .filter(k::install_id.eq(install_id))
            .filter(k::created_at.lt(before)),
    )
    .execute(conn)?)
}
