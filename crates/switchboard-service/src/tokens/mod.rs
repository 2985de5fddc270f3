//! Token lifecycle: [`TokenKeeper`]. A refresh happens once per install however many calls need
//! it: callers in this process queue on a per-install async mutex, and processes coordinate
//! through a lease on the install row (conditional UPDATE; no transaction is held across the
//! upstream call). The winner re-reads the tokens (another replica may have refreshed), calls
//! the token endpoint, and commits the result fenced by `token_version` BEFORE anyone uses the
//! new access token, so a rotated refresh token is never lost to a later write and never sent
//! twice.
//!
//! Crashes and shutdowns (issue 10): the lease owner is this process's instance id, whose
//! heartbeat ([`TokenKeeper::heartbeat`]) lives in the `instances` table; a lease whose holder's
//! heartbeat is stale is taken over at once, a live holder's never. The refresh itself runs in a
//! task of its own that the caller awaits, so a client that disconnects or a server that stops
//! does not abort it between the provider's answer and the commit; shutdown awaits them
//! ([`TokenKeeper::drain`]).
//!
//! The background refresher is polite by default: idle installs are refreshed only ahead of
//! their refresh token's lapse and once per `tokens.idle_check_interval_secs`; method calls
//! mark installs used ([`TokenKeeper::note_used`], written in batches).
//!
//! The keeper's inputs are narrow: a [`TokenStore`] (the install rows), a [`TokenEndpoint`]
//! (new tokens for a row), a [`Clock`] (expiry, lease, backoff) and the prepared-install cache
//! it drops entries from. It knows nothing of method calls.

mod endpoint;
mod store;
#[cfg(test)]
mod tests;

pub(crate) use endpoint::refresh_lapse_at;
pub use endpoint::{OAuthTokenEndpoint, RequestError, TokenEndpoint};
pub use store::{DbTokenStore, TokenStore};

use crate::cache::{InstallCache, Prepared};
use crate::clock::Clock;
use crate::error::ServiceError;
use rand::Rng;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use switchboard_auth::AuthError;
use switchboard_config::BackgroundRefreshPolicy;
use switchboard_core::{ErrorCode, InstallStatus};
use switchboard_db::{Install, TokenWrite};
use switchboard_metrics::{self as metrics, LeaseWaitOutcome, RefreshOutcome};

/// Maps a failure to obtain an install's first token (client credentials at creation).
pub(crate) fn first_token_error(e: AuthError) -> ServiceError {
    match e {
        AuthError::InvalidClient { .. } | AuthError::InvalidGrant { .. } => {
            ServiceError::CredentialsRejected(
                "the token endpoint rejected the client credentials; check client_id and client_secret".into(),
            )
        }
        AuthError::OAuth { error, .. } => ServiceError::CredentialsRejected(format!(
            "the token endpoint refused the request ({error})"
        )),
        AuthError::Transient { status, .. } => ServiceError::TokenExchangeFailed(match status {
            Some(s) => format!("the token endpoint is unavailable (HTTP {s}); try again later"),
            None => "the token endpoint did not answer; try again later".into(),
        }),
        other => ServiceError::TokenExchangeFailed(format!(
            "the token endpoint gave an unusable answer: {other}"
        )),
    }
}

/// Refresh when less than min(margin_max, 10% of the lifetime) is left.
pub(crate) fn needs_refresh(
    expires_at: Option<i64>,
    obtained_at: Option<i64>,
    margin_max_ms: i64,
    now: i64,
) -> bool {
    let Some(exp) = expires_at else {
        return false;
    };
    let lifetime = obtained_at
        .map(|o| (exp - o).max(0))
        .unwrap_or(margin_max_ms * 10);
    let margin = (lifetime / 10).min(margin_max_ms);
    exp - margin <= now
}

/// A detached task: the keeper hands its refreshes to this (the application spawns them on its
/// main runtime, under its metrics recorder), so they outlive the request that started them.
pub type Spawner = Arc<dyn Fn(Pin<Box<dyn Future<Output = ()> + Send>>) + Send + Sync>;

/// A method call's use of an install is written at most this often (the polite refresher needs
/// "used today", not the exact instant).
const USED_WRITE_GRANULARITY_MS: i64 = 10 * 60 * 1000;

/// The keeper of the process: on the database and the real token endpoints.
pub type Keeper = TokenKeeper<DbTokenStore, OAuthTokenEndpoint>;

