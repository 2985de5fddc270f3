//! Token lifecycle. A refresh happens once per install however many calls need it: callers in
//! this process queue on a per-install async mutex, and processes coordinate through a lease on
//! the install row (conditional UPDATE; no transaction is held across the upstream call). The
//! winner re-reads the tokens (another replica may have refreshed), calls the token endpoint,
//! and commits the result fenced by `token_version` BEFORE anyone uses the new access token, so
//! a rotated refresh token is never lost to a later write and never sent twice.

use crate::methods::Prepared;
use crate::{ServiceError, Services};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard_auth::{AuthError, TokenResponse};
use switchboard_connector::AuthDef;
use switchboard_core::{now_ms, ErrorCode, InstallStatus};
use switchboard_crypto::KeyRing;
use switchboard_db::repo::{installs, lease};
use switchboard_db::{Install, TokenWrite};

pub(crate) struct SealedTokens {
    pub access: Vec<u8>,
    pub refresh: Option<Vec<u8>>,
    pub expires_at: Option<i64>,
    pub scopes: Option<String>,
    pub context: Option<String>,
}

pub(crate) fn token_aad(install_id: &str, which: &str) -> String {
    format!("install:{install_id}:{which}")
}

pub(crate) fn seal_tokens(crypto: &KeyRing, install_id: &str, t: &TokenResponse) -> SealedTokens {
    let access = crypto.encrypt(
        t.access_token.expose_secret().as_bytes(),
        token_aad(install_id, "access_token").as_bytes(),
    );
    let refresh = t.refresh_token.as_ref().map(|r| {
        crypto.encrypt(
            r.expose_secret().as_bytes(),
            token_aad(install_id, "refresh_token").as_bytes(),
        )
    });
    let context = serde_json::to_value(&t.context)
        .ok()
        .filter(|v| {
            v.as_object()
                .is_some_and(|o| o.values().any(|x| !x.is_null()))
        })
        .map(|v| v.to_string());
    SealedTokens {
        access,
        refresh,
        expires_at: t
            .expires_in
            .map(|s| now_ms() + (s.min(10 * 365 * 86_400) as i64) * 1000),
        scopes: t.scope.clone(),
        context,
    }
}

pub(crate) struct OpenTokens {
    pub access: Option<SecretString>,
    pub refresh: Option<SecretString>,
}

pub(crate) fn open_tokens(crypto: &KeyRing, row: &Install) -> Result<OpenTokens, ServiceError> {
    let open =
        |blob: &Option<Vec<u8>>, which: &str| -> Result<Option<SecretString>, ServiceError> {
            match blob {
                Some(b) => {
                    let plain = crypto.decrypt(b, token_aad(&row.id, which).as_bytes())?;
                    let s = String::from_utf8(plain)
                        .map_err(|_| ServiceError::internal("stored token is not UTF-8"))?;
                    Ok(Some(SecretString::from(s)))
                }
                None => Ok(None),
            }
        };
    Ok(OpenTokens {
        access: open(&row.access_token, "access_token")?,
        refresh: open(&row.refresh_token, "refresh_token")?,
    })
}

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

pub(crate) struct TokenManager {
    /// Identifies this process as a lease owner; new on every start.
    owner: String,
    lease_ttl_ms: i64,
    wait_timeout: Duration,
    pub margin_max_ms: i64,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The last failed refresh attempt per install, shared with the callers that queued while it
    /// ran and with every caller until its backoff ends: a token endpoint that is down is asked
    /// once per flight and then with exponential backoff, not once per call.
    failures: Mutex<HashMap<String, Failure>>,
    backoff_initial: Duration,
    backoff_max: Duration,
}

/// A failed refresh attempt (transient or unusable answer; `invalid_grant` demotes instead).
#[derive(Clone)]
struct Failure {
    at: Instant,
    /// No new attempt before this (exponential backoff over consecutive failures).
    retry_at: Instant,
    consecutive: u32,
    version: i64,
    unavailable: bool,
    message: String,
}

