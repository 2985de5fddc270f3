use std::future::Future;
use std::path::Path;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::r2d2::{self, CustomizeConnection, ManageConnection, R2D2Connection};
use diesel::{Connection, PgConnection, SqliteConnection};

use crate::error::DbError;

/// One connection to either backend. Queries built with the diesel DSL run on both; the few
/// statements that differ (upserts) match on the variant in `dialect.rs`.
#[derive(diesel::MultiConnection)]
pub enum AnyConnection {
    Postgresql(PgConnection),
    Sqlite(SqliteConnection),
}

impl AnyConnection {
    pub fn backend(&self) -> Backend {
        match self {
            AnyConnection::Postgresql(_) => Backend::Postgres,
            AnyConnection::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// A transaction that writes. On SQLite it begins IMMEDIATE: the write lock is taken up
    /// front (waiting up to `busy_timeout`), so a transaction that reads before it writes (a quota
    /// count, then the insert) cannot fail with SQLITE_BUSY because another connection committed
    /// in between (a WAL read snapshot cannot be upgraded to a write). Inside a transaction that is
    /// already open it is a savepoint, like [`Connection::transaction`]; on PostgreSQL it is
    /// `transaction`.
    pub fn write_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut AnyConnection) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        use diesel::connection::{AnsiTransactionManager, TransactionManager};
        let AnyConnection::Sqlite(c) = self else {
            return self.transaction(f);
        };
        let open = AnsiTransactionManager::transaction_manager_status_mut(c)
            .transaction_depth()
            .map_err(E::from)?
            .is_some();
        if open {
            return self.transaction(f);
        }
        AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE").map_err(E::from)?;
        let result = f(self);
        let AnyConnection::Sqlite(c) = self else {
            unreachable!("the variant of a connection never changes")
        };
        match result {
            Ok(value) => match AnsiTransactionManager::commit_transaction(c) {
                Ok(()) => Ok(value),
                Err(e) => {
                    let _ = AnsiTransactionManager::rollback_transaction(c);
                    Err(E::from(e))
                }
            },
            Err(e) => {
                let _ = AnsiTransactionManager::rollback_transaction(c);
                Err(e)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// r2d2 manager that picks the backend from the URL scheme itself (diesel's
/// `MultiConnection::establish` tries variants in order, and SQLite accepts any string).
#[derive(Clone)]
pub struct AnyConnectionManager {
    backend: Backend,
    /// A file path for SQLite, the full URL for PostgreSQL. Never logged: it may hold a password.
    target: String,
}

impl std::fmt::Debug for AnyConnectionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyConnectionManager")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl AnyConnectionManager {
    /// Accepts `sqlite://PATH` (relative or, with a third slash, absolute), `sqlite:PATH`,
    /// `postgres://...` and `postgresql://...`.
    pub fn new(url: &str) -> Result<Self, DbError> {
        let url = url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self {
                backend: Backend::Postgres,
                target: url.to_owned(),
            });
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| {
                DbError::Config(
                    "database.url must start with sqlite:// or postgres:// (or postgresql://)"
                        .to_owned(),
                )
            })?;
        if path.is_empty() || path.starts_with(":memory:") {
            return Err(DbError::Config(
                "database.url needs a file path after sqlite:// (in-memory databases are not \
                 shared between pooled connections)"
                    .to_owned(),
            ));
        }
        Ok(Self {
            backend: Backend::Sqlite,
            target: path.to_owned(),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }
}

impl ManageConnection for AnyConnectionManager {
    type Connection = AnyConnection;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<AnyConnection, r2d2::Error> {
        match self.backend {
            Backend::Postgres => {
                PgConnection::establish(&self.target).map(AnyConnection::Postgresql)
            }
            Backend::Sqlite => SqliteConnection::establish(&self.target).map(AnyConnection::Sqlite),
        }
        .map_err(r2d2::Error::ConnectionError)
    }

    fn is_valid(&self, conn: &mut AnyConnection) -> Result<(), r2d2::Error> {
        conn.ping().map_err(r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut AnyConnection) -> bool {
        std::thread::panicking() || conn.is_broken()
    }
}

/// Per-connection SQLite settings. `busy_timeout` comes first so that switching a fresh file to
/// WAL waits for, rather than fails on, a concurrently opening connection.
///
/// `wal_autocheckpoint`: the commit that takes the write-ahead log past this many pages copies
/// the log's pages into the database file (a checkpoint). SQLite's default, 1,000 pages (4 MiB),
/// made checkpoints about a third of the audit writer's CPU with patients spread over a batch:
/// a page of the patient index rewritten by many batches was copied at every checkpoint.
/// With 10,000 pages the log grows to about 40 MiB and each page is copied once
/// per checkpoint (docs/BENCHMARKS.md, "Ninth pass"). It is a per-connection setting, so every
/// connection has it: whichever commits past the mark runs the checkpoint.
#[derive(Debug, Clone, Copy)]
struct SqlitePragmas;

const SQLITE_PRAGMAS: &str = "PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
     PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 10000;";

/// How often setting the pragmas is tried when SQLite answers "database is locked".
const PRAGMA_ATTEMPTS: u32 = 50;

impl CustomizeConnection<AnyConnection, r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut AnyConnection) -> Result<(), r2d2::Error> {
        if let AnyConnection::Sqlite(c) = conn {
            retry_locked(|| c.batch_execute(SQLITE_PRAGMAS)).map_err(r2d2::Error::QueryError)?;
        }
        Ok(())
    }
}

/// Runs `set` (the pragmas), retrying briefly while SQLite answers "database is locked":
/// switching a new database file to WAL takes an exclusive lock, and SQLite may answer
/// SQLITE_BUSY at once (without its busy handler) when several processes or replicas open the
/// same new file together. Never reported unless it lasts.
fn retry_locked<E: std::fmt::Display>(mut set: impl FnMut() -> Result<(), E>) -> Result<(), E> {
    let mut attempt = 1;
    loop {
        match set() {
            Ok(()) => return Ok(()),
            Err(e) if attempt < PRAGMA_ATTEMPTS && is_locked(&e.to_string()) => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_locked(text: &str) -> bool {
    text.contains("database is locked") || text.contains("database table is locked")
}

/// A connection outside the pool for one long-lived user ([`Db::dedicated`]).
pub enum Dedicated {
    /// SQLite through rusqlite, on the same bundled library as diesel: its statements bind
    /// borrowed values, so the audit writer inserts 32 rows per statement straight from its
    /// records (see `repo::audit::AuditWriter`).
    Sqlite(rusqlite::Connection),
    Postgres(AnyConnection),
}

/// How long a caller waits for a pooled connection unless configured otherwise.
pub const DEFAULT_POOL_TIMEOUT: Duration = Duration::from_secs(5);

pub type Pool = r2d2::Pool<AnyConnectionManager>;
/// A connection checked out of the pool; derefs to [`AnyConnection`].
pub type PooledConn = r2d2::PooledConnection<AnyConnectionManager>;

/// How many pooled connections are open, how many of them idle, and the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    pub connections: u32,
    pub idle: u32,
    pub max: u32,
}

/// The database handle: a pool of [`AnyConnection`]s. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    backend: Backend,
    /// Opens connections outside the pool ([`Db::dedicated`]).
    manager: AnyConnectionManager,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.pool.state();
        f.debug_struct("Db")
            .field("backend", &self.backend)
            .field("connections", &state.connections)
            .field("idle", &state.idle_connections)
            .finish()
    }
}

/// Creates the SQLite database file, when it does not exist yet, readable and writable by its
/// owner only (0600): it holds the audit trail, the installs and the sealed tokens, and SQLite
/// gives the `-wal` and `-shm` files it makes beside it the database file's permissions. An
/// existing file keeps its mode; one that group or others can read is logged as a warning.
fn create_private(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        mode = format!("{mode:o}"),
                        "the SQLite database file is readable by group or others; chmod 600 it"
                    );
                }
            }
            Err(e) => return Err(e),
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

