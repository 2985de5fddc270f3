use diesel::prelude::*;

use crate::models::{ApiKey, NewApiKey};
use crate::repo::page::{after_key, fetch_count, After, AnyBackend, Page};
use crate::schema::api_keys::dsl as k;
use crate::{AnyConnection, DbError};

pub fn insert(conn: &mut AnyConnection, new: &NewApiKey) -> Result<ApiKey, DbError> {
    Ok(diesel::insert_into(k::api_keys)
        .values(new)
        .returning(crate::schema::api_keys::all_columns)
        .get_result(conn)?)
}

/// Authentication lookup (unscoped: the key hash is what identifies the tenant).
pub fn find_active_by_hash(
    conn: &mut AnyConnection,
    key_hash: &str,
) -> Result<Option<ApiKey>, DbError> {
    Ok(k::api_keys
        .filter(k::key_hash.eq(key_hash))
        .filter(k::revoked_at.is_null())
        .select(ApiKey::as_select())
        .first(conn)
        .optional()?)
}

/// One page of the tenant's keys that are not revoked, in `(created_at, id)` order, starting
/// after `after`.
pub fn list_page(
    conn: &mut AnyConnection,
    tenant_id: &str,
    after: Option<&After>,
    limit: i64,
) -> Result<Page<ApiKey>, DbError> {
    let query = k::api_keys
        .filter(k::tenant_id.eq(tenant_id))
        .filter(k::revoked_at.is_null())
        .into_boxed::<AnyBackend>();
    let rows = after_key!(query, k::created_at, k::id, after)
        .order((k::created_at.asc(), k::id.asc()))
        .limit(fetch_count(limit))
        .select(ApiKey::as_select())
        .load(conn)?;
    Ok(Page::from_rows(rows, limit, |r: &ApiKey| After {
        created_at: r.created_at,
        id: r.id.clone(),
    }))
}

pub fn find(
    conn: &mut AnyConnection,
    tenant_id: &str,
    id: &str,
) -> Result<Option<ApiKey>, DbError> {
    Ok(k::api_keys
        .filter(k::tenant_id.eq(tenant_id))
        .filter(k::id.eq(id))
        .select(ApiKey::as_select())
        .first(conn)
        .optional()?)
}

/// Revokes a key of the tenant. False if there is no such active key (unknown, another
/// tenant's, or already revoked).
pub fn revoke(
    conn: &mut AnyConnection,
    tenant_id: &str,
    id: &str,
    now: i64,
) -> Result<bool, DbError> {
    let n = diesel::update(
        k::api_keys
            .filter(k::tenant_id.eq(tenant_id))
            .filter(k::id.eq(id))
            .filter(k::revoked_at.is_null()),
    )
    .set(k::revoked_at.eq(now))
    .execute(conn)?;
    Ok(n == 1)
}

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