/// The outcome of a refresh.
pub enum Refreshed<T> {
    /// Someone in this process already holds newer tokens (or the still valid current ones
    /// after a failure it shares): the cached prepared install.
    Cached(Arc<Prepared>),
    /// The install row as it is now (newer tokens, written by us or by another process), as
    /// the caller's `prepare` made it.
    Row(T),
}

pub struct TokenKeeper<S, E> {
    store: S,
    endpoint: E,
    clock: Arc<dyn Clock>,
    cache: Arc<InstallCache>,
    /// Identifies this process as a lease owner and its `instances` row; new on every start.
    owner: String,
    lease_ttl_ms: i64,
    instance_stale_ms: i64,
    instance_purge_after_ms: i64,
    policy: BackgroundRefreshPolicy,
    idle_check_ms: i64,
    lapse_margin_ms: i64,
    /// Where detached refreshes run (set by the application); else the runtime `new` ran on.
    spawner: OnceLock<Spawner>,
    runtime: Option<tokio::runtime::Handle>,
    /// Refreshes running detached, so shutdown can await them.
    in_flight: Arc<InFlight>,
    /// Installs method calls used, not yet written (`last_used_at`), and when each was last
    /// written.
    usage: Mutex<Usage>,
    wait_timeout: Duration,
    margin_max_ms: i64,
    horizon_ms: i64,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The last failed refresh attempt per install, shared with the callers that queued while it
    /// ran and with every caller until its backoff ends: a token endpoint that is down is asked
    /// once per flight and then with exponential backoff, not once per call.
    failures: Mutex<HashMap<String, Failure>>,
    /// Numbers failures in the order they were recorded ("did it end while I queued?").
    failure_seq: AtomicU64,
    backoff_initial_ms: i64,
    backoff_max_ms: i64,
    /// Counts completed background passes, so a test can wait for passes instead of time.
    passes: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct Usage {
    pending: HashMap<String, i64>,
    written: HashMap<String, i64>,
}

/// Counts detached refreshes; [`TokenKeeper::drain`] waits for zero.
#[derive(Default)]
struct InFlight {
    running: AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One running detached refresh (dropped when it ends, however it ends).
struct InFlightGuard(Arc<InFlight>);

impl InFlight {
    fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.running.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A failed refresh attempt (transient or unusable answer; `invalid_grant` demotes instead).
#[derive(Clone)]
struct Failure {
    seq: u64,
    /// No new attempt before this (exponential backoff over consecutive failures).
    retry_at: i64,
    consecutive: u32,
    version: i64,
    unavailable: bool,
    message: String,
}

impl Failure {
    fn error(&self, now: i64) -> ServiceError {
        if self.unavailable {
            let wait_ms = (self.retry_at - now).max(0);
            ServiceError::Upstream {
                code: ErrorCode::UpstreamUnavailable,
                detail: "the EHR's token endpoint is unavailable; the install stays authorized, retry later".into(),
                retry_after_secs: Some(((wait_ms + 999) / 1000).max(1) as u64),
                issues: vec![],
            }
        } else {
            ServiceError::TokenExchangeFailed(self.message.clone())
        }
    }
}

enum Outcome {
    Fresh(Box<Install>),
    Failed(ServiceError),
}

impl<S: TokenStore, E: TokenEndpoint> TokenKeeper<S, E> {
    pub fn new(
        cfg: &switchboard_config::TokenSettings,
        store: S,
        endpoint: E,
        clock: Arc<dyn Clock>,
        cache: Arc<InstallCache>,
    ) -> Self {
        Self {
            store,
            endpoint,
            clock,
            cache,
            owner: format!("proc_{}", switchboard_core::random_token(12)),
            lease_ttl_ms: cfg.lease_ttl_ms as i64,
            instance_stale_ms: cfg.instance_stale_ms as i64,
            instance_purge_after_ms: (cfg.instance_purge_after_secs as i64).saturating_mul(1000),
            policy: cfg.background_refresh_policy,
            idle_check_ms: (cfg.idle_check_interval_secs as i64).saturating_mul(1000),
            lapse_margin_ms: (cfg.refresh_lapse_margin_secs as i64).saturating_mul(1000),
            spawner: OnceLock::new(),
            runtime: tokio::runtime::Handle::try_current().ok(),
            in_flight: Arc::default(),
            usage: Mutex::default(),
            wait_timeout: Duration::from_millis(cfg.wait_timeout_ms),
            margin_max_ms: (cfg.refresh_margin_max_secs * 1000) as i64,
            horizon_ms: (cfg.background_refresh_horizon_secs * 1000) as i64,
            locks: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            failure_seq: AtomicU64::new(0),
            backoff_initial_ms: cfg.refresh_backoff_initial_ms as i64,
            backoff_max_ms: cfg.refresh_backoff_max_ms as i64,
            passes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The keeper's clock (epoch ms).
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// This process's instance id (the lease owner of its refreshes).
    pub fn instance_id(&self) -> &str {
        &self.owner
    }

    /// Where detached refreshes run from now on (the application: its main runtime, under its
    /// metrics recorder). Only the first call counts.
    pub fn set_spawner(&self, spawner: Spawner) {
        let _ = self.spawner.set(spawner);
    }

    fn spawn_detached(&self, task: Pin<Box<dyn Future<Output = ()> + Send>>) {
        if let Some(spawn) = self.spawner.get() {
            spawn(task);
        } else if let Some(rt) = &self.runtime {
            rt.spawn(task);
        } else {
            tokio::spawn(task);
        }
    }

    /// Writes this process's heartbeat (`tokens.instance_heartbeat_ms`), so its leases stay its
    /// own; with `purge`, also deletes the rows of instances dead for
    /// `tokens.instance_purge_after_secs`.
    pub async fn heartbeat(&self, purge: bool) -> Result<(), ServiceError> {
        let now = self.now_ms();
        self.store.heartbeat(&self.owner, now).await?;
        if purge {
            let n = self
                .store
                .purge_instances(now.saturating_sub(self.instance_purge_after_ms))
                .await?;
            if n > 0 {
                tracing::info!(instances = n, "purged the rows of long-dead instances");
            }
        }
        Ok(())
    }

    /// Graceful shutdown, after [`TokenKeeper::drain`]: writes pending uses and removes this
    /// process's instance row.
    pub async fn deregister(&self) -> Result<(), ServiceError> {
        self.flush_used().await?;
        self.store.remove_instance(&self.owner).await?;
        Ok(())
    }

    /// Waits until no detached refresh runs, at most `limit`. True if none is left.
    pub async fn drain(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let idle = self.in_flight.idle.notified();
                if self.in_flight.running.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    /// Detached refreshes running now.
    pub fn refreshes_in_flight(&self) -> usize {
        self.in_flight.running.load(Ordering::SeqCst)
    }

    /// A method call is using the install (kept in memory; written by the next background pass
    /// or at shutdown, at most once per install per 10 minutes).
    pub fn note_used(&self, install_id: &str) {
        let now = self.now_ms();
        let mut u = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        if u.written
            .get(install_id)
            .is_some_and(|w| now - w < USED_WRITE_GRANULARITY_MS)
        {
            return;
        }
        u.pending.insert(install_id.to_owned(), now);
    }

    /// Writes the uses noted since the last flush; returns how many installs changed.
    pub async fn flush_used(&self) -> Result<usize, ServiceError> {
        let batch: Vec<(String, i64)> = {
            let now = self.now_ms();
            let mut u = self.usage.lock().unwrap_or_else(|e| e.into_inner());
            let batch: Vec<_> = std::mem::take(&mut u.pending).into_iter().collect();
            if u.written.len() > 100_000 {
                u.written
                    .retain(|_, w| now - *w < USED_WRITE_GRANULARITY_MS);
            }
            for (id, at) in &batch {
                u.written.insert(id.clone(), *at);
            }
            batch
        };
        if batch.is_empty() {
            return Ok(0);
        }
        self.store.record_used(batch).await
    }

    /// The token expires within the refresh margin (or has expired).
    pub fn needs_refresh(&self, expires_at: Option<i64>, obtained_at: Option<i64>) -> bool {
        needs_refresh(expires_at, obtained_at, self.margin_max_ms, self.now_ms())
    }

    /// Records a failed attempt; consecutive failures on the same token version double the
    /// wait before the next attempt (from `refresh_backoff_initial_ms` up to `_max_ms`).
    fn record_failure(
        &self,
        install_id: &str,
        version: i64,
        unavailable: bool,
        message: String,
    ) -> Failure {
        let now = self.now_ms();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, f| f.retry_at > now);
        }
        let consecutive = map
            .get(install_id)
            .filter(|f| f.version == version)
            .map_or(1, |f| f.consecutive.saturating_add(1));
        let backoff = self
            .backoff_initial_ms
            .saturating_mul(1i64 << (consecutive - 1).min(16))
            .min(self.backoff_max_ms);
        let failure = Failure {
            seq: self.failure_seq.fetch_add(1, Ordering::SeqCst) + 1,
            retry_at: now.saturating_add(backoff),
            consecutive,
            version,
            unavailable,
            message,
        };
        map.insert(install_id.to_owned(), failure.clone());
        failure
    }

    /// Failed attempts in a row recorded on `version` of the install's tokens.
    fn consecutive_failures(&self, install_id: &str, version: i64) -> u32 {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(install_id)
            .filter(|f| f.version == version)
            .map_or(0, |f| f.consecutive)
    }

    fn clear_failure(&self, install_id: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(install_id);
    }

    /// A failed attempt on `seen_version` (or later) whose outcome still stands: it ended
    /// while the caller queued (after failure number `ticket`), or its backoff has not run out.
    fn failure_since(&self, install_id: &str, seen_version: i64, ticket: u64) -> Option<Failure> {
        let now = self.now_ms();
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(install_id)
            .filter(|f| f.version >= seen_version && (f.seq > ticket || now < f.retry_at))
            .cloned()
    }

    fn lock_for(&self, install_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, m| Arc::strong_count(m) > 1);
        }
        map.entry(install_id.to_owned()).or_default().clone()
    }

