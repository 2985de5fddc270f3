//! Schema invariants, read back from each backend's catalog after migrating.

use std::collections::BTreeSet;

use diesel::sql_types::{BigInt, Text};
use diesel::{QueryableByName, RunQueryDsl};
use switchboard_db::Db;
use switchboard_testkit::both_backends;

#[derive(QueryableByName, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Column {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = BigInt)]
    not_null: i64,
}

fn columns(db: &Db) -> BTreeSet<Column> {
    let sql = match db.backend() {
        switchboard_db::Backend::Sqlite => {
            "SELECT m.name AS table_name, p.name AS column_name, p.\"notnull\" AS not_null \
             FROM sqlite_master m JOIN pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' \
               AND m.name NOT LIKE '__diesel%'"
        }
        switchboard_db::Backend::Postgres => {
            "SELECT table_name::text AS table_name, column_name::text AS column_name, \
                    CASE WHEN is_nullable = 'NO' THEN 1 ELSE 0 END::bigint AS not_null \
             FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name NOT LIKE '__diesel%'"
        }
    };
    let mut conn = db.get().unwrap();
    diesel::sql_query(sql)
        .load::<Column>(&mut *conn)
        .unwrap()
        .into_iter()
        .collect()
}

fn tenant_owned_tables_have_tenant_id_not_null(db: &Db) {
    let cols = columns(db);
    let tables: BTreeSet<&str> = cols.iter().map(|c| c.table_name.as_str()).collect();
    assert!(
        tables.contains("installs") && tables.contains("oauth_states"),
        "{tables:?}"
    );
    // Host-level tables are not tenant-owned: the tenants themselves, the running processes
    // (`instances`) and the progress of `keys rotate`.
    for table in tables
        .iter()
        .filter(|t| !["tenants", "instances", "key_rotation"].contains(*t))
    {
        let tenant_id = cols
            .iter()
            .find(|c| c.table_name == *table && c.column_name == "tenant_id");
        match tenant_id {
            Some(c) => assert_eq!(c.not_null, 1, "{table}.tenant_id must be NOT NULL"),
            None => panic!("tenant-owned table {table} has no tenant_id column"),
        }
    }
}

both_backends!(tenant_owned_tables_have_tenant_id_not_null);

/// Both backends end up with the same tables, columns and nullability.
#[test]
fn backends_have_the_same_columns() {
    let Some(pg) = switchboard_testkit::pg::cluster() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Db::connect(&switchboard_testkit::pg::sqlite_url(dir.path()), 1).unwrap();
    sqlite.migrate().unwrap();
    let postgres = Db::connect(&pg.create_database(), 1).unwrap();
    postgres.migrate().unwrap();
    let (a, b) = (columns(&sqlite), columns(&postgres));
    let only_sqlite: Vec<_> = a.difference(&b).collect();
    let only_pg: Vec<_> = b.difference(&a).collect();
    assert!(
        only_sqlite.is_empty() && only_pg.is_empty(),
        "only in SQLite: {only_sqlite:?}\nonly in PostgreSQL: {only_pg:?}"
    );
}