impl Failure {
    fn error(&self) -> ServiceError {
        if self.unavailable {
            let wait = self.retry_at.saturating_duration_since(Instant::now());
            ServiceError::Upstream {
                code: ErrorCode::UpstreamUnavailable,
                detail: "the EHR's token endpoint is unavailable; the install stays authorized, retry later".into(),
                retry_after_secs: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
                issues: vec![],
            }
        } else {
            ServiceError::TokenExchangeFailed(self.message.clone())
        }
    }
}

impl TokenManager {
    pub fn new(cfg: &switchboard_config::TokenSettings) -> Self {
        Self {
            owner: format!("proc_{}", switchboard_core::random_token(12)),
            lease_ttl_ms: cfg.lease_ttl_ms as i64,
            wait_timeout: Duration::from_millis(cfg.wait_timeout_ms),
            margin_max_ms: (cfg.refresh_margin_max_secs * 1000) as i64,
            locks: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            backoff_initial: Duration::from_millis(cfg.refresh_backoff_initial_ms),
            backoff_max: Duration::from_millis(cfg.refresh_backoff_max_ms),
        }
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
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, f| f.retry_at > Instant::now());
        }
        let consecutive = map
            .get(install_id)
            .filter(|f| f.version == version)
            .map_or(1, |f| f.consecutive.saturating_add(1));
        let backoff = self
            .backoff_initial
            .saturating_mul(1u32 << (consecutive - 1).min(16))
            .min(self.backoff_max);
        let at = Instant::now();
        let failure = Failure {
            at,
            retry_at: at + backoff,
            consecutive,
            version,
            unavailable,
            message,
        };
        map.insert(install_id.to_owned(), failure.clone());
        failure
    }

    fn clear_failure(&self, install_id: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(install_id);
    }

    /// A failed attempt on `seen_version` (or later) whose outcome still stands: it ended
    /// while the caller queued (`since`), or its backoff has not run out.
    fn failure_since(
        &self,
        install_id: &str,
        seen_version: i64,
        since: Instant,
    ) -> Option<Failure> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(install_id)
            .filter(|f| f.version >= seen_version && (f.at >= since || Instant::now() < f.retry_at))
            .cloned()
    }

    fn lock_for(&self, install_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, m| Arc::strong_count(m) > 1);
        }
        map.entry(install_id.to_owned()).or_default().clone()
    }
}

enum Outcome {
    Fresh(Box<Install>),
    Failed(ServiceError),
}

impl Services {
    /// A usable access token for a method call: the cached one while it is fresh, otherwise
    /// the result of the (single) refresh.
    pub(crate) async fn ensure_token(
        &self,
        p: Arc<Prepared>,
    ) -> Result<Arc<Prepared>, ServiceError> {
        let now = now_ms();
        if p.bearer.is_some()
            && !needs_refresh(
                p.expires_at,
                p.obtained_at,
                self.inner.tokens.margin_max_ms,
                now,
            )
        {
            return Ok(p);
        }
        if !p.can_refresh() {
            if p.bearer.is_some() && p.expires_at.is_none_or(|e| e > now) {
                return Ok(p);
            }
            return Err(ServiceError::InstallNotAuthorized {
                status: InstallStatus::NeedsReauthorization.as_str(),
                detail: "the access token expired and this install has no refresh token; re-authorize with POST .../authorize".into(),
            });
        }
        self.refresh_install(&p.id, p.token_version).await
    }

