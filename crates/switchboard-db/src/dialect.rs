//! The statements that differ per backend. `AnyConnection`'s backend has no ON CONFLICT, so the
//! same query is built once and executed on the inner connection of each variant.

use diesel::prelude::*;
use diesel::upsert::excluded;

use crate::models::{ConnectorSetup, NewConnectorSetup};
use crate::schema::connector_setups::dsl as s;
use crate::AnyConnection;

pub(crate) fn upsert_setup(
    conn: &mut AnyConnection,
    new: &NewConnectorSetup,
) -> QueryResult<ConnectorSetup> {
    let query = diesel::insert_into(s::connector_setups)
        .values(new)
        .on_conflict((s::tenant_id, s::connector_id))
        .do_update()
        .set((
            s::settings.eq(excluded(s::settings)),
            s::updated_at.eq(excluded(s::updated_at)),
        ))
        .returning(crate::schema::connector_setups::all_columns);
    match conn {
        AnyConnection::Postgresql(c) => query.get_result(c),
        AnyConnection::Sqlite(c) => query.get_result(c),
    }
}
