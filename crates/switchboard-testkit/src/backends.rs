//! The one `Backend` enum (switchboard-db's, re-exported) and the one `both_backends!` macro of
//! the workspace: every test suite that runs a body on SQLite and on PostgreSQL uses these.

use std::future::Future;
use std::path::Path;

pub use switchboard_db::Backend;
use switchboard_db::Db;

/// Whether the PostgreSQL half of `both_backends!` runs here (the testkit's throwaway cluster
/// started). Where PostgreSQL is missing, `pg::cluster` has printed a SKIP line (and panicked
/// under `CI=true`).
pub fn postgres_available() -> bool {
    crate::pg::cluster().is_some()
}

/// A fresh, empty database of `backend` (a SQLite file in `dir`, or a new database of the
/// throwaway PostgreSQL cluster).
pub fn database_url(backend: Backend, dir: &Path) -> String {
    match backend {
        Backend::Sqlite => crate::pg::sqlite_url(dir),
        Backend::Postgres => crate::pg::cluster()
            .expect("PostgreSQL cluster")
            .create_database(),
    }
}

/// Marks a body `async fn(Backend)`: run to completion on an actix system, as
/// `#[actix_web::test]` does (the end-to-end suite starts the real server inside it).
pub struct AsyncBody;

/// Marks a body `fn(&Db)`: given a freshly migrated database of that backend, dropped afterwards
/// (the repository tests of switchboard-db).
pub struct DbBody;

/// A test body `both_backends!` can run on one backend. `Marker` only tells the two kinds apart.
pub trait BackendTest<Marker> {
    fn run_on(self, backend: Backend);
}

impl<F, Fut> BackendTest<AsyncBody> for F
where
    F: FnOnce(Backend) -> Fut,
    Fut: Future<Output = ()>,
{
    fn run_on(self, backend: Backend) {
        actix_web::rt::System::new().block_on(self(backend))
    }
}

impl<F> BackendTest<DbBody> for F
where
    F: FnOnce(&Db),
{
    fn run_on(self, backend: Backend) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = database_url(backend, dir.path());
        {
            let db = Db::connect(&url, 16).expect("connect to the test database");
            db.migrate().expect("migrate the test database");
            self(&db);
        }
        if backend == Backend::Postgres {
            crate::pg::cluster()
                .expect("PostgreSQL cluster")
                .drop_database(&url);
        }
    }
}

/// Runs `body` on `backend`; the PostgreSQL half returns at once where PostgreSQL is missing.
pub fn run<M>(backend: Backend, body: impl BackendTest<M>) {
    if backend == Backend::Postgres && !postgres_available() {
        return;
    }
    body.run_on(backend)
}

/// Runs each test body on both backends: `name => body;` makes the module `name` with the tests
/// `sqlite` and `postgres`, each calling `body` (an `async fn(Backend)` or a `fn(&Db)` in the
/// calling module). `both_backends!(a, b)` is short for `a => a; b => b;`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident => $body:ident;)+) => {
        $(
            mod $name {
                #[test]
                fn sqlite() {
                    $crate::backends::run($crate::backends::Backend::Sqlite, super::$body)
                }
                #[test]
                fn postgres() {
                    $crate::backends::run($crate::backends::Backend::Postgres, super::$body)
                }
            }
        )+
    };
    ($($name:ident),+ $(,)?) => {
        $crate::both_backends! { $($name => $name;)+ }
    };
}
