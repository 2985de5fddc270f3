use diesel::sql_types::BigInt;
use diesel::RunQueryDsl;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::conn::{AnyConnection, Db};
use crate::error::DbError;

pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");

/// Session advisory lock held while migrating PostgreSQL (diesel_migrations takes none), so
/// replicas starting together apply each migration once. ASCII "SWBDMIGR".
pub const MIGRATION_LOCK_KEY: i64 = 0x5357_4244_4D49_4752;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Db {
    /// Applies pending migrations (blocking) and returns the versions applied. Defined here,
    /// not in `conn`, so the dependency runs one way: `migrate` -> `conn`.
    pub fn migrate(&self) -> Result<Vec<String>, DbError> {
        let mut conn = self.get()?;
        run_migrations(&mut conn)
    }
}

/// Applies the pending migrations of the connection's backend; returns the versions applied.
pub fn run_migrations(conn: &mut AnyConnection) -> Result<Vec<String>, DbError> {
    let versions = |v: Vec<diesel::migration::MigrationVersion<'_>>| {
        v.into_iter().map(|v| v.to_string()).collect::<Vec<_>>()
    };
    let applied = match conn {
        AnyConnection::Postgresql(pg) => {
            diesel::sql_query("SELECT pg_advisory_lock($1)")
                .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
                .execute(pg)?;
            let result = pg.run_pending_migrations(POSTGRES_MIGRATIONS).map(versions);
            // Released explicitly: pooled connections outlive this call.
            let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1)")
                .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
                .execute(pg);
            let applied = result.map_err(|e| DbError::Migration(e.to_string()))?;
            unlocked?;
            applied
        }
        // One IMMEDIATE transaction takes SQLite's write lock up front: another process
        // migrating the same file waits (busy_timeout) and then finds nothing pending.
        AnyConnection::Sqlite(c) => c
            .immediate_transaction::<_, BoxError, _>(|c| {
                Ok(versions(c.run_pending_migrations(SQLITE_MIGRATIONS)?))
            })
            .map_err(|e| DbError::Migration(e.to_string()))?,
    };
    if !applied.is_empty() {
        tracing::info!(?applied, "applied database migrations");
    }
    Ok(applied)
}
