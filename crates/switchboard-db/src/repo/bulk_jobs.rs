//! FHIR Bulk Data export jobs (`bulk_jobs`): the kick-off's row, the tenant's reads (one job,
//! one page of an install's jobs), the poller's claim with a lease (one conditional UPDATE, the
//! same on both backends; the pattern of `webhooks::claim_endpoint`) and its fenced writes.
//! The status URL and the manifest are sealed by the caller (the service); this module never
//! sees them in the clear.

use diesel::prelude::*;

use crate::repo::page::{load_page, After, AnyBackend, Page};
use crate::schema::bulk_jobs::dsl as j;
use crate::{AnyConnection, DbError};

/// The export was accepted upstream; not polled yet.
pub const ACCEPTED: &str = "accepted";
/// Polled at least once; the EHR is still working.
pub const IN_PROGRESS: &str = "in_progress";
/// The manifest is stored; files can be downloaded.
pub const COMPLETED: &str = "completed";
/// The EHR reported an error (or the status URL is gone).
pub const FAILED: &str = "failed";
/// Cancelled by the tenant (DELETE on the job).
pub const CANCELLED: &str = "cancelled";
/// Past its retention: deleted upstream, files no longer served.
pub const EXPIRED: &str = "expired";

/// One job row. `Debug` leaves out the sealed columns' bytes.
#[derive(Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = crate::schema::bulk_jobs, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct BulkJob {
    pub id: String,
    pub tenant_id: String,
    pub account_id: String,
    pub install_id: String,
    pub method_id: String,
    pub status_url: Vec<u8>,
    pub state: String,
    pub progress: Option<String>,
    pub next_poll_at: i64,
    pub attempts: i64,
    pub manifest: Option<Vec<u8>>,
    pub error: Option<String>,
    pub downloaded: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub completed_at: Option<i64>,
    pub upstream_deleted_at: Option<i64>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
}

impl std::fmt::Debug for BulkJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkJob")
            .field("id", &self.id)
            .field("install_id", &self.install_id)
            .field("state", &self.state)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl BulkJob {
    /// Output indexes already downloaded.
    pub fn downloaded_indexes(&self) -> Vec<usize> {
        self.downloaded
            .split(',')
            .filter_map(|s| s.parse().ok())
            .collect()
    }
}

pub fn insert(conn: &mut AnyConnection, job: &BulkJob) -> Result<(), DbError> {
    diesel::insert_into(j::bulk_jobs)
        .values(job)
        .execute(conn)?;
    Ok(())
}

/// The tenant's job on the install (a miss is `None`, whoever owns it).
pub fn find(
    conn: &mut AnyConnection,
    tenant_id: &str,
    install_id: &str,
    id: &str,
) -> Result<Option<BulkJob>, DbError> {
    Ok(j::bulk_jobs
        .filter(j::id.eq(id))
        .filter(j::tenant_id.eq(tenant_id))
        .filter(j::install_id.eq(install_id))
        .select(BulkJob::as_select())
        .first(conn)
        .optional()?)
}

/// The job by id alone (the poller's own work, not a tenant read).
pub fn get(conn: &mut AnyConnection, id: &str) -> Result<Option<BulkJob>, DbError> {
    Ok(j::bulk_jobs
        .find(id)
        .select(BulkJob::as_select())
        .first(conn)
        .optional()?)
}

/// One page of the install's jobs in `(created_at, id)` order.
pub fn list_page(
    conn: &mut AnyConnection,
    tenant_id: &str,
    install_id: &str,
    after: Option<&After>,
    limit: i64,
) -> Result<Page<BulkJob>, DbError> {
    let query = j::bulk_jobs
        .filter(j::tenant_id.eq(tenant_id))
        .filter(j::install_id.eq(install_id))
        .into_boxed::<AnyBackend>();
    Ok(load_page!(conn, query, j, BulkJob, after, limit))
}

/// Ids of jobs waiting for a poll that is due by `now`, whose lease is free (any replica).
pub fn due(conn: &mut AnyConnection, now: i64, limit: i64) -> Result<Vec<String>, DbError> {
    Ok(j::bulk_jobs
        .filter(j::state.eq_any([ACCEPTED, IN_PROGRESS]))
        .filter(j::next_poll_at.le(now))
        .filter(j::lease_until.is_null().or(j::lease_until.le(now)))
        .order(j::next_poll_at.asc())
        .limit(limit)
        .select(j::id)
        .load(conn)?)
}

