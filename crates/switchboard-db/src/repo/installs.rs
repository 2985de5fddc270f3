use std::fmt;

use diesel::prelude::*;
use switchboard_core::InstallStatus;

use crate::models::{Install, NewInstall, StatusColumn};
use crate::repo::page::{load_page, After, AnyBackend, Page};
use crate::schema::installs::dsl as i;
use crate::{AnyConnection, DbError};

pub fn insert(conn: &mut AnyConnection, new: &NewInstall) -> Result<Install, DbError> {
    // Owned: a `serialize_as` field (the status) has no borrowed `Insertable`.
    // Read back through `Install::as_select()` (the struct does not hold every column).
    diesel::insert_into(i::installs)
        .values(new.clone())
        .execute(conn)?;
    find_by_id(conn, &new.id)?.ok_or(DbError::NotFound)
}

/// The account's installs, oldest first.
pub fn list(
    conn: &mut AnyConnection,
    tenant_id: &str,
    account_id: &str,
) -> Result<Vec<Install>, DbError> {
    Ok(i::installs
        .filter(i::tenant_id.eq(tenant_id))
        .filter(i::account_id.eq(account_id))
        .order((i::created_at.asc(), i::id.asc()))
        .select(Install::as_select())
        .load(conn)?)
}

/// Which of a tenant's installs a page lists; `None` fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallFilter {
    pub account_id: Option<String>,
    pub status: Option<InstallStatus>,
    pub connector_id: Option<String>,
}

/// One page of the tenant's installs matching `filter` (across its accounts unless the filter
/// names one), in `(created_at, id)` order, starting after `after`.
pub fn list_page(
    conn: &mut AnyConnection,
    tenant_id: &str,
    filter: &InstallFilter,
    after: Option<&After>,
    limit: i64,
) -> Result<Page<Install>, DbError> {
    let mut query = i::installs
        .filter(i::tenant_id.eq(tenant_id))
        .into_boxed::<AnyBackend>();
    if let Some(account) = &filter.account_id {
        query = query.filter(i::account_id.eq(account.clone()));
    }
    if let Some(status) = filter.status {
        query = query.filter(i::status.eq(StatusColumn(status)));
    }
    if let Some(connector) = &filter.connector_id {
        query = query.filter(i::connector_id.eq(connector.clone()));
    }
    Ok(load_page!(conn, query, i, Install, after, limit))
}

pub fn find(
    conn: &mut AnyConnection,
    tenant_id: &str,
    account_id: &str,
    id: &str,
) -> Result<Option<Install>, DbError> {
    Ok(i::installs
        .filter(i::tenant_id.eq(tenant_id))
        .filter(i::account_id.eq(account_id))
        .filter(i::id.eq(id))
        .select(Install::as_select())
        .first(conn)
        .optional()?)
}

/// Unscoped lookup for the OAuth callback and the token lifecycle, which reach an install
/// through an unguessable handle (state, lease) rather than a tenant's request.
pub fn find_by_id(conn: &mut AnyConnection, id: &str) -> Result<Option<Install>, DbError> {
    Ok(i::installs
        .find(id)
        .select(Install::as_select())
        .first(conn)
        .optional()?)
}

/// Deletes the install (its OAuth states cascade). False if the account has no such install.
pub fn delete(
    conn: &mut AnyConnection,
    tenant_id: &str,
    account_id: &str,
    id: &str,
) -> Result<bool, DbError> {
    let n = diesel::delete(
        i::installs
            .filter(i::tenant_id.eq(tenant_id))
            .filter(i::account_id.eq(account_id))
            .filter(i::id.eq(id)),
    )
    .execute(conn)?;
    Ok(n == 1)
}

/// Sets (or clears) the URL the OAuth callback redirects to (re-authorisation).
pub fn set_return_url(
    conn: &mut AnyConnection,
    tenant_id: &str,
    account_id: &str,
    id: &str,
    return_url: Option<&str>,
    now: i64,
) -> Result<bool, DbError> {
    let n = diesel::update(
        i::installs
            .filter(i::tenant_id.eq(tenant_id))
            .filter(i::account_id.eq(account_id))
            .filter(i::id.eq(id)),
    )
    .set((i::return_url.eq(return_url), i::updated_at.eq(now)))
    .execute(conn)?;
    Ok(n == 1)
}

