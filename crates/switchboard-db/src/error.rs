use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// Errors of the storage layer. Messages name tables, constraints and causes, never row data.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("not found")]
    NotFound,
    /// A unique or primary-key constraint was violated (e.g. an account id already taken).
    #[error("conflict with an existing row")]
    Conflict,
    /// The database URL is not usable (unknown scheme, empty path). Never echoes the URL, which
    /// may hold a password.
    #[error("database configuration: {0}")]
    Config(String),
    /// No usable connection: the pool timed out, a connection could not be established, or it
    /// broke mid-query. The database (or the way to it) is down or saturated; retrying later
    /// may succeed.
    #[error("database connection: {0}")]
    Pool(String),
    #[error("database query: {0}")]
    Query(String),
    #[error("database migration: {0}")]
    Migration(String),
}

impl From<DieselError> for DbError {
    fn from(e: DieselError) -> Self {
        match e {
            DieselError::NotFound => DbError::NotFound,
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => DbError::Conflict,
            DieselError::DatabaseError(
                kind @ (DatabaseErrorKind::ClosedConnection
                | DatabaseErrorKind::UnableToSendCommand),
                info,
            ) => DbError::Pool(format!("{kind:?}: {}", info.message())),
            // The primary message of both backends names the table/constraint; values only ever
            // appear in `details()`, which is left out on purpose.
            DieselError::DatabaseError(kind, info) => {
                let mut msg = format!("{kind:?}: {}", info.message());
                if let Some(c) = info.constraint_name() {
                    msg.push_str(&format!(" (constraint {c})"));
                }
                DbError::Query(msg)
            }
            other => DbError::Query(other.to_string()),
        }
    }
}

/// The audit writer's SQLite connection (rusqlite). SQLite's messages name the table and the
/// constraint, never a value.
impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ffi::ErrorCode;
        match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == ErrorCode::ConstraintViolation
                    && matches!(
                        f.extended_code,
                        rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                            | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                    ) =>
            {
                DbError::Conflict
            }
            rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::CannotOpen => {
                DbError::Pool(e.to_string())
            }
            _ => DbError::Query(e.to_string()),
        }
    }
}

impl From<diesel::r2d2::PoolError> for DbError {
    fn from(e: diesel::r2d2::PoolError) -> Self {
        DbError::Pool(e.to_string())
    }
}

impl From<diesel::ConnectionError> for DbError {
    fn from(e: diesel::ConnectionError) -> Self {
        DbError::Pool(e.to_string())
    }
}
