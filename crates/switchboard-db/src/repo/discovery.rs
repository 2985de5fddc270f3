//! The SMART discovery cache (issue 11): one row per tenant, connector and FHIR base.

use diesel::prelude::*;

use crate::models::Discovery;
use crate::schema::smart_discovery::dsl as d;
use crate::{AnyConnection, DbError};

/// The cached document of a tenant's connector for `fhir_base`, fresh or not.
pub fn find(
    conn: &mut AnyConnection,
    tenant_id: &str,
    connector_id: &str,
    fhir_base: &str,
) -> Result<Option<Discovery>, DbError> {
    Ok(d::smart_discovery
        .filter(d::tenant_id.eq(tenant_id))
        .filter(d::connector_id.eq(connector_id))
        .filter(d::fhir_base.eq(fhir_base))
        .select(Discovery::as_select())
        .first(conn)
        .optional()?)
}

/// The newest cached document of a tenant's connector, whatever its FHIR base (the setup view).
pub fn latest(
    conn: &mut AnyConnection,
    tenant_id: &str,
    connector_id: &str,
) -> Result<Option<Discovery>, DbError> {
    Ok(d::smart_discovery
        .filter(d::tenant_id.eq(tenant_id))
        .filter(d::connector_id.eq(connector_id))
        .order((d::fetched_at.desc(), d::fhir_base.asc()))
        .select(Discovery::as_select())
        .first(conn)
        .optional()?)
}

/// Stores (or replaces) a document.
pub fn upsert(conn: &mut AnyConnection, row: &Discovery) -> Result<(), DbError> {
    conn.write_transaction(|conn| {
        diesel::delete(
            d::smart_discovery
                .filter(d::tenant_id.eq(&row.tenant_id))
                .filter(d::connector_id.eq(&row.connector_id))
                .filter(d::fhir_base.eq(&row.fhir_base)),
        )
        .execute(conn)?;
        diesel::insert_into(d::smart_discovery)
            .values(row)
            .execute(conn)?;
        Ok(())
    })
}

/// Marks every document of a tenant's connector stale (a token call failed with an endpoint
/// error): the next use reads discovery again.
pub fn mark_stale(
    conn: &mut AnyConnection,
    tenant_id: &str,
    connector_id: &str,
) -> Result<usize, DbError> {
    Ok(diesel::update(
        d::smart_discovery
            .filter(d::tenant_id.eq(tenant_id))
            .filter(d::connector_id.eq(connector_id)),
    )
    .set(d::expires_at.eq(0_i64))
    .execute(conn)?)
}

/// Drops a tenant's cached documents of a connector (its setup was deleted).
pub fn delete_for(
    conn: &mut AnyConnection,
    tenant_id: &str,
    connector_id: &str,
) -> Result<usize, DbError> {
    Ok(diesel::delete(
        d::smart_discovery
            .filter(d::tenant_id.eq(tenant_id))
            .filter(d::connector_id.eq(connector_id)),
    )
    .execute(conn)?)
}
