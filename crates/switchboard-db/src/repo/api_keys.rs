//! API keys (`api_keys`): stored as the SHA-256 of the key (the caller hashes); the hash is
//! the authentication lookup.

use diesel::prelude::*;

use crate::models::{ApiKey, NewApiKey};
use crate::schema::api_keys::dsl as k;
use crate::{AnyConnection, DbError};

pub fn insert(conn: &mut AnyConnection, new: &NewApiKey) -> Result<ApiKey, DbError> {
    Ok(diesel::insert_into(k::api_keys)
        .values(new)
        .returning(crate::schema::api_keys::all_columns)
        .get_result(conn)?)
}

crate::repo::revocable::revocable_rows!(api_keys, ApiKey, key_hash, "key");

/// Records use of keys in one statement (batched by the caller). Returns rows updated.
pub fn touch_last_used(
    conn: &mut AnyConnection,
    ids: &[String],
    now: i64,
) -> Result<usize, DbError> {
    if ids.is_empty() {
        return Ok(0);
    }
    Ok(diesel::update(k::api_keys.filter(k::id.eq_any(ids)))
        .set(k::last_used_at.eq(now))
        .execute(conn)?)
}

/// How many keys of the tenant are not revoked (the `limits.max_api_keys_per_tenant` quota).
pub fn count_active(conn: &mut AnyConnection, tenant_id: &str) -> Result<u64, DbError> {
    let n: i64 = k::api_keys
        .filter(k::tenant_id.eq(tenant_id))
        .filter(k::revoked_at.is_null())
        .count()
        .get_result(conn)?;
    Ok(n.max(0) as u64)
}