    /// Refreshes once for everyone who saw `seen_version` (or an older one). A row with newer
    /// tokens is handed to `prepare` while this process's flight for the install is still
    /// held, so callers queued behind it find the prepared result in the cache.
    ///
    /// The refresh runs detached (see [`TokenKeeper::set_spawner`]) holding the flight: a caller
    /// that goes away (client disconnect, server shutdown) does not abort it between the
    /// provider's answer and the commit, and the next caller queues behind it.
    pub async fn refresh<T, F, Fut>(
        self: &Arc<Self>,
        install_id: &str,
        seen_version: i64,
        prepare: F,
    ) -> Result<Refreshed<T>, ServiceError>
    where
        F: FnOnce(Install) -> Fut,
        Fut: Future<Output = Result<T, ServiceError>>,
    {
        let ticket = self.failure_seq.load(Ordering::SeqCst);
        let lock = self.lock_for(install_id);
        let flight = lock.lock_owned().await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let keeper = self.clone();
        let id = install_id.to_owned();
        let running = self.in_flight.enter();
        self.spawn_detached(Box::pin(async move {
            let _running = running;
            let outcome = keeper.refresh_in_flight(&id, seen_version, ticket).await;
            // The caller may be gone; the flight is then released here.
            let _ = tx.send((outcome, flight));
        }));
        let (outcome, _flight) = rx.await.map_err(|_| {
            ServiceError::internal("the token refresh task ended without an answer")
        })?;
        match outcome? {
            Ok(cached) => Ok(Refreshed::Cached(cached)),
            Err(row) => Ok(Refreshed::Row(prepare(row).await?)),
        }
    }

