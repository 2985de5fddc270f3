//! Key rotation storage: a table-generic scan and compare-and-swap over any encrypted column
//! (described by an [`EncryptedColumn`]; the registry of them lives in
//! `switchboard_service::rotation`), and the `key_rotation` progress rows.
//!
//! The swap is one statement, `UPDATE t SET col = new WHERE key = ? AND col = old`: a row
//! written meanwhile (a token refresh, a settings change) no longer holds `old`, so it is left
//! alone and never overwritten with an older value. Nothing else of the row is touched (no
//! `token_version`, no lease), so a rotation can never fence out a refresh.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary, Nullable, Text};

use crate::error::DbError;
use crate::schema::key_rotation::dsl as kr;
use crate::{AnyConnection, Backend};

/// How a column stores its ciphertexts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    /// A (nullable) binary column holding one ciphertext.
    Bytes,
    /// A JSON settings object whose secret values are `{"enc":"<base64 ciphertext>"}`.
    SettingsJson,
}

/// One encrypted column: where it is and how a row is named. `key_sql` is an SQL expression
/// over the row giving a unique text key (a primary key column, or several joined with `':'`).
#[derive(Debug, Clone, Copy)]
pub struct EncryptedColumn {
    pub table: &'static str,
    pub key_sql: &'static str,
    pub column: &'static str,
    pub kind: BlobKind,
}

impl EncryptedColumn {
    /// `table.column`, the name progress rows and `keys status` use.
    pub fn name(&self) -> String {
        format!("{}.{}", self.table, self.column)
    }
}

/// A stored value of an encrypted column.
#[derive(Clone, PartialEq, Eq)]
pub enum StoredBlob {
    Bytes(Vec<u8>),
    Text(String),
}

impl std::fmt::Debug for StoredBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoredBlob(..)")
    }
}

#[derive(QueryableByName)]
struct BytesRow {
    #[diesel(sql_type = Text)]
    k: String,
    #[diesel(sql_type = Binary)]
    v: Vec<u8>,
}

#[derive(QueryableByName)]
struct TextRow {
    #[diesel(sql_type = Text)]
    k: String,
    #[diesel(sql_type = Text)]
    v: String,
}

/// The first three numbered parameters. Both backends number them (`$n`, `?n`), so a
/// statement may name one parameter twice and bind it once.
fn placeholders(backend: Backend) -> [&'static str; 3] {
    match backend {
        Backend::Postgres => ["$1", "$2", "$3"],
        Backend::Sqlite => ["?1", "?2", "?3"],
    }
}

/// Up to `limit` non-NULL values of `col` whose row key sorts after `after`, in key order.
pub fn scan(
    conn: &mut AnyConnection,
    col: &EncryptedColumn,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<(String, StoredBlob)>, DbError> {
    let [p1, p2, _] = placeholders(conn.backend());
    let EncryptedColumn {
        table,
        key_sql,
        column,
        ..
    } = col;
    let sql = format!(
        "SELECT {key_sql} AS k, {column} AS v FROM {table} \
         WHERE {column} IS NOT NULL AND ({p1} IS NULL OR {key_sql} > {p1}) \
         ORDER BY {key_sql} LIMIT {p2}"
    );
    let q = diesel::sql_query(sql)
        .bind::<Nullable<Text>, _>(after.map(str::to_owned))
        .bind::<BigInt, _>(limit);
    Ok(match col.kind {
        BlobKind::Bytes => q
            .load::<BytesRow>(conn)?
            .into_iter()
            .map(|r| (r.k, StoredBlob::Bytes(r.v)))
            .collect(),
        BlobKind::SettingsJson => q
            .load::<TextRow>(conn)?
            .into_iter()
            .map(|r| (r.k, StoredBlob::Text(r.v)))
            .collect(),
    })
}

/// Replaces `old` by `new` in the row `key` only if it still holds `old`. True when it did.
pub fn compare_and_swap(
    conn: &mut AnyConnection,
    col: &EncryptedColumn,
    key: &str,
    old: &StoredBlob,
    new: &StoredBlob,
) -> Result<bool, DbError> {
    let [p1, p2, p3] = placeholders(conn.backend());
    let EncryptedColumn {
        table,
        key_sql,
        column,
        ..
    } = col;
    let sql =
        format!("UPDATE {table} SET {column} = {p1} WHERE {key_sql} = {p2} AND {column} = {p3}");
    let q = diesel::sql_query(sql);
    let n = match (old, new) {
        (StoredBlob::Bytes(old), StoredBlob::Bytes(new)) => q
            .bind::<Binary, _>(new.as_slice())
            .bind::<Text, _>(key)
            .bind::<Binary, _>(old.as_slice())
            .execute(conn)?,
        (StoredBlob::Text(old), StoredBlob::Text(new)) => q
            .bind::<Text, _>(new.as_str())
            .bind::<Text, _>(key)
            .bind::<Text, _>(old.as_str())
            .execute(conn)?,
        _ => {
            return Err(DbError::Query(format!(
                "{}: old and new values are of different kinds",
                col.name()
            )))
        }
    };
    Ok(n == 1)
}

/// The progress of one column in the current (or last) rotation.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = crate::schema::key_rotation, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct RotationProgress {
    pub column_name: String,
    pub target_kid: String,
    /// The key of the last row handled; `None` before the first batch.
    pub cursor: Option<String>,
    /// 1 once the column has been walked to its end.
    pub done: i64,
    /// Values re-encrypted so far.
    pub rewritten: i64,
    pub started_at: i64,
    pub updated_at: i64,
}

