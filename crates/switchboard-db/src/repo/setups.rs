use diesel::prelude::*;

use crate::models::{ConnectorSetup, NewConnectorSetup};
use crate::schema::connector_setups::dsl as s;
use crate::{AnyConnection, DbError};

/// Creates or replaces the tenant's setup of a connector (`created_at` is kept on replace).
pub fn upsert(
    conn: &mut AnyConnection,
    tenant_id: &str,
    connector_id: &str,
    settings_json: &str,
    now: i64,
) -> Result<ConnectorSetup, DbError> {
    let new = NewConnectorSetup {
        tenant_id: tenant_id.to_owned(),
        connector_id: connector_id.to_owned(),
        settings: settings_json.to_owned(),
        created_at: now,
        updated_at: now,
    };
    Ok(crate::dialect::upsert_setup(conn, &new)?)
}

pub fn find(
    conn: &mut AnyConnection,
    tenant_id: &str,
    connector_id: &str,
) -> Result<Option<ConnectorSetup>, DbError> {
    Ok(s::connector_setups
        .find((tenant_id, connector_id))
        .select(ConnectorSetup::as_select())
        .first(conn)
        .optional()?)
}

pub fn list(conn: &mut AnyConnection, tenant_id: &str) -> Result<Vec<ConnectorSetup>, DbError> {
    Ok(s::connector_setups
        .filter(s::tenant_id.eq(tenant_id))
        .order(s::connector_id.asc())
        .select(ConnectorSetup::as_select())
        .load(conn)?)
}

pub fn delete(
    conn: &mut AnyConnection,
    tenant_id: &str,
    connector_id: &str,
) -> Result<bool, DbError> {
    let n = diesel::delete(s::connector_setups.find((tenant_id, connector_id))).execute(conn)?;
    Ok(n == 1)
}
