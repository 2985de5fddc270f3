use std::sync::Barrier;

use switchboard_db::Db;

/// The migration folders of both backends, with their version directories.
fn versions(backend: &str) -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../migrations")
        .join(backend);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| {
            for file in ["up.sql", "down.sql"] {
                assert!(
                    e.path().join(file).is_file(),
                    "{}/{file} missing",
                    e.path().display()
                );
            }
            e.file_name().into_string().unwrap()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn migration_folders_have_the_same_versions() {
    let sqlite = versions("sqlite");
    assert!(!sqlite.is_empty());
    assert_eq!(sqlite, versions("postgres"));
}

/// The version diesel reports for a folder name: the digits before the first `_`.
fn expected_applied() -> Vec<String> {
    versions("sqlite")
        .iter()
        .map(|n| n.split('_').next().unwrap().replace('-', ""))
        .collect()
}

fn migrate_is_idempotent(url: &str) {
    let db = Db::connect(url, 2).unwrap();
    assert_eq!(db.migrate().unwrap(), expected_applied());
    assert!(db.migrate().unwrap().is_empty());
}

/// Several replicas migrating one fresh database at the same moment all succeed, and every
/// migration is applied exactly once.
fn concurrent_migrations(url: &str) {
    const REPLICAS: usize = 4;
    let barrier = Barrier::new(REPLICAS);
    let applied: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..REPLICAS)
            .map(|_| {
                s.spawn(|| {
                    // Every thread reaches the barrier, so a failed connect fails the test
                    // instead of leaving the others waiting for it.
                    let db = Db::connect(url, 1);
                    barrier.wait();
                    db.unwrap().migrate().unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<String> = applied.into_iter().flatten().collect();
    all.sort();
    assert_eq!(all, expected_applied());
}

#[test]
fn migrate_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    migrate_is_idempotent(&switchboard_testkit::pg::sqlite_url(dir.path()));
}

#[test]
fn migrate_postgres() {
    if let Some(pg) = switchboard_testkit::pg::cluster() {
        migrate_is_idempotent(&pg.create_database());
    }
}

#[test]
fn concurrent_migrations_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_migrations(&switchboard_testkit::pg::sqlite_url(dir.path()));
}

#[test]
fn concurrent_migrations_postgres() {
    if let Some(pg) = switchboard_testkit::pg::cluster() {
        for _ in 0..3 {
            let url = pg.create_database();
            concurrent_migrations(&url);
            pg.drop_database(&url);
        }
    }
}

/// The tables of the database, but diesel's own bookkeeping.
fn tables(db: &Db) -> Vec<String> {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Table {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    let sql = match db.backend() {
        switchboard_db::Backend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             AND name <> '__diesel_schema_migrations' ORDER BY name"
        }
        switchboard_db::Backend::Postgres => {
            "SELECT tablename::text AS name FROM pg_tables WHERE schemaname = 'public' \
             AND tablename <> '__diesel_schema_migrations' ORDER BY name"
        }
    };
    diesel::sql_query(sql)
        .load::<Table>(&mut *db.get().unwrap())
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect()
}

/// Every migration's `down.sql` runs, newest first, on a database that had them all applied
/// (the testkit's, migrated), and leaves no table behind; then every `up.sql` applies again, to
/// the same tables.
fn every_migration_reverts_and_reapplies(db: &Db) {
    use diesel_migrations::MigrationHarness;
    let before = tables(db);
    assert!(before.contains(&"audit_events".to_owned()), "{before:?}");
    let migrations = match db.backend() {
        switchboard_db::Backend::Sqlite => switchboard_db::SQLITE_MIGRATIONS,
        switchboard_db::Backend::Postgres => switchboard_db::POSTGRES_MIGRATIONS,
    };
    let reverted = db
        .get()
        .unwrap()
        .revert_all_migrations(migrations)
        .map(|v| v.len())
        .unwrap_or_else(|e| panic!("a down.sql failed: {e}"));
    assert_eq!(reverted, expected_applied().len());
    assert_eq!(tables(db), Vec::<String>::new());
    assert_eq!(db.migrate().unwrap(), expected_applied());
    assert_eq!(tables(db), before);
}

switchboard_testkit::both_backends! {
    migrations_revert_and_reapply => every_migration_reverts_and_reapplies;
}
