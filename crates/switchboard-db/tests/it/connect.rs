use diesel::sql_types::{BigInt, Text};
use diesel::{QueryableByName, RunQueryDsl};
use switchboard_db::{repo, AnyConnection, Backend, Db, DbError};
use switchboard_testkit::both_backends;

both_backends!(run_and_ping);

fn run_and_ping(db: &Db) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        db.ping().await.unwrap();
        let backend = db
            .run(|conn: &mut AnyConnection| Ok(conn.backend()))
            .await
            .unwrap();
        assert_eq!(backend, db.backend());
        // Many concurrent calls share the pool.
        let tasks: Vec<_> = (0..32)
            .map(|n| {
                db.run(move |conn| {
                    repo::tenants::find(conn, &format!("ten_{n}")).map(|t| t.is_none())
                })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap());
        }
        let err = db
            .run(|_conn| Err::<(), _>(DbError::NotFound))
            .await
            .unwrap_err();
        assert!(matches!(err, DbError::NotFound));
    });
}

/// A new SQLite database and the WAL files SQLite makes beside it are the owner's alone; an
/// existing file keeps the mode its operator gave it.
#[cfg(unix)]
#[test]
fn a_new_sqlite_database_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/switchboard.db");
    let db = Db::connect(&format!("sqlite://{}", path.display()), 2).unwrap();
    switchboard_db::run_migrations(&mut db.get().unwrap()).unwrap();
    assert_eq!(mode(&path), 0o600);
    let wal = dir.path().join("data/switchboard.db-wal");
    assert!(wal.exists(), "the migrations wrote through the WAL");
    assert_eq!(mode(&wal), 0o600);
    assert_eq!(mode(&dir.path().join("data/switchboard.db-shm")), 0o600);
    drop(db);

    let shared = dir.path().join("shared.db");
    std::fs::write(&shared, b"").unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o640)).unwrap();
    let _db = Db::connect(&format!("sqlite://{}", shared.display()), 2).unwrap();
    assert_eq!(mode(&shared), 0o640);
}

#[test]
fn backend_is_chosen_by_scheme() {
    let dir = tempfile::tempdir().unwrap();
    // Relative-looking and absolute paths, parent directories created on the way.
    let url = format!("sqlite://{}/a/b/c.db", dir.path().display());
    let db = Db::connect(&url, 2).unwrap();
    assert_eq!(db.backend(), Backend::Sqlite);
    assert!(dir.path().join("a/b/c.db").exists());
    let db = Db::connect(&format!("sqlite:{}/d.db", dir.path().display()), 2).unwrap();
    assert_eq!(db.backend(), Backend::Sqlite);
    if let Some(pg) = switchboard_testkit::pg::cluster() {
        let db = Db::connect(&pg.url("postgres"), 2).unwrap();
        assert_eq!(db.backend(), Backend::Postgres);
        let db = Db::connect(
            &pg.url("postgres").replace("postgres://", "postgresql://"),
            2,
        )
        .unwrap();
        assert_eq!(db.backend(), Backend::Postgres);
    }
}

#[test]
fn relative_sqlite_paths_are_relative_to_the_working_directory() {
    // Only checks the parsing: `sqlite://data/x.db` names `data/x.db`, not `/data/x.db`.
    let manager = switchboard_db::AnyConnectionManager::new("sqlite://data/x.db").unwrap();
    assert_eq!(manager.backend(), Backend::Sqlite);
    assert!(format!("{manager:?}").contains("Sqlite"));
}