impl Db {
    /// [`Db::connect_with`] with the default pool timeout (`DEFAULT_POOL_TIMEOUT`).
    pub fn connect(url: &str, pool_size: u32) -> Result<Db, DbError> {
        Self::connect_with(url, pool_size, DEFAULT_POOL_TIMEOUT)
    }

    /// Opens a pool of at most `pool_size` connections to `url` (see [`AnyConnectionManager::new`]).
    /// For SQLite the parent directory of the file is created, and the file itself 0600
    /// (`create_private`). Blocks until one connection is established, so a wrong URL fails
    /// here rather than on the first request. Later, a caller
    /// that cannot get a connection within `pool_timeout` (the database is down, or every
    /// connection is busy) gets [`DbError::Pool`], which callers report as "unavailable".
    pub fn connect_with(url: &str, pool_size: u32, pool_timeout: Duration) -> Result<Db, DbError> {
        let manager = AnyConnectionManager::new(url)?;
        let backend = manager.backend();
        if backend == Backend::Sqlite {
            if let Some(parent) = Path::new(&manager.target)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                std::fs::create_dir_all(parent).map_err(|e| {
                    DbError::Pool(format!(
                        "cannot create the directory of the SQLite database: {e}"
                    ))
                })?;
            }
            create_private(Path::new(&manager.target)).map_err(|e| {
                DbError::Pool(format!("cannot create the SQLite database file: {e}"))
            })?;
        }
        // Fail fast with the real cause (r2d2 alone would retry until its timeout).
        let mut first = manager.connect()?;
        SqlitePragmas.on_acquire(&mut first)?;
        drop(first);

