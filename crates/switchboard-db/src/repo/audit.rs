//! The audit trail: batch insert (the service's writer), filtered keyset pages of one tenant's
//! trail in `(at, id)` order, the export walk and the retention purge. Append-only: there is no
//! update, and rows are deleted only by age.

use std::sync::LazyLock;

use diesel::prelude::*;

use crate::models::{AuditEvent, AuditKey, NewAuditEvent};
use crate::repo::page::{fetch_count, After, AnyBackend, Page};
use crate::schema::audit_events::dsl as a;
use crate::schema::audit_keys::dsl as ak;
use crate::{AnyConnection, Db, DbError, Dedicated};

/// Which of a tenant's records a page holds. Every field narrows; `None` does not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub install_id: Option<String>,
    pub account_id: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<Outcome>,
    /// `at >= from` (epoch ms).
    pub from: Option<i64>,
    /// `at < to` (epoch ms).
    pub to: Option<i64>,
    pub patient_hash: Option<String>,
}

/// The outcome filter: success (status < 400), error (status >= 400), or one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
    Status(i64),
}

/// The audit writer's own SQLite settings, on top of the pool's (WAL, `synchronous = NORMAL`):
/// an 8 MiB page cache (the default is 2 MiB), which holds the hot pages of the table and its
/// indexes between batches. With the narrower indexes of 2026-12-09, 8 MiB cost the same CPU
/// per record as 16 MiB over 200,000 spread records (4 MiB was about 12% dearer);
/// docs/BENCHMARKS.md, "Fourth pass".
const WRITER_SQLITE_PRAGMAS: &str = "PRAGMA cache_size = -8192;";

/// Where the service's audit writer sends its batches: one connection outside the pool
/// ([`Db::dedicated`]), kept from batch to batch. A pooled connection would start most batches
/// with a cold page cache (SQLite drops a connection's cache when another connection has
/// written since its last transaction) and without the prepared insert. After an error the
/// connection is dropped and the next batch opens a fresh one. Blocking: use it on a
/// `spawn_blocking` task.
pub struct AuditWriter {
    db: Db,
    conn: Option<Dedicated>,
}

impl AuditWriter {
    pub fn new(db: Db) -> Self {
        Self { db, conn: None }
    }