/// Ids of finished jobs that still have an export upstream to delete: completed before
/// `completed_before` (retention), or cancelled / failed with the deletion pending.
pub fn to_delete_upstream(
    conn: &mut AnyConnection,
    completed_before: i64,
    now: i64,
    limit: i64,
) -> Result<Vec<String>, DbError> {
    Ok(j::bulk_jobs
        .filter(j::upstream_deleted_at.is_null())
        .filter(
            j::state
                .eq(COMPLETED)
                .and(j::completed_at.le(completed_before)),
        )
        .filter(j::lease_until.is_null().or(j::lease_until.le(now)))
        .limit(limit)
        .select(j::id)
        .load(conn)?)
}

/// Takes the job's lease: `true` when this owner now holds it (free, lapsed or already ours).
pub fn claim(
    conn: &mut AnyConnection,
    id: &str,
    owner: &str,
    now: i64,
    ttl_ms: i64,
) -> Result<Option<BulkJob>, DbError> {
    let n = diesel::update(
        j::bulk_jobs.filter(j::id.eq(id)).filter(
            j::lease_until
                .is_null()
                .or(j::lease_until.le(now))
                .or(j::lease_owner.eq(owner)),
        ),
    )
    .set((
        j::lease_owner.eq(owner),
        j::lease_until.eq(now.saturating_add(ttl_ms)),
    ))
    .execute(conn)?;
    if n != 1 {
        return Ok(None);
    }
    Ok(j::bulk_jobs
        .find(id)
        .select(BulkJob::as_select())
        .first(conn)
        .optional()?)
}

/// What one poll learnt, written only while `owner` still holds the lease (the fence), which
/// it releases. `false`: the lease was lost and nothing was written.
#[derive(Debug, Clone, Default)]
pub struct PollOutcome {
    pub state: String,
    pub progress: Option<String>,
    pub next_poll_at: i64,
    pub manifest: Option<Vec<u8>>,
    pub error: Option<String>,
    pub completed_at: Option<i64>,
}

pub fn record_poll(
    conn: &mut AnyConnection,
    id: &str,
    owner: &str,
    now: i64,
    out: &PollOutcome,
) -> Result<bool, DbError> {
    let n = diesel::update(
        j::bulk_jobs
            .filter(j::id.eq(id))
            .filter(j::lease_owner.eq(owner))
            // A job cancelled meanwhile stays cancelled.
            .filter(j::state.eq_any([ACCEPTED, IN_PROGRESS])),
    )
    .set((
        j::state.eq(&out.state),
        j::progress.eq(&out.progress),
        j::next_poll_at.eq(out.next_poll_at),
        j::attempts.eq(j::attempts + 1),
        j::manifest.eq(&out.manifest),
        j::error.eq(&out.error),
        j::completed_at.eq(out.completed_at),
        j::updated_at.eq(now),
        j::lease_owner.eq(None::<String>),
        j::lease_until.eq(None::<i64>),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Releases the lease without writing an outcome.
pub fn release(conn: &mut AnyConnection, id: &str, owner: &str) -> Result<(), DbError> {
    diesel::update(
        j::bulk_jobs
            .filter(j::id.eq(id))
            .filter(j::lease_owner.eq(owner)),
    )
    .set((
        j::lease_owner.eq(None::<String>),
        j::lease_until.eq(None::<i64>),
    ))
    .execute(conn)?;
    Ok(())
}

/// Moves the tenant's job to `state` (cancelled, expired) unless it already is there; returns
/// whether it changed.
pub fn set_state(
    conn: &mut AnyConnection,
    id: &str,
    state: &str,
    now: i64,
) -> Result<bool, DbError> {
    let n = diesel::update(j::bulk_jobs.filter(j::id.eq(id)).filter(j::state.ne(state)))
        .set((j::state.eq(state), j::updated_at.eq(now)))
        .execute(conn)?;
    Ok(n == 1)
}

/// Records that the export was deleted upstream.
pub fn mark_deleted_upstream(conn: &mut AnyConnection, id: &str, now: i64) -> Result<(), DbError> {
    diesel::update(j::bulk_jobs.filter(j::id.eq(id)))
        .set((j::upstream_deleted_at.eq(Some(now)), j::updated_at.eq(now)))
        .execute(conn)?;
    Ok(())
}

/// Adds output `index` to the downloaded set; returns the set after the change.
pub fn mark_downloaded(
    conn: &mut AnyConnection,
    id: &str,
    index: usize,
    now: i64,
) -> Result<Vec<usize>, DbError> {
    conn.transaction(|conn| {
        let current: String = j::bulk_jobs.find(id).select(j::downloaded).first(conn)?;
        let mut set: Vec<usize> = current.split(',').filter_map(|s| s.parse().ok()).collect();
        if !set.contains(&index) {
            set.push(index);
            set.sort_unstable();
            let text = set
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(",");
            diesel::update(j::bulk_jobs.find(id))
                .set((j::downloaded.eq(text), j::updated_at.eq(now)))
                .execute(conn)?;
        }
        Ok(set)
    })
}