        let pool = r2d2::Pool::builder()
            .max_size(pool_size.max(1))
            .min_idle(Some(1))
            .connection_timeout(pool_timeout)
            .connection_customizer(Box::new(SqlitePragmas))
            .build_unchecked(manager.clone());
        Ok(Db {
            pool,
            backend,
            manager,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool's usage right now (for the metrics gauges; no lock is held beyond the read).
    pub fn pool_usage(&self) -> PoolUsage {
        let state = self.pool.state();
        PoolUsage {
            connections: state.connections,
            idle: state.idle_connections,
            max: self.pool.max_size(),
        }
    }

    /// A connection for synchronous callers (CLI commands, tests). Async code uses [`Db::run`].
    pub fn get(&self) -> Result<PooledConn, DbError> {
        Ok(self.pool.get()?)
    }

    /// A connection of its own, outside the pool and set up as pooled ones are (the SQLite
    /// pragmas), for one long-lived user that keeps it between uses: the audit writer, whose
    /// page cache and prepared statements then stay warm. Blocking: call it where blocking is
    /// allowed (a `spawn_blocking` task).
    pub fn dedicated(&self) -> Result<Dedicated, DbError> {
        match self.backend {
            Backend::Postgres => Ok(Dedicated::Postgres(self.manager.connect()?)),
            Backend::Sqlite => {
                let c = rusqlite::Connection::open(&self.manager.target)?;
                retry_locked(|| c.execute_batch(SQLITE_PRAGMAS))?;
                Ok(Dedicated::Sqlite(c))
            }
        }
    }

    /// Runs `f` with a pooled connection on tokio's blocking pool, so diesel's synchronous calls
    /// never stall the async workers.
    pub fn run<T, F>(&self, f: F) -> impl Future<Output = Result<T, DbError>> + Send + 'static
    where
        F: FnOnce(&mut AnyConnection) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        let pool = self.pool.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut conn = pool.get()?;
                f(&mut conn)
            })
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "a database task panicked or was cancelled");
                DbError::Query("the database task did not complete".to_owned())
            })?
        }
    }

    /// Checks out a connection and runs a trivial query.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.run(|conn| conn.ping().map_err(DbError::from)).await
    }
}

impl From<r2d2::Error> for DbError {
    fn from(e: r2d2::Error) -> Self {
        match e {
            r2d2::Error::ConnectionError(e) => e.into(),
            r2d2::Error::QueryError(e) => e.into(),
        }
    }
}
