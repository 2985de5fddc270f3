use diesel::prelude::*;

use crate::models::{Account, NewAccount};
use crate::repo::page::{load_page, After, AnyBackend, Page};
use crate::schema::accounts::dsl as a;
use crate::{AnyConnection, DbError};

/// `DbError::Conflict` when the tenant already has an account with this id.
pub fn insert(conn: &mut AnyConnection, new: &NewAccount) -> Result<Account, DbError> {
    Ok(diesel::insert_into(a::accounts)
        .values(new)
        .returning(crate::schema::accounts::all_columns)
        .get_result(conn)?)
}

/// One page of the tenant's accounts in `(created_at, id)` order, starting after `after`.
pub fn list_page(
    conn: &mut AnyConnection,
    tenant_id: &str,
    after: Option<&After>,
    limit: i64,
) -> Result<Page<Account>, DbError> {
    let query = a::accounts
        .filter(a::tenant_id.eq(tenant_id))
        .into_boxed::<AnyBackend>();
    Ok(load_page!(conn, query, a, Account, after, limit))
}

pub fn find(
    conn: &mut AnyConnection,
    tenant_id: &str,
    id: &str,
) -> Result<Option<Account>, DbError> {
    Ok(a::accounts
        .find((tenant_id, id))
        .select(Account::as_select())
        .first(conn)
        .optional()?)
}

/// Deletes the account; its installs (and their pending OAuth states) go with it by foreign-key
/// cascade. False if the tenant has no such account.
pub fn delete(conn: &mut AnyConnection, tenant_id: &str, id: &str) -> Result<bool, DbError> {
    let n = diesel::delete(a::accounts.find((tenant_id, id))).execute(conn)?;
    Ok(n == 1)
}

/// How many accounts the tenant has (the `limits.max_accounts_per_tenant` quota).
pub fn count(conn: &mut AnyConnection, tenant_id: &str) -> Result<u64, DbError> {
    let n: i64 = a::accounts
        .filter(a::tenant_id.eq(tenant_id))
        .count()
        .get_result(conn)?;
    Ok(n.max(0) as u64)
}