    /// [`TokenKeeper::refresh`] under the in-process flight: the cached install (Ok) or the
    /// current row (Err).
    async fn refresh_in_flight(
        &self,
        install_id: &str,
        seen_version: i64,
        ticket: u64,
    ) -> Result<Result<Arc<Prepared>, Install>, ServiceError> {
        // Someone in this process may have refreshed while we queued.
        let cached = self.cache.get_any(install_id);
        if let Some(p) = &cached {
            if p.token_version > seen_version {
                return Ok(Ok(p.clone()));
            }
        }
        // Or tried and failed while we queued, or so recently that its backoff still runs: share
        // that outcome (the still valid token, or the error) instead of asking the token
        // endpoint again.
        if let Some(f) = self.failure_since(install_id, seen_version, ticket) {
            let now = self.now_ms();
            if let Some(p) = cached.filter(|p| {
                p.token_version == f.version
                    && p.bearer.is_some()
                    && p.expires_at.is_some_and(|e| e > now + 1000)
            }) {
                return Ok(Ok(p));
            }
            return Err(f.error(now));
        }
        let wait_started = tokio::time::Instant::now();
        let deadline = wait_started + self.wait_timeout;
        let mut waited = false;
        loop {
            let now = self.now_ms();
            let (row, won) = self
                .store
                .read_and_lease(
                    install_id,
                    seen_version,
                    &self.owner,
                    now,
                    self.lease_ttl_ms,
                    now.saturating_sub(self.instance_stale_ms),
                )
                .await?;
            let Some(row) = row else {
                return Err(ServiceError::NotFound("install not found".into()));
            };
            if row.token_version > seen_version {
                if waited {
                    metrics::lease_wait(
                        LeaseWaitOutcome::RefreshedElsewhere,
                        wait_started.elapsed(),
                    );
                }
                metrics::token_refresh(RefreshOutcome::RefreshedElsewhere);
                self.cache.remove(install_id);
                return Ok(Err(row));
            }
            if row.status != InstallStatus::Authorized {
                self.cache.remove(install_id);
                return Err(not_authorized(&row));
            }
            if won {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                metrics::lease_wait(LeaseWaitOutcome::Timeout, wait_started.elapsed());
                return Err(ServiceError::RefreshInProgress {
                    retry_after_secs: 1,
                });
            }
            // One cheap row read per waiting process; short so other replicas see a refresh quickly.
            waited = true;
            let pause = rand::rng().random_range(10..40);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        let outcome = self.refresh_with_lease(install_id, seen_version).await;
        if let Err(e) = self.store.release_lease(install_id, &self.owner).await {
            tracing::warn!(install = %install_id, error = %e, "could not release the refresh lease; it expires by itself");
        }
        self.cache.remove(install_id);
        match outcome? {
            Outcome::Fresh(row) => Ok(Err(*row)),
            Outcome::Failed(e) => Err(e),
        }
    }

    async fn reread(&self, install_id: &str) -> Result<Install, ServiceError> {
        self.store
            .find(install_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound("install not found".into()))
    }

    async fn refresh_with_lease(
        &self,
        install_id: &str,
        seen_version: i64,
    ) -> Result<Outcome, ServiceError> {
        // Re-read under the lease: another replica may have refreshed between our read and our
        // winning the lease.
        let row = self.reread(install_id).await?;
        if row.token_version > seen_version {
            metrics::token_refresh(RefreshOutcome::RefreshedElsewhere);
            return Ok(Outcome::Fresh(Box::new(row)));
        }
        let result = match self.endpoint.request(&row).await {
            Ok(sealed) => Ok(sealed),
            Err(RequestError::NoRefreshToken) => {
                return self
                    .demote(&row, "the access token expired and the provider issued no refresh token; re-authorize with POST .../authorize")
                    .await
            }
            Err(RequestError::Install(e)) => return Err(e),
            Err(RequestError::AssertionRefused(e)) => {
                let latest = self.reread(&row.id).await?;
                if latest.token_version > row.token_version {
                    metrics::token_refresh(RefreshOutcome::RefreshedElsewhere);
                    return Ok(Outcome::Fresh(Box::new(latest)));
                }
                let code = if e.is_invalid_grant() {
                    "invalid_grant"
                } else {
                    "invalid_client"
                };
                let why = format!("the token endpoint refused the backend-services client assertion ({code}): the client's registered keys no longer match this setup's jwks_url (GET .../setup) or the clocks disagree; fix the registration, then create the install again");
                return self.demote(&row, &why).await;
            }
            Err(RequestError::Auth(e)) => Err(e),
        };
        let now = self.now_ms();
        match result {
            Ok(sealed) => {
                let rotated = sealed.refresh.is_some();
                let write = TokenWrite {
                    access_token: sealed.access,
                    // None keeps the stored refresh token (providers that do not rotate).
                    refresh_token: sealed.refresh,
                    expires_at: sealed.expires_at,
                    scopes: sealed.scopes.or(row.scopes.clone()),
                    context: sealed.context.or(row.context.clone()),
                    status: InstallStatus::Authorized,
                    last_error: None,
                    last_refresh_at: Some(now),
                    last_refresh_error: None,
                    now,
                };
                let lapse = sealed.refresh_expires_at;
                let committed = self
                    .store
                    .store_tokens(&row.id, row.token_version, write)
                    .await?;
                if committed && lapse.is_some() {
                    self.store
                        .set_refresh_expires_at(&row.id, row.token_version + 1, lapse)
                        .await?;
                }
                if !committed {
                    // Fenced out: a newer version exists (our lease must have lapsed).
                    tracing::warn!(install = %row.id, "refresh result fenced out by a newer token version");
                }
                self.clear_failure(&row.id);
                metrics::token_refresh(if committed {
                    RefreshOutcome::Refreshed
                } else {
                    RefreshOutcome::RefreshedElsewhere
                });
                tracing::info!(install = %row.id, rotated, "install tokens refreshed");
                Ok(Outcome::Fresh(Box::new(self.reread(&row.id).await?)))
            }
            Err(e) if e.is_invalid_grant() => {
                let latest = self.reread(&row.id).await?;
                if latest.token_version > row.token_version {
                    metrics::token_refresh(RefreshOutcome::RefreshedElsewhere);
                    return Ok(Outcome::Fresh(Box::new(latest)));
                }
                self.demote(&row, "the provider rejected the refresh token (invalid_grant: revoked, expired or already used); re-authorize with POST .../authorize").await
            }
            Err(e) => {
                let message = match &e {
                    AuthError::Transient {
                        status: Some(s), ..
                    } => {
                        format!("token endpoint unavailable (HTTP {s}); will retry")
                    }
                    AuthError::Transient { status: None, .. } => {
                        "token endpoint did not answer; will retry".to_owned()
                    }
                    other => format!("token refresh failed: {other}"),
                };
                tracing::warn!(install = %row.id, error = %message, "token refresh failed");
                metrics::token_refresh(RefreshOutcome::TransientError);
                let consecutive = self.consecutive_failures(&row.id, row.token_version) + 1;
                self.store
                    .refresh_failed(&row.id, &message, now, consecutive)
                    .await?;
                let failure =
                    self.record_failure(&row.id, row.token_version, e.is_transient(), message);
                // The current access token may still be valid (we refresh ahead of expiry).
                if row.access_token.is_some()
                    && row.token_expires_at.is_some_and(|x| x > now + 1000)
                {
                    return Ok(Outcome::Fresh(Box::new(self.reread(&row.id).await?)));
                }
                Ok(Outcome::Failed(failure.error(self.now_ms())))
            }
        }
    }

    async fn demote(&self, row: &Install, why: &str) -> Result<Outcome, ServiceError> {
        self.store
            .set_status(
                &row.id,
                InstallStatus::NeedsReauthorization,
                Some(why),
                self.now_ms(),
            )
            .await?;
        metrics::token_refresh(RefreshOutcome::InvalidGrant);
        tracing::warn!(install = %row.id, "install needs re-authorization");
        Ok(Outcome::Failed(ServiceError::InstallNotAuthorized {
            status: InstallStatus::NeedsReauthorization.as_str(),
            detail: why.to_string(),
        }))
    }

    /// One pass of the background refresher; returns how many installs it tried. First writes
    /// the uses noted since the last pass. Polite policy: authorized installs whose refresh
    /// token lapses within `tokens.refresh_lapse_margin_secs`, or that were neither refreshed
    /// nor used for `tokens.idle_check_interval_secs` (a revoked grant shows up). Eager policy:
    /// every install whose token expires within the horizon.
    pub async fn refresh_due_installs(self: &Arc<Self>) -> Result<usize, ServiceError> {
        if let Err(e) = self.flush_used().await {
            tracing::warn!(code = %e.code(), "could not record install use");
        }
        let now = self.now_ms();
        let due = match self.policy {
            BackgroundRefreshPolicy::Eager => {
                self.store.refresh_candidates(now, self.horizon_ms).await?
            }
            BackgroundRefreshPolicy::Polite => {
                self.store
                    .idle_refresh_candidates(
                        now.saturating_add(self.lapse_margin_ms),
                        now.saturating_sub(self.idle_check_ms),
                    )
                    .await?
            }
        };
        let n = due.len();
        for row in due {
            let refreshed = self
                .refresh(&row.id, row.token_version, |_| async { Ok(()) })
                .await;
            if let Err(e) = refreshed {
                tracing::warn!(install = %row.id, code = %e.code(), "background refresh failed");
            }
        }
        self.passes.send_modify(|passes| *passes += 1);
        Ok(n)
    }

    /// The number of completed [`TokenKeeper::refresh_due_installs`] passes, changing after each.
    pub fn background_passes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.passes.subscribe()
    }
}

pub(crate) fn not_authorized(row: &Install) -> ServiceError {
    not_authorized_parts(
        row.status,
        row.last_error.as_deref(),
        &row.account_id,
        &row.id,
    )
}

/// The 409 for an install that cannot be called, with what to do about it.
pub(crate) fn not_authorized_parts(
    status: InstallStatus,
    last_error: Option<&str>,
    account_id: &str,
    install_id: &str,
) -> ServiceError {
    let hint = match status {
        InstallStatus::PendingAuthorization => {
            "the install has not been authorized yet: open its authorize_url".to_owned()
        }
        _ => format!(
            "{}; re-authorize with POST /v1/accounts/{account_id}/installs/{install_id}/authorize",
            last_error.unwrap_or("the install is not authorized"),
        ),
    };
    ServiceError::InstallNotAuthorized {
        status: status.as_str(),
        detail: hint,
    }
}