/// Every progress row, by column name.
pub fn progress(conn: &mut AnyConnection) -> Result<Vec<RotationProgress>, DbError> {
    Ok(kr::key_rotation
        .order(kr::column_name)
        .select(RotationProgress::as_select())
        .load(conn)?)
}

/// Starts a rotation to `target_kid`: the previous progress is replaced by one fresh row per
/// column, in one transaction.
pub fn start(
    conn: &mut AnyConnection,
    columns: &[String],
    target_kid: &str,
    now: i64,
) -> Result<(), DbError> {
    conn.transaction::<_, DbError, _>(|conn| {
        diesel::delete(kr::key_rotation).execute(conn)?;
        for c in columns {
            diesel::insert_into(kr::key_rotation)
                .values(&RotationProgress {
                    column_name: c.clone(),
                    target_kid: target_kid.to_owned(),
                    cursor: None,
                    done: 0,
                    rewritten: 0,
                    started_at: now,
                    updated_at: now,
                })
                .execute(conn)?;
        }
        Ok(())
    })
}

/// Records that `column` was handled up to the row `cursor` (`done` when its end was reached),
/// with `rewritten` more values re-encrypted.
pub fn advance(
    conn: &mut AnyConnection,
    column: &str,
    cursor: Option<&str>,
    done: bool,
    rewritten: i64,
    now: i64,
) -> Result<(), DbError> {
    diesel::update(kr::key_rotation.filter(kr::column_name.eq(column)))
        .set((
            kr::cursor.eq(cursor),
            kr::done.eq(i64::from(done)),
            kr::rewritten.eq(kr::rewritten + rewritten),
            kr::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

/// The current value of `col` in the row `key` (`None` when the row is gone or NULL).
pub fn get(
    conn: &mut AnyConnection,
    col: &EncryptedColumn,
    key: &str,
) -> Result<Option<StoredBlob>, DbError> {
    let [p1, _, _] = placeholders(conn.backend());
    let EncryptedColumn {
        table,
        key_sql,
        column,
        ..
    } = col;
    let sql = format!(
        "SELECT {key_sql} AS k, {column} AS v FROM {table} \
         WHERE {key_sql} = {p1} AND {column} IS NOT NULL"
    );
    let q = diesel::sql_query(sql).bind::<Text, _>(key);
    Ok(match col.kind {
        BlobKind::Bytes => q
            .get_result::<BytesRow>(conn)
            .optional()?
            .map(|r| StoredBlob::Bytes(r.v)),
        BlobKind::SettingsJson => q
            .get_result::<TextRow>(conn)
            .optional()?
            .map(|r| StoredBlob::Text(r.v)),
    })
}

/// Marks `column` verified: nothing in it is under another key than the target.
pub fn mark_verified(conn: &mut AnyConnection, column: &str) -> Result<(), DbError> {
    diesel::update(kr::key_rotation.filter(kr::column_name.eq(column)))
        .set(kr::done.eq(2))
        .execute(conn)?;
    Ok(())
}

/// Records a completed rotation to key `kid` in every tenant's audit trail as
/// `keys.rotated:{kid}` (an administrative change made by the operator: no API key, no
/// request): the tenants' secrets were re-encrypted.
pub fn record_rotation(conn: &mut AnyConnection, kid: &str, now: i64) -> Result<usize, DbError> {
    use crate::schema::tenants::dsl as t;
    let tenants: Vec<String> = t::tenants.select(t::id).load(conn)?;
    let action = format!("keys.rotated:{kid}");
    let ids: Vec<String> = tenants
        .iter()
        .map(|_| switchboard_core::time_ordered_id("aud", now))
        .collect();
    let rows: Vec<_> = tenants
        .iter()
        .zip(&ids)
        .map(|(tenant, id)| crate::NewAuditEvent::admin(id, tenant, now, &action, 200))
        .collect();
    crate::repo::audit::insert_batch(conn, &rows)
}