#[test]
fn bad_urls_are_refused_without_echoing_them() {
    for url in [
        "mysql://u:hunter2@h/db",
        "hunter2",
        "sqlite://",
        "sqlite::memory:",
    ] {
        let err = Db::connect(url, 1).unwrap_err();
        assert!(matches!(err, DbError::Config(_)), "{url}: {err:?}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
    // Nothing listens on port 1: fails at once, and never shows the password.
    let started = std::time::Instant::now();
    let err = Db::connect("postgres://postgres:hunter2@127.0.0.1:1/db", 1).unwrap_err();
    assert!(matches!(err, DbError::Pool(_)), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[derive(QueryableByName)]
struct Pragma {
    #[diesel(sql_type = BigInt)]
    foreign_keys: i64,
}

#[derive(QueryableByName)]
struct Journal {
    #[diesel(sql_type = Text)]
    journal_mode: String,
}

#[derive(QueryableByName)]
struct Timeout {
    #[diesel(sql_type = BigInt)]
    timeout: i64,
}

#[derive(QueryableByName)]
struct Checkpoint {
    #[diesel(sql_type = BigInt)]
    wal_autocheckpoint: i64,
}

#[derive(QueryableByName)]
struct CompileOption {
    #[diesel(sql_type = Text)]
    compile_options: String,
}

/// The pragmas every SQLite connection gets (`conn.rs`), as SQLite reports them.
const CONFIGURED: [(&str, &str); 4] = [
    ("foreign_keys", "1"),
    ("journal_mode", "wal"),
    ("busy_timeout", "10000"),
    ("wal_autocheckpoint", "10000"),
];

/// Reads every pragma of [`CONFIGURED`] back through `pragma` (its value as text).
fn assert_configured(mut pragma: impl FnMut(&str) -> String) {
    for (name, want) in CONFIGURED {
        assert_eq!(pragma(name), want, "PRAGMA {name}");
    }
}

/// `PRAGMA name` on a pooled (diesel) connection, as text.
fn pooled_pragma(c: &mut AnyConnection, name: &str) -> String {
    let q = diesel::sql_query(format!("PRAGMA {name}"));
    match name {
        "foreign_keys" => q.get_result::<Pragma>(c).unwrap().foreign_keys.to_string(),
        "journal_mode" => q.get_result::<Journal>(c).unwrap().journal_mode,
        "busy_timeout" => q.get_result::<Timeout>(c).unwrap().timeout.to_string(),
        "wal_autocheckpoint" => q
            .get_result::<Checkpoint>(c)
            .unwrap()
            .wal_autocheckpoint
            .to_string(),
        other => panic!("no reader for PRAGMA {other}"),
    }
}

#[test]
fn sqlite_connections_are_configured() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&switchboard_testkit::pg::sqlite_url(dir.path()), 4).unwrap();
    // Every pooled connection, not just the first.
    let conns: Vec<_> = (0..4).map(|_| db.get().unwrap()).collect();
    for mut c in conns {
        assert_configured(|name| pooled_pragma(&mut c, name));
    }
    // The audit writer's connection, outside the pool (rusqlite).
    let switchboard_db::Dedicated::Sqlite(w) = db.dedicated().unwrap() else {
        panic!("a SQLite database gives a SQLite connection");
    };
    assert_configured(|name| {
        w.pragma_query_value(None, name, |r| r.get::<_, rusqlite::types::Value>(0))
            .map(|v| match v {
                rusqlite::types::Value::Integer(i) => i.to_string(),
                rusqlite::types::Value::Text(t) => t,
                other => format!("{other:?}"),
            })
            .unwrap()
    });
}

/// The bundled SQLite is built with the options of `.cargo/config.toml` (`LIBSQLITE3_FLAGS`):
/// multi-thread mode, and no allocation statistics.
#[test]
fn bundled_sqlite_is_built_multi_thread_without_memory_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&switchboard_testkit::pg::sqlite_url(dir.path()), 1).unwrap();
    let options: Vec<String> = diesel::sql_query("PRAGMA compile_options")
        .load::<CompileOption>(&mut *db.get().unwrap())
        .unwrap()
        .into_iter()
        .map(|o| o.compile_options)
        .collect();
    for wanted in ["THREADSAFE=2", "DEFAULT_MEMSTATUS=0"] {
        assert!(
            options.iter().any(|o| o == wanted),
            "{wanted} not in {options:?}"
        );
    }
}