/// Sets the status and `last_error` (None clears it). Not fenced: use it for transitions that
/// do not write tokens (e.g. `needs_reauthorization` after a refused refresh).
pub fn set_status(
    conn: &mut AnyConnection,
    id: &str,
    status: InstallStatus,
    last_error: Option<&str>,
    now: i64,
) -> Result<bool, DbError> {
    let n = diesel::update(i::installs.find(id))
        .set((
            i::status.eq(StatusColumn(status)),
            i::last_error.eq(last_error),
            i::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(n == 1)
}

/// A token write (after a code exchange, refresh or client-credentials grant). Token fields are
/// ciphertexts from the key ring.
#[derive(Clone)]
pub struct TokenWrite {
    pub access_token: Vec<u8>,
    /// `None` keeps the stored refresh token (servers may not rotate it).
    pub refresh_token: Option<Vec<u8>>,
    pub expires_at: Option<i64>,
    pub scopes: Option<String>,
    /// JSON object (SMART launch context).
    pub context: Option<String>,
    pub status: InstallStatus,
    pub last_error: Option<String>,
    pub last_refresh_at: Option<i64>,
    pub last_refresh_error: Option<String>,
    /// Becomes `updated_at`.
    pub now: i64,
}

impl fmt::Debug for TokenWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenWrite")
            .field("access_token", &"<redacted>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_at", &self.expires_at)
            .field("scopes", &self.scopes)
            .field("status", &self.status)
            .field("last_error", &self.last_error)
            .field("last_refresh_at", &self.last_refresh_at)
            .field("last_refresh_error", &self.last_refresh_error)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

#[derive(AsChangeset)]
#[diesel(table_name = crate::schema::installs, treat_none_as_null = true)]
struct TokenChanges<'a> {
    access_token: &'a [u8],
    #[diesel(treat_none_as_null = false)]
    refresh_token: Option<&'a [u8]>,
    token_expires_at: Option<i64>,
    scopes: Option<&'a str>,
    context: Option<&'a str>,
    status: StatusColumn,
    last_error: Option<&'a str>,
    last_refresh_at: Option<i64>,
    last_refresh_error: Option<&'a str>,
    updated_at: i64,
}

/// Writes tokens fenced by `token_version`:
/// `UPDATE ... SET ..., token_version = token_version + 1 WHERE id = ? AND token_version = ?`.
/// True if this write won; false if another writer got there first (re-read and use its
/// tokens) or the install is gone.
pub fn store_tokens(
    conn: &mut AnyConnection,
    id: &str,
    expected_version: i64,
    write: &TokenWrite,
) -> Result<bool, DbError> {
    let changes = TokenChanges {
        access_token: &write.access_token,
        refresh_token: write.refresh_token.as_deref(),
        token_expires_at: write.expires_at,
        scopes: write.scopes.as_deref(),
        context: write.context.as_deref(),
        status: StatusColumn(write.status),
        last_error: write.last_error.as_deref(),
        last_refresh_at: write.last_refresh_at,
        last_refresh_error: write.last_refresh_error.as_deref(),
        updated_at: write.now,
    };
    let n = diesel::update(
        i::installs
            .filter(i::id.eq(id))
            .filter(i::token_version.eq(expected_version)),
    )
    .set((&changes, i::token_version.eq(i::token_version + 1)))
    .execute(conn)?;
    Ok(n == 1)
}

/// Records a failed refresh attempt (the tokens and status are left alone).
pub fn set_refresh_error(
    conn: &mut AnyConnection,
    id: &str,
    message: &str,
    now: i64,
) -> Result<bool, DbError> {
    let n = diesel::update(i::installs.find(id))
        .set((
            i::last_refresh_error.eq(message),
            i::last_refresh_at.eq(now),
            i::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(n == 1)
}

/// Authorized installs holding a refresh token whose access token expires before
/// `now + horizon_ms`, soonest first (the background refresher).
pub fn list_refresh_candidates(
    conn: &mut AnyConnection,
    now: i64,
    horizon_ms: i64,
) -> Result<Vec<Install>, DbError> {
    Ok(i::installs
        .filter(i::status.eq(StatusColumn(InstallStatus::Authorized)))
        .filter(i::token_expires_at.lt(now.saturating_add(horizon_ms)))
        .filter(i::refresh_token.is_not_null())
        .order((i::token_expires_at.asc(), i::id.asc()))
        .select(Install::as_select())
        .load(conn)?)
}

/// Authorized installs holding a refresh token that the polite background refresher must
/// refresh now, by id: its refresh token lapses before `lapse_before` (`refresh_expires_at`), or
/// it was neither refreshed nor used since `check_before` (the slow check for a revoked grant).
/// Installs in use are refreshed on demand by their calls.
pub fn list_idle_refresh_candidates(
    conn: &mut AnyConnection,
    lapse_before: i64,
    check_before: i64,
) -> Result<Vec<Install>, DbError> {
    let not_refreshed = i::last_refresh_at.le(check_before).or(i::last_refresh_at
        .is_null()
        .and(i::updated_at.le(check_before)));
    let not_used = i::last_used_at
        .is_null()
        .or(i::last_used_at.le(check_before));
    Ok(i::installs
        .filter(i::status.eq(StatusColumn(InstallStatus::Authorized)))
        .filter(i::refresh_token.is_not_null())
        .filter(
            i::refresh_expires_at
                .le(lapse_before)
                .or(not_refreshed.and(not_used)),
        )
        .order(i::id.asc())
        .select(Install::as_select())
        .load(conn)?)
}

/// Records method calls' use of installs (`last_used_at`, only ever moved forward); returns how
/// many rows changed. One statement per install, in one transaction.
pub fn record_used(conn: &mut AnyConnection, used: &[(String, i64)]) -> Result<usize, DbError> {
    if used.is_empty() {
        return Ok(0);
    }
    conn.write_transaction(|conn| {
        let mut changed = 0;
        for (id, at) in used {
            changed += diesel::update(
                i::installs
                    .filter(i::id.eq(id))
                    .filter(i::last_used_at.is_null().or(i::last_used_at.lt(*at))),
            )
            .set(i::last_used_at.eq(*at))
            .execute(conn)?;
        }
        Ok(changed)
    })
}

/// Records when the install's refresh token lapses if unused (None: no known limit), for the
/// token `version` just written (a newer write sets its own).
pub fn set_refresh_expires_at(
    conn: &mut AnyConnection,
    id: &str,
    version: i64,
    at: Option<i64>,
) -> Result<bool, DbError> {
    let n = diesel::update(
        i::installs
            .filter(i::id.eq(id))
            .filter(i::token_version.eq(version)),
    )
    .set(i::refresh_expires_at.eq(at))
    .execute(conn)?;
    Ok(n == 1)
}

/// Records why the last authorization attempt failed; status and tokens are left alone (a
/// failed re-authorisation never overwrites good tokens).
pub fn set_last_error(
    conn: &mut AnyConnection,
    id: &str,
    message: &str,
    now: i64,
) -> Result<bool, DbError> {
    let n = diesel::update(i::installs.find(id))
        .set((i::last_error.eq(message), i::updated_at.eq(now)))
        .execute(conn)?;
    Ok(n == 1)
}

/// Drops the stored refresh token, fenced like [`store_tokens`] but without bumping the version
/// (used with a following `store_tokens` when a new grant comes without a refresh token).
pub fn clear_refresh_token(
    conn: &mut AnyConnection,
    id: &str,
    expected_version: i64,
) -> Result<bool, DbError> {
    let n = diesel::update(
        i::installs
            .filter(i::id.eq(id))
            .filter(i::token_version.eq(expected_version)),
    )
    .set(i::refresh_token.eq(None::<Vec<u8>>))
    .execute(conn)?;
    Ok(n == 1)
}

/// How many installs the tenant has across its accounts (the `limits.max_installs_per_tenant`
/// quota).
pub fn count(conn: &mut AnyConnection, tenant_id: &str) -> Result<u64, DbError> {
    let n: i64 = i::installs
        .filter(i::tenant_id.eq(tenant_id))
        .count()
        .get_result(conn)?;
    Ok(n.max(0) as u64)
}