    /// Refreshes once for everyone who saw `seen_version` (or an older one).
    pub(crate) async fn refresh_install(
        &self,
        install_id: &str,
        seen_version: i64,
    ) -> Result<Arc<Prepared>, ServiceError> {
        let queued_at = Instant::now();
        let lock = self.inner.tokens.lock_for(install_id);
        let _guard = lock.lock().await;
        // Someone in this process may have refreshed while we queued.
        let cached = self.inner.installs.get_any(install_id);
        if let Some(p) = &cached {
            if p.token_version > seen_version {
                return Ok(p.clone());
            }
        }
        // Or tried and failed while we queued, or so recently that its backoff still runs: share
        // that outcome (the still valid token, or the error) instead of asking the token
        // endpoint again.
        if let Some(f) = self
            .inner
            .tokens
            .failure_since(install_id, seen_version, queued_at)
        {
            if let Some(p) = cached.filter(|p| {
                p.token_version == f.version
                    && p.bearer.is_some()
                    && p.expires_at.is_some_and(|e| e > now_ms() + 1000)
            }) {
                return Ok(p);
            }
            return Err(f.error());
        }
        let deadline = Instant::now() + self.inner.tokens.wait_timeout;
        let owner = self.inner.tokens.owner.clone();
        let ttl = self.inner.tokens.lease_ttl_ms;
        loop {
            let id = install_id.to_owned();
            let o = owner.clone();
            let (row, won) = self
                .inner
                .db
                .run(move |conn| {
                    let row = installs::find_by_id(conn, &id)?;
                    let Some(row) = row else {
                        return Ok((None, false));
                    };
                    if row.token_version > seen_version {
                        return Ok((Some(row), false));
                    }
                    let won = lease::try_acquire_lease(conn, &id, &o, now_ms(), ttl)?;
                    Ok((Some(row), won))
                })
                .await?;
            let Some(row) = row else {
                return Err(ServiceError::NotFound("install not found".into()));
            };
            if row.token_version > seen_version {
                self.inner.installs.remove(install_id);
                return self.prepare_row(row).await;
            }
            if row.status != InstallStatus::Authorized.as_str() {
                self.inner.installs.remove(install_id);
                return Err(not_authorized(&row));
            }
            if won {
                break;
            }
            if Instant::now() >= deadline {
                return Err(ServiceError::Unavailable(
                    "a token refresh for this install is in progress in another process; retry shortly".into(),
                ));
            }
            // One cheap row read per waiting process; short so other replicas see a refresh quickly.
            let pause = rand::rng().random_range(10..40);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        let outcome = self.refresh_with_lease(install_id, seen_version).await;
        let (id, o) = (install_id.to_owned(), owner);
        if let Err(e) = self
            .inner
            .db
            .run(move |conn| lease::release_lease(conn, &id, &o))
            .await
        {
            tracing::warn!(install = %install_id, error = %e, "could not release the refresh lease; it expires by itself");
        }
        self.inner.installs.remove(install_id);
        match outcome? {
            Outcome::Fresh(row) => self.prepare_row(*row).await,
            Outcome::Failed(e) => Err(e),
        }
    }

    async fn reread(&self, install_id: &str) -> Result<Install, ServiceError> {
        let id = install_id.to_owned();
        self.inner
            .db
            .run(move |conn| installs::find_by_id(conn, &id))
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
            return Ok(Outcome::Fresh(Box::new(row)));
        }
        let resolved = self.resolve_row(&row).await?;
        let client = resolved
            .token_client(&self.inner.redirect_uri)?
            .ok_or_else(|| {
                ServiceError::internal("refresh requested for a static bearer install")
            })?;
        let http = self.inner.outbound.client();
        let stored = open_tokens(&self.inner.crypto, &row)?;
        let result = match &resolved.auth {
            AuthDef::Oauth2AuthorizationCode(_) => match &stored.refresh {
                Some(rt) => client.refresh(http, rt).await,
                None => {
                    return self
                        .demote(&row, "the access token expired and the provider issued no refresh token; re-authorize with POST .../authorize")
                        .await
                }
            },
            AuthDef::Oauth2ClientCredentials(c) => {
                let scopes = resolved.render(&c.scopes, None)?;
                client.client_credentials(http, &scopes).await
            }
            AuthDef::StaticBearer(_) => {
                return Err(ServiceError::internal("static bearer tokens are not refreshed"))
            }
        };
        let now = now_ms();
        match result {
            Ok(tokens) => {
                let sealed = seal_tokens(&self.inner.crypto, &row.id, &tokens);
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
                let (id, version) = (row.id.clone(), row.token_version);
                let committed = self
                    .inner
                    .db
                    .run(move |conn| installs::store_tokens(conn, &id, version, &write))
                    .await?;
                if !committed {
                    // Fenced out: a newer version exists (our lease must have lapsed).
                    tracing::warn!(install = %row.id, "refresh result fenced out by a newer token version");
                }
                self.inner.tokens.clear_failure(&row.id);
                tracing::info!(install = %row.id, rotated = tokens.refresh_token.is_some(), "install tokens refreshed");
                Ok(Outcome::Fresh(Box::new(self.reread(&row.id).await?)))
            }
            Err(e) if e.is_invalid_grant() => {
                let latest = self.reread(&row.id).await?;
                if latest.token_version > row.token_version {
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
                let (id, m) = (row.id.clone(), message.clone());
                self.inner
                    .db
                    .run(move |conn| installs::set_refresh_error(conn, &id, &m, now))
                    .await?;
                let failure = self.inner.tokens.record_failure(
                    &row.id,
                    row.token_version,
                    e.is_transient(),
                    message,
                );
                // The current access token may still be valid (we refresh ahead of expiry).
                if row.access_token.is_some()
                    && row.token_expires_at.is_some_and(|x| x > now + 1000)
                {
                    return Ok(Outcome::Fresh(Box::new(self.reread(&row.id).await?)));
                }
                Ok(Outcome::Failed(failure.error()))
            }
        }
    }

    async fn demote(&self, row: &Install, why: &str) -> Result<Outcome, ServiceError> {
        let (id, msg, now) = (row.id.clone(), why.to_owned(), now_ms());
        self.inner
            .db
            .run(move |conn| {
                installs::set_status(
                    conn,
                    &id,
                    InstallStatus::NeedsReauthorization,
                    Some(&msg),
                    now,
                )
            })
            .await?;
        tracing::warn!(install = %row.id, "install needs re-authorization");
        Ok(Outcome::Failed(ServiceError::InstallNotAuthorized {
            status: InstallStatus::NeedsReauthorization.as_str(),
            detail: why.to_string(),
        }))
    }

    /// One pass of the background refresher: refreshes authorized installs whose token expires
    /// within the horizon, so idle installs keep a live refresh token. Returns how many it tried.
    pub async fn refresh_due_installs(&self) -> Result<usize, ServiceError> {
        let horizon = (self.inner.settings.tokens.background_refresh_horizon_secs * 1000) as i64;
        let now = now_ms();
        let due = self
            .inner
            .db
            .run(move |conn| installs::list_refresh_candidates(conn, now, horizon))
            .await?;
        let n = due.len();
        for row in due {
            if let Err(e) = self.refresh_install(&row.id, row.token_version).await {
                tracing::warn!(install = %row.id, code = %e.code(), "background refresh failed");
            }
        }
        Ok(n)
    }
}

pub(crate) fn not_authorized(row: &Install) -> ServiceError {
    not_authorized_parts(
        InstallStatus::parse(&row.status).unwrap_or(InstallStatus::Error),
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

#[cfg(test)]
mod tests {
    use super::needs_refresh;

    #[test]
    fn margin_is_min_of_cap_and_ten_percent() {
        let cap = 60_000;
        // 1 h token obtained at 0: margin 60 s.
        assert!(!needs_refresh(Some(3_600_000), Some(0), cap, 3_539_000));
        assert!(needs_refresh(Some(3_600_000), Some(0), cap, 3_540_000));
        // 5 min token: margin 30 s (10%).
        assert!(!needs_refresh(Some(300_000), Some(0), cap, 269_000));
        assert!(needs_refresh(Some(300_000), Some(0), cap, 270_000));
        // No expiry: never refreshed ahead.
        assert!(!needs_refresh(None, Some(0), cap, i64::MAX));
    }
}
