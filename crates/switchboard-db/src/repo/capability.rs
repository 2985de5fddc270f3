//! The setups' CapabilityStatement checks (issue 12): one row per tenant and connector.

use diesel::prelude::*;

use crate::models::CapabilityCheck;
use crate::schema::setup_capability_checks::dsl as c;
use crate::{AnyConnection, DbError};

/// The last check of a tenant's connector setup.
pub fn find(
    conn: &mut AnyConnection,
    tenant_id: &str,
    connector_id: &str,
) -> Result<Option<CapabilityCheck>, DbError> {
    Ok(c::setup_capability_checks
        .filter(c::tenant_id.eq(tenant_id))
        .filter(c::connector_id.eq(connector_id))
        .select(CapabilityCheck::as_select())
        .first(conn)
        .optional()?)
}

/// Stores (or replaces) the check of a setup.
pub fn upsert(conn: &mut AnyConnection, row: &CapabilityCheck) -> Result<(), DbError> {
    conn.write_transaction(|conn| {
        delete_for(conn, &row.tenant_id, &row.connector_id)?;
        diesel::insert_into(c::setup_capability_checks)
            .values(row)
            .execute(conn)?;
        Ok(())
    })
}

/// Drops the check of a tenant's connector setup (deleted, or saved without a FHIR base).
pub fn delete_for(
    conn: &mut AnyConnection,
    tenant_id: &str,
    connector_id: &str,
) -> Result<usize, DbError> {
    Ok(diesel::delete(
        c::setup_capability_checks
            .filter(c::tenant_id.eq(tenant_id))
            .filter(c::connector_id.eq(connector_id)),
    )
    .execute(conn)?)
}
