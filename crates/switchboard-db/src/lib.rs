//! Storage of Switchboard: the one diesel schema, `AnyConnection` (SQLite or PostgreSQL behind
//! `#[derive(MultiConnection)]`), the r2d2 pool and [`Db::run`], migrations per backend (under an
//! advisory lock on PostgreSQL), tenant-scoped repositories and the install lease. The audit
//! writer's own SQLite connection goes through rusqlite ([`Dedicated`]), on the same bundled
//! SQLite.
//! Host-level rows: `instances` (the running processes' heartbeats the lease takeover reads).
//!
//! Every repository function that touches tenant data takes the tenant id (or an insertable
//! carrying it) and filters by it, so a caller holding tenant A's id cannot reach tenant B's
//! rows. The few unscoped lookups (`find_by_id`, `list_all`, `find_active_by_hash`, the lease,
//! `oauth_states::take`) serve the OAuth callback, the token refresher, API-key authentication
//! and key rotation, which start from an unguessable handle rather than a tenant.
//!
//! Races are settled by single conditional statements (fenced token writes, the lease,
//! `DELETE ... RETURNING` of OAuth states), never by a transaction held across I/O. A
//! transaction that reads and then writes on SQLite should be IMMEDIATE (a deferred one fails
//! with SQLITE_BUSY instead of waiting when another writer got in between).

mod conn;
mod dialect;
mod error;
mod migrate;
pub mod models;
pub mod repo;
pub mod schema;

pub use conn::{
    AnyConnection, AnyConnectionManager, Backend, Db, Dedicated, PoolUsage, PooledConn,
};
pub use error::DbError;
pub use migrate::{run_migrations, MIGRATION_LOCK_KEY, POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS};
pub use models::*;
pub use repo::installs::TokenWrite;
