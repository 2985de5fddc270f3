//! What the [`TokenKeeper`](super::TokenKeeper) reads and writes: the install row, its lease
//! and its fenced token write. [`DbTokenStore`] is the database; tests use a fake.

use crate::error::ServiceError;
use crate::webhooks::{EventType, InstallRef, Outbox};
use std::future::Future;
use std::sync::Arc;
use switchboard_core::InstallStatus;
use switchboard_db::repo::{installs, instances, lease, webhooks};
use switchboard_db::{AnyConnection, Db, DbError, Install, TokenWrite};

/// The install rows of the token lifecycle.
pub trait TokenStore: Send + Sync + 'static {
    fn find(
        &self,
        install_id: &str,
    ) -> impl Future<Output = Result<Option<Install>, ServiceError>> + Send;

    /// Reads the row and, unless its tokens are newer than `seen_version`, tries to take the
    /// refresh lease for `owner` until `now + ttl_ms`: free, expired with a holder that has no
    /// instance row, or held by an instance whose heartbeat is at or before `stale_before`
    /// (`lease::try_take_lease`). Returns the row (None if it is gone) and whether `owner`
    /// holds the lease.
    fn read_and_lease(
        &self,
        install_id: &str,
        seen_version: i64,
        owner: &str,
        now: i64,
        ttl_ms: i64,
        stale_before: i64,
    ) -> impl Future<Output = Result<(Option<Install>, bool), ServiceError>> + Send;

    /// Releases the lease if `owner` still holds it.
    fn release_lease(
        &self,
        install_id: &str,
        owner: &str,
    ) -> impl Future<Output = Result<bool, ServiceError>> + Send;

    /// Writes new tokens if the row is still at `version` (and bumps it). False: fenced out.
    fn store_tokens(
        &self,
        install_id: &str,
        version: i64,
        write: TokenWrite,
    ) -> impl Future<Output = Result<bool, ServiceError>> + Send;

    fn set_refresh_error(
        &self,
        install_id: &str,
        message: &str,
        now: i64,
    ) -> impl Future<Output = Result<(), ServiceError>> + Send;

    /// Records a transient refresh failure, the `consecutive`-th in a row on this token
    /// version (the database store also sends `install.refresh_failing` once enough have
    /// piled up). By default [`TokenStore::set_refresh_error`].
    fn refresh_failed(
        &self,
        install_id: &str,
        message: &str,
        now: i64,
        consecutive: u32,
    ) -> impl Future<Output = Result<(), ServiceError>> + Send {
        let _ = consecutive;
        self.set_refresh_error(install_id, message, now)
    }

    fn set_status(
        &self,
        install_id: &str,
        status: InstallStatus,
        last_error: Option<&str>,
        now: i64,
    ) -> impl Future<Output = Result<(), ServiceError>> + Send;

    /// Authorized installs whose token expires before `now + horizon_ms`.
    fn refresh_candidates(
        &self,
        now: i64,
        horizon_ms: i64,
    ) -> impl Future<Output = Result<Vec<Install>, ServiceError>> + Send;

    /// The polite refresher's installs: refresh token lapsing before `lapse_before`, or neither
    /// refreshed nor used since `check_before`.
    fn idle_refresh_candidates(
        &self,
        lapse_before: i64,
        check_before: i64,
    ) -> impl Future<Output = Result<Vec<Install>, ServiceError>> + Send;

    /// When the refresh token written as `version` lapses if unused.
    fn set_refresh_expires_at(
        &self,
        install_id: &str,
        version: i64,
        at: Option<i64>,
    ) -> impl Future<Output = Result<(), ServiceError>> + Send;

    /// Method calls' use of installs (`last_used_at`); returns how many rows changed.
    fn record_used(
        &self,
        used: Vec<(String, i64)>,
    ) -> impl Future<Output = Result<usize, ServiceError>> + Send;

    /// Writes the instance's heartbeat (creating its row).
    fn heartbeat(
        &self,
        instance: &str,
        now: i64,
    ) -> impl Future<Output = Result<(), ServiceError>> + Send;

    /// Removes the instance's row (graceful shutdown).
    fn remove_instance(
        &self,
        instance: &str,
    ) -> impl Future<Output = Result<(), ServiceError>> + Send;

    /// Deletes instance rows whose heartbeat is older than `before`.
    fn purge_instances(
        &self,
        before: i64,
    ) -> impl Future<Output = Result<usize, ServiceError>> + Send;
}