    /// Inserts the batch in one transaction on the writer's connection (opened now if needed):
    /// on SQLite `insert_sqlite` (rusqlite), on PostgreSQL [`insert_batch`] (one COPY).
    pub fn insert(&mut self, rows: &[NewAuditEvent<'_>]) -> Result<usize, DbError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let conn = match &mut self.conn {
            Some(c) => c,
            None => {
                let c = self.db.dedicated()?;
                if let Dedicated::Sqlite(s) = &c {
                    s.execute_batch(WRITER_SQLITE_PRAGMAS)?;
                }
                self.conn.insert(c)
            }
        };
        let result = match conn {
            Dedicated::Sqlite(c) => insert_sqlite(c, rows),
            Dedicated::Postgres(c) => insert_batch(c, rows),
        };
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

/// Rows per multi-row INSERT of the SQLite audit writer (fifteen bound values each).
const ROWS_PER_INSERT: usize = 32;

/// The columns of `audit_events` in the order [`bind_row`] binds them.
const INSERT_INTO: &str = "INSERT INTO audit_events (id, tenant_id, at, kind, action, \
    api_key_id, account_id, install_id, connector_id, status, code, upstream_status, \
    duration_ms, request_id, patient_hash) VALUES ";

/// `INSERT INTO audit_events (…) VALUES (?, …), …` for `rows` rows.
fn insert_sql(rows: usize) -> String {
    let row = format!("({})", vec!["?"; COLUMNS].join(","));
    format!("{INSERT_INTO}{}", vec![row; rows].join(","))
}

/// The writer's two statement texts, made once per process: rusqlite's statement cache is
/// keyed by the text, so each batch only looks them up.
static INSERT_CHUNK: LazyLock<String> = LazyLock::new(|| insert_sql(ROWS_PER_INSERT));
static INSERT_ONE: LazyLock<String> = LazyLock::new(|| insert_sql(1));

/// The SQLite writer's batch in one IMMEDIATE transaction: INSERTs of [`ROWS_PER_INSERT`]
/// rows, then single-row INSERTs for the rest. Each statement text is prepared once per
/// connection (rusqlite's statement cache), then only bound and stepped: a multi-row INSERT of
/// the whole batch would be parsed and compiled anew for every batch, about a fifth of SQLite's
/// work per record (docs/BENCHMARKS.md, "Audit cost, second pass"), and one statement per row
/// pays a step and a reset per record ("Eighth pass"). The values are bound straight from the
/// borrowed records: diesel's multi-row insert of a fixed row count needs owned rows, and its
/// bind collection cost 4 to 12% more CPU per record ("Tenth pass"). The table's constraints
/// are `ON CONFLICT ROLLBACK` (migration `audit_conflict_rollback`), so a multi-row statement
/// needs no statement journal, and a conflict ends the transaction: the batch lands whole or
/// not at all.
fn insert_sqlite(
    c: &mut rusqlite::Connection,
    rows: &[NewAuditEvent<'_>],
) -> Result<usize, DbError> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut n = 0;
    let mut chunks = rows.chunks_exact(ROWS_PER_INSERT);
    if chunks.len() > 0 {
        let mut insert = tx.prepare_cached(&INSERT_CHUNK)?;
        for chunk in chunks.by_ref() {
            for (i, row) in chunk.iter().enumerate() {
                bind_row(&mut insert, i * COLUMNS, row)?;
            }
            n += insert.raw_execute()?;
        }
    }
    if !chunks.remainder().is_empty() {
        let mut insert = tx.prepare_cached(&INSERT_ONE)?;
        for row in chunks.remainder() {
            bind_row(&mut insert, 0, row)?;
            n += insert.raw_execute()?;
        }
    }
    tx.commit()?;
    Ok(n)
}

/// Columns of `audit_events`, bound per row.
const COLUMNS: usize = 15;

/// Binds one row's values to parameters `first + 1 ..= first + COLUMNS` (`None` binds NULL).
fn bind_row(
    st: &mut rusqlite::Statement<'_>,
    first: usize,
    r: &NewAuditEvent<'_>,
) -> rusqlite::Result<()> {
    st.raw_bind_parameter(first + 1, r.id)?;
    st.raw_bind_parameter(first + 2, r.tenant_id)?;
    st.raw_bind_parameter(first + 3, r.at)?;
    st.raw_bind_parameter(first + 4, r.kind)?;
    st.raw_bind_parameter(first + 5, r.action)?;
    st.raw_bind_parameter(first + 6, r.api_key_id)?;
    st.raw_bind_parameter(first + 7, r.account_id)?;
    st.raw_bind_parameter(first + 8, r.install_id)?;
    st.raw_bind_parameter(first + 9, r.connector_id)?;
    st.raw_bind_parameter(first + 10, r.status)?;
    st.raw_bind_parameter(first + 11, r.code)?;
    st.raw_bind_parameter(first + 12, r.upstream_status)?;
    st.raw_bind_parameter(first + 13, r.duration_ms)?;
    st.raw_bind_parameter(first + 14, r.request_id)?;
    st.raw_bind_parameter(first + 15, r.patient_hash)
}

/// Inserts the records in one transaction (IMMEDIATE on SQLite; on PostgreSQL one COPY, which
/// is atomic by itself) on a diesel connection: the administrative records written inside
/// another transaction (a tenant's creation, a key rotation), and tests. The service's writer
/// uses [`AuditWriter`]. Returns rows inserted.
pub fn insert_batch(
    conn: &mut AnyConnection,
    rows: &[NewAuditEvent<'_>],
) -> Result<usize, DbError> {
    if rows.is_empty() {
        return Ok(0);
    }
    // One transaction per batch: the writer's rows land together or not at all. SQLite takes
    // the write lock up front (IMMEDIATE), so a concurrent writer makes it wait, not fail.
    match conn {
        AnyConnection::Sqlite(c) => {
            use diesel::connection::{AnsiTransactionManager, TransactionManager};
            // Inside a transaction already open (a tenant created with its first key): a
            // savepoint of it.
            let open = AnsiTransactionManager::transaction_manager_status_mut(c)
                .transaction_depth()?
                .is_some();
            if open {
                c.transaction::<_, DbError, _>(|c| insert_each(c, rows))
            } else {
                c.immediate_transaction::<_, DbError, _>(|c| insert_each(c, rows))
            }
        }
        AnyConnection::Postgresql(c) => Ok(diesel::copy_from(a::audit_events)
            .from_insertable(rows)
            .execute(c)?),
    }
}

/// SQLite on a diesel connection: one INSERT per row. These batches are small (one record,
/// or one per tenant for a key rotation); the writer's large ones go through [`insert_sqlite`].
/// PostgreSQL takes the batch as one binary `COPY … FROM STDIN` (one round trip, no statement
/// to parse or plan: about a third less server CPU per record than the multi-row INSERT it
/// replaced, "Audit cost, third pass").
fn insert_each(
    c: &mut diesel::SqliteConnection,
    rows: &[NewAuditEvent<'_>],
) -> Result<usize, DbError> {
    let mut n = 0;
    for row in rows {
        n += diesel::insert_into(a::audit_events)
            .values(row)
            .execute(c)?;
    }
    Ok(n)
}

/// One page of the tenant's records matching `filter`, in `(at, id)` order, after `after`
/// (whose `created_at` is an `at`).
pub fn list_page(
    conn: &mut AnyConnection,
    tenant_id: &str,
    filter: &AuditFilter,
    after: Option<&After>,
    limit: i64,
) -> Result<Page<AuditEvent>, DbError> {
    let mut query = a::audit_events
        .filter(a::tenant_id.eq(tenant_id))
        .into_boxed::<AnyBackend>();
    if let Some(v) = &filter.install_id {
        query = query.filter(a::install_id.eq(v.clone()));
    }
    if let Some(v) = &filter.account_id {
        query = query.filter(a::account_id.eq(v.clone()));
    }
    if let Some(v) = &filter.action {
        query = query.filter(a::action.eq(v.clone()));
    }
    match filter.outcome {
        Some(Outcome::Ok) => query = query.filter(a::status.lt(400)),
        Some(Outcome::Error) => query = query.filter(a::status.ge(400)),
        Some(Outcome::Status(s)) => query = query.filter(a::status.eq(s)),
        None => {}
    }
    if let Some(v) = filter.from {
        query = query.filter(a::at.ge(v));
    }
    if let Some(v) = filter.to {
        query = query.filter(a::at.lt(v));
    }
    if let Some(v) = &filter.patient_hash {
        query = query.filter(a::patient_hash.eq(v.clone()));
    }
    if let Some(k) = after {
        query = query.filter(
            a::at
                .ge(k.created_at)
                .and(a::at.gt(k.created_at).or(a::id.gt(k.id.clone()))),
        );
    }
    let rows = query
        .order((a::at.asc(), a::id.asc()))
        .limit(fetch_count(limit))
        .select(AuditEvent::as_select())
        .load(conn)?;
    // `Page::next` is `(created_at, id)`: for the trail, `created_at` holds `at`.
    Ok(Page::from_rows(rows, limit, |r: &AuditEvent| After {
        created_at: r.at,
        id: r.id.clone(),
    }))
}

/// Hands every tenant's records with `at >= since` to `each`, oldest first (`(at, id)` order),
/// from one query read row by row (PostgreSQL's single-row mode; SQLite steps its statement),
/// so memory stays flat however long the trail is. Stops early when `each` returns `false`.
/// Returns how many records `each` took. PostgreSQL finds the rows through the BRIN index on
/// `at` and sorts them; SQLite reads its `(at)` B-tree. Blocking, and holds the connection
/// (and its snapshot) for the whole walk: the `audit export` command's.
pub fn export_each(
    conn: &mut AnyConnection,
    since: i64,
    mut each: impl FnMut(AuditEvent) -> bool,
) -> Result<usize, DbError> {
    fn drain(
        rows: impl Iterator<Item = QueryResult<AuditEvent>>,
        each: &mut impl FnMut(AuditEvent) -> bool,
    ) -> Result<usize, DbError> {
        let mut n = 0;
        for row in rows {
            n += 1;
            if !each(row?) {
                break;
            }
        }
        Ok(n)
    }
    macro_rules! ordered_since {
        () => {
            a::audit_events
                .filter(a::at.ge(since))
                .order((a::at.asc(), a::id.asc()))
                .select(AuditEvent::as_select())
        };
    }
    match conn {
        AnyConnection::Postgresql(c) => drain(
            ordered_since!().load_iter::<AuditEvent, diesel::pg::PgRowByRowLoadingMode>(c)?,
            &mut each,
        ),
        AnyConnection::Sqlite(c) => drain(
            ordered_since!().load_iter::<AuditEvent, diesel::connection::DefaultLoadingMode>(c)?,
            &mut each,
        ),
    }
}

/// Deletes the records older than `before` (epoch ms), of every tenant. Returns rows deleted.
pub fn purge_before(conn: &mut AnyConnection, before: i64) -> Result<usize, DbError> {
    Ok(diesel::delete(a::audit_events.filter(a::at.lt(before))).execute(conn)?)
}

/// The tenant's sealed patient-hash key, if one was stored.
pub fn find_key(conn: &mut AnyConnection, tenant_id: &str) -> Result<Option<AuditKey>, DbError> {
    Ok(ak::audit_keys
        .filter(ak::tenant_id.eq(tenant_id))
        .select(AuditKey::as_select())
        .first(conn)
        .optional()?)
}

/// Stores `new` unless the tenant has a key already, and returns the tenant's key: the first
/// one stored wins when two callers race, so every record of a tenant uses one key.
pub fn key_or_insert(conn: &mut AnyConnection, new: &AuditKey) -> Result<AuditKey, DbError> {
    match diesel::insert_into(ak::audit_keys)
        .values(new)
        .execute(conn)
    {
        Ok(_)
        | Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        )) => {}
        Err(e) => return Err(e.into()),
    }
    find_key(conn, &new.tenant_id)?.ok_or(DbError::NotFound)
}
