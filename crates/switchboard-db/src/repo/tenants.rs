use diesel::prelude::*;

use crate::models::{NewTenant, Tenant};
use crate::schema::tenants::dsl as t;
use crate::{AnyConnection, DbError};

pub fn insert(conn: &mut AnyConnection, new: &NewTenant) -> Result<Tenant, DbError> {
    Ok(diesel::insert_into(t::tenants)
        .values(new)
        .returning(crate::schema::tenants::all_columns)
        .get_result(conn)?)
}

pub fn find(conn: &mut AnyConnection, tenant_id: &str) -> Result<Option<Tenant>, DbError> {
    Ok(t::tenants
        .find(tenant_id)
        .select(Tenant::as_select())
        .first(conn)
        .optional()?)
}

/// Replaces the tenant's JSON array of allowed return-URL prefixes. False if no such tenant.
pub fn set_allowed_return_urls(
    conn: &mut AnyConnection,
    tenant_id: &str,
    urls_json: &str,
) -> Result<bool, DbError> {
    let n = diesel::update(t::tenants.find(tenant_id))
        .set(t::allowed_return_urls.eq(urls_json))
        .execute(conn)?;
    Ok(n == 1)
}