/// The token store on the database (one `Db::run` per operation). With an outbox, status
/// changes write their webhook event in the same transaction.
#[derive(Clone)]
pub struct DbTokenStore {
    db: Db,
    outbox: Option<Arc<Outbox>>,
}

impl DbTokenStore {
    pub fn new(db: Db) -> Self {
        Self { db, outbox: None }
    }

    /// Writes `install.needs_reauthorization`, `install.refresh_failing` and
    /// `install.recovered` events through `outbox`.
    pub fn with_outbox(mut self, outbox: Arc<Outbox>) -> Self {
        self.outbox = Some(outbox);
        self
    }

    fn wake(&self) {
        if let Some(o) = &self.outbox {
            o.committed();
        }
    }
}

/// Writes `kind` for the install (as it is now, in this transaction) unless its latest event
/// is already of that type.
fn emit_once(
    conn: &mut AnyConnection,
    outbox: &Outbox,
    install_id: &str,
    kind: EventType,
) -> Result<(), DbError> {
    if webhooks::latest_install_event(conn, install_id)?.as_deref() == Some(kind.as_str()) {
        return Ok(());
    }
    if let Some(row) = installs::find_by_id(conn, install_id)? {
        webhooks::emit(conn, &outbox.install_event(kind, InstallRef::from(&row)))?;
    }
    Ok(())
}

impl TokenStore for DbTokenStore {
    async fn find(&self, install_id: &str) -> Result<Option<Install>, ServiceError> {
        let id = install_id.to_owned();
        Ok(self
            .db
            .run(move |conn| installs::find_by_id(conn, &id))
            .await?)
    }

    async fn read_and_lease(
        &self,
        install_id: &str,
        seen_version: i64,
        owner: &str,
        now: i64,
        ttl_ms: i64,
        stale_before: i64,
    ) -> Result<(Option<Install>, bool), ServiceError> {
        let (id, o) = (install_id.to_owned(), owner.to_owned());
        Ok(self
            .db
            .run(move |conn| {
                let row = installs::find_by_id(conn, &id)?;
                let Some(row) = row else {
                    return Ok((None, false));
                };
                if row.token_version > seen_version {
                    return Ok((Some(row), false));
                }
                let won = lease::try_take_lease(conn, &id, &o, now, ttl_ms, stale_before)?;
                Ok((Some(row), won))
            })
            .await?)
    }

    async fn release_lease(&self, install_id: &str, owner: &str) -> Result<bool, ServiceError> {
        let (id, o) = (install_id.to_owned(), owner.to_owned());
        Ok(self
            .db
            .run(move |conn| lease::release_lease(conn, &id, &o))
            .await?)
    }

    async fn store_tokens(
        &self,
        install_id: &str,
        version: i64,
        write: TokenWrite,
    ) -> Result<bool, ServiceError> {
        let id = install_id.to_owned();
        let outbox = self.outbox.clone();
        let committed = self
            .db
            .run(move |conn| {
                conn.write_transaction(|conn| {
                    let committed = installs::store_tokens(conn, &id, version, &write)?;
                    // A refresh that works again after `install.refresh_failing` was sent.
                    if let Some(outbox) = outbox.as_deref().filter(|_| committed) {
                        let latest = webhooks::latest_install_event(conn, &id)?;
                        if latest.as_deref() == Some(EventType::InstallRefreshFailing.as_str()) {
                            emit_once(conn, outbox, &id, EventType::InstallRecovered)?;
                        }
                    }
                    Ok::<_, DbError>(committed)
                })
            })
            .await?;
        self.wake();
        Ok(committed)
    }

