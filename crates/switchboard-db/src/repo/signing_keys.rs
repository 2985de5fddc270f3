//! SMART Backend Services keys of connector setups (`setup_signing_keys`): a setup's key set,
//! inserting and retiring keys, and the one unscoped lookup, by the opaque JWK Set id, that
//! serves the public JWKS route.

use diesel::prelude::*;

use crate::models::SigningKeyRow;
use crate::schema::setup_signing_keys::dsl as k;
use crate::{AnyConnection, DbError};

/// Every key of a tenant's connector setup (retired ones included), oldest first.
pub fn list(
    conn: &mut AnyConnection,
    tenant_id: &str,
    connector_id: &str,
) -> Result<Vec<SigningKeyRow>, DbError> {
    Ok(k::setup_signing_keys
        .filter(k::tenant_id.eq(tenant_id))
        .filter(k::connector_id.eq(connector_id))
        .order((k::active_from.asc(), k::created_at.asc(), k::kid.asc()))
        .select(SigningKeyRow::as_select())
        .load(conn)?)
}

/// The keys published under a JWK Set id (unscoped: the id is the unguessable handle).
pub fn by_jwks_id(conn: &mut AnyConnection, jwks_id: &str) -> Result<Vec<SigningKeyRow>, DbError> {
    Ok(k::setup_signing_keys
        .filter(k::jwks_id.eq(jwks_id))
        .order((k::active_from.asc(), k::created_at.asc(), k::kid.asc()))
        .select(SigningKeyRow::as_select())
        .load(conn)?)
}

pub fn insert(conn: &mut AnyConnection, row: &SigningKeyRow) -> Result<(), DbError> {
    diesel::insert_into(k::setup_signing_keys)
        .values(row)
        .execute(conn)?;
    Ok(())
}

/// Schedules the retirement of every key of the setup not retiring yet, other than `keep`.
pub fn retire_others(
    conn: &mut AnyConnection,
    tenant_id: &str,
    connector_id: &str,
    keep: &str,
    retire_at: i64,
) -> Result<usize, DbError> {
    Ok(diesel::update(
        k::setup_signing_keys
            .filter(k::tenant_id.eq(tenant_id))
            .filter(k::connector_id.eq(connector_id))
            .filter(k::kid.ne(keep))
            .filter(k::retire_at.is_null()),
    )
    .set(k::retire_at.eq(Some(retire_at)))
    .execute(conn)?)
}

/// Deletes the setup's keys retired at or before `now` (or all of them with `None`).
pub fn delete_retired(
    conn: &mut AnyConnection,
    tenant_id: &str,
    connector_id: &str,
    now: Option<i64>,
) -> Result<usize, DbError> {
    let rows = k::setup_signing_keys
        .filter(k::tenant_id.eq(tenant_id))
        .filter(k::connector_id.eq(connector_id));
    Ok(match now {
        Some(now) => diesel::delete(rows.filter(k::retire_at.le(now))).execute(conn)?,
        None => diesel::delete(rows).execute(conn)?,
    })
}