    async fn refresh_failed(
        &self,
        install_id: &str,
        message: &str,
        now: i64,
        consecutive: u32,
    ) -> Result<(), ServiceError> {
        let Some(outbox) = self.outbox.clone() else {
            return self.set_refresh_error(install_id, message, now).await;
        };
        let (id, m) = (install_id.to_owned(), message.to_owned());
        self.db
            .run(move |conn| {
                conn.write_transaction(|conn| {
                    installs::set_refresh_error(conn, &id, &m, now)?;
                    if consecutive >= outbox.refresh_failing_after {
                        emit_once(conn, &outbox, &id, EventType::InstallRefreshFailing)?;
                    }
                    Ok::<_, DbError>(())
                })
            })
            .await?;
        self.wake();
        Ok(())
    }

    async fn set_refresh_error(
        &self,
        install_id: &str,
        message: &str,
        now: i64,
    ) -> Result<(), ServiceError> {
        let (id, m) = (install_id.to_owned(), message.to_owned());
        self.db
            .run(move |conn| installs::set_refresh_error(conn, &id, &m, now))
            .await?;
        Ok(())
    }

    async fn set_status(
        &self,
        install_id: &str,
        status: InstallStatus,
        last_error: Option<&str>,
        now: i64,
    ) -> Result<(), ServiceError> {
        let (id, msg) = (install_id.to_owned(), last_error.map(str::to_owned));
        let outbox = self.outbox.clone();
        self.db
            .run(move |conn| {
                conn.write_transaction(|conn| {
                    let changed = installs::set_status(conn, &id, status, msg.as_deref(), now)?;
                    if let Some(outbox) = outbox.as_deref().filter(|_| changed) {
                        if status == InstallStatus::NeedsReauthorization {
                            emit_once(conn, outbox, &id, EventType::InstallNeedsReauthorization)?;
                        }
                    }
                    Ok::<_, DbError>(())
                })
            })
            .await?;
        self.wake();
        Ok(())
    }

    async fn refresh_candidates(
        &self,
        now: i64,
        horizon_ms: i64,
    ) -> Result<Vec<Install>, ServiceError> {
        Ok(self
            .db
            .run(move |conn| installs::list_refresh_candidates(conn, now, horizon_ms))
            .await?)
    }

    async fn idle_refresh_candidates(
        &self,
        lapse_before: i64,
        check_before: i64,
    ) -> Result<Vec<Install>, ServiceError> {
        Ok(self
            .db
            .run(move |conn| {
                installs::list_idle_refresh_candidates(conn, lapse_before, check_before)
            })
            .await?)
    }

    async fn set_refresh_expires_at(
        &self,
        install_id: &str,
        version: i64,
        at: Option<i64>,
    ) -> Result<(), ServiceError> {
        let id = install_id.to_owned();
        self.db
            .run(move |conn| installs::set_refresh_expires_at(conn, &id, version, at))
            .await?;
        Ok(())
    }

    async fn record_used(&self, used: Vec<(String, i64)>) -> Result<usize, ServiceError> {
        Ok(self
            .db
            .run(move |conn| installs::record_used(conn, &used))
            .await?)
    }

    async fn heartbeat(&self, instance: &str, now: i64) -> Result<(), ServiceError> {
        let id = instance.to_owned();
        Ok(self
            .db
            .run(move |conn| instances::heartbeat(conn, &id, now))
            .await?)
    }

    async fn remove_instance(&self, instance: &str) -> Result<(), ServiceError> {
        let id = instance.to_owned();
        self.db
            .run(move |conn| instances::remove(conn, &id))
            .await?;
        Ok(())
    }

    async fn purge_instances(&self, before: i64) -> Result<usize, ServiceError> {
        Ok(self
            .db
            .run(move |conn| instances::purge_dead(conn, before))
            .await?)
    }
}
