//! The token keeper on a manual clock, an in-memory store (the lease and the fenced write as the
//! database does them) and a scripted token endpoint. Waiting for another process's lease runs
//! on tokio's paused timer: no test sleeps on the wall clock.

use super::*;
use crate::cache::InstallCache;
use crate::clock::ManualClock;
use crate::sealing::SealedTokens;
use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use switchboard_config::TokenSettings;

const ID: &str = "ins_1";
const T0: i64 = 1_700_000_000_000;
const LIFETIME_MS: i64 = 3_600_000;

fn settings() -> TokenSettings {
    TokenSettings {
        refresh_margin_max_secs: 60,
        lease_ttl_ms: 30_000,
        wait_timeout_ms: 10_000,
        refresh_backoff_initial_ms: 1_000,
        refresh_backoff_max_ms: 3_000,
        background_refresh_interval_secs: 0,
        background_refresh_horizon_secs: 300,
        install_cache_ttl_ms: 60_000,
        instance_heartbeat_ms: 1_000,
        instance_stale_ms: 3_000,
        instance_purge_after_secs: 86_400,
        shutdown_refresh_wait_ms: 30_000,
        background_refresh_policy: BackgroundRefreshPolicy::Polite,
        idle_check_interval_secs: 86_400,
        refresh_lapse_margin_secs: 3_600,
    }
}

/// An authorized authorization-code install at token version 0 whose token expired.
fn expired_row() -> Install {
    Install {
        id: ID.into(),
        tenant_id: "ten_1".into(),
        account_id: "acme".into(),
        connector_id: "canvas".into(),
        auth_type: "oauth2_authorization_code".into(),
        status: InstallStatus::Authorized,
        settings: "{}".into(),
        return_url: None,
        access_token: Some(b"at-0".to_vec()),
        refresh_token: Some(b"rt-0".to_vec()),
        token_expires_at: Some(T0 - 1_000),
        scopes: None,
        context: None,
        token_version: 0,
        lease_owner: None,
        lease_until: None,
        last_error: None,
        last_refresh_at: Some(T0 - LIFETIME_MS - 1_000),
        last_refresh_error: None,
        created_at: 0,
        updated_at: 0,
    }
}

/// The install table, with the lease and fenced write of `switchboard_db::repo`, and the
/// `instances` heartbeats (`.1`), the install uses and refresh-token lapses (`.2`).
#[derive(Clone, Default)]
struct FakeStore(
    Arc<Mutex<HashMap<String, Install>>>,
    Arc<Mutex<HashMap<String, i64>>>,
    Arc<Mutex<HashMap<String, Usage>>>,
);

/// `last_used_at` and `refresh_expires_at` of a fake install.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
struct Usage {
    last_used_at: Option<i64>,
    refresh_expires_at: Option<i64>,
}

impl FakeStore {
    fn with(row: Install) -> Self {
        let s = Self::default();
        s.0.lock().unwrap().insert(row.id.clone(), row);
        s
    }
    fn row(&self) -> Install {
        self.0.lock().unwrap()[ID].clone()
    }
    fn edit(&self, f: impl FnOnce(&mut Install)) {
        f(self.0.lock().unwrap().get_mut(ID).unwrap())
    }
    fn beat(&self, instance: &str, at: i64) {
        self.1.lock().unwrap().insert(instance.to_owned(), at);
    }
    fn usage(&self, id: &str) -> Usage {
        self.2.lock().unwrap().get(id).copied().unwrap_or_default()
    }
}

impl TokenStore for FakeStore {
    async fn find(&self, install_id: &str) -> Result<Option<Install>, ServiceError> {
        Ok(self.0.lock().unwrap().get(install_id).cloned())
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
        let beats = self.1.lock().unwrap().clone();
        let mut rows = self.0.lock().unwrap();
        let Some(row) = rows.get_mut(install_id) else {
            return Ok((None, false));
        };
        let read = row.clone();
        if row.token_version > seen_version {
            return Ok((Some(read), false));
        }
        let holder_beat = row.lease_owner.as_ref().and_then(|o| beats.get(o).copied());
        let free = row.lease_until.is_none()
            || row.lease_owner.as_deref() == Some(owner)
            || holder_beat.is_some_and(|b| b <= stale_before)
            || (row.lease_until.is_some_and(|u| u <= now) && holder_beat.is_none());
        if free {
            row.lease_owner = Some(owner.to_owned());
            row.lease_until = Some(now + ttl_ms);
        }
        Ok((Some(read), free))
    }

    async fn release_lease(&self, install_id: &str, owner: &str) -> Result<bool, ServiceError> {
        let mut rows = self.0.lock().unwrap();
        match rows.get_mut(install_id) {
            Some(r) if r.lease_owner.as_deref() == Some(owner) => {
                r.lease_owner = None;
                r.lease_until = None;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn store_tokens(
        &self,
        install_id: &str,
        version: i64,
        w: TokenWrite,
    ) -> Result<bool, ServiceError> {
        let mut rows = self.0.lock().unwrap();
        match rows.get_mut(install_id) {
            Some(r) if r.token_version == version => {
                r.access_token = Some(w.access_token);
                if w.refresh_token.is_some() {
                    r.refresh_token = w.refresh_token;
                }
                r.token_expires_at = w.expires_at;
                r.scopes = w.scopes;
                r.context = w.context;
                r.status = w.status;
                r.last_error = w.last_error;
                r.last_refresh_at = w.last_refresh_at;
                r.last_refresh_error = w.last_refresh_error;
                r.updated_at = w.now;
                r.token_version += 1;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn set_refresh_error(
        &self,
        install_id: &str,
        message: &str,
        now: i64,
    ) -> Result<(), ServiceError> {
        if let Some(r) = self.0.lock().unwrap().get_mut(install_id) {
            r.last_refresh_error = Some(message.to_owned());
            r.last_refresh_at = Some(now);
        }
        Ok(())
    }

    async fn set_status(
        &self,
        install_id: &str,
        status: InstallStatus,
        last_error: Option<&str>,
        _now: i64,
    ) -> Result<(), ServiceError> {
        if let Some(r) = self.0.lock().unwrap().get_mut(install_id) {
            r.status = status;
            r.last_error = last_error.map(str::to_owned);
        }
        Ok(())
    }

    async fn refresh_candidates(
        &self,
        now: i64,
        horizon_ms: i64,
    ) -> Result<Vec<Install>, ServiceError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .values()
            .filter(|r| {
                r.status == "authorized"
                    && r.refresh_token.is_some()
                    && r.token_expires_at.is_some_and(|e| e < now + horizon_ms)
            })
            .cloned()
            .collect())
    }

    async fn idle_refresh_candidates(
        &self,
        lapse_before: i64,
        check_before: i64,
    ) -> Result<Vec<Install>, ServiceError> {
        let usage = self.2.lock().unwrap().clone();
        Ok(self
            .0
            .lock()
            .unwrap()
            .values()
            .filter(|r| {
                let u = usage.get(&r.id).copied().unwrap_or_default();
                let checked = r.last_refresh_at.unwrap_or(r.updated_at);
                r.status == "authorized"
                    && r.refresh_token.is_some()
                    && (u.refresh_expires_at.is_some_and(|l| l <= lapse_before)
                        || (checked <= check_before
                            && u.last_used_at.is_none_or(|x| x <= check_before)))
            })
            .cloned()
            .collect())
    }

    async fn set_refresh_expires_at(
        &self,
        install_id: &str,
        version: i64,
        at: Option<i64>,
    ) -> Result<(), ServiceError> {
        if self
            .0
            .lock()
            .unwrap()
            .get(install_id)
            .is_some_and(|r| r.token_version == version)
        {
            self.2
                .lock()
                .unwrap()
                .entry(install_id.to_owned())
                .or_default()
                .refresh_expires_at = at;
        }
        Ok(())
    }

    async fn record_used(&self, used: Vec<(String, i64)>) -> Result<usize, ServiceError> {
        let mut usage = self.2.lock().unwrap();
        for (id, at) in &used {
            let u = usage.entry(id.clone()).or_default();
            u.last_used_at = Some(u.last_used_at.map_or(*at, |x| x.max(*at)));
        }
        Ok(used.len())
    }

    async fn heartbeat(&self, instance: &str, now: i64) -> Result<(), ServiceError> {
        self.beat(instance, now);
        Ok(())
    }

    async fn remove_instance(&self, instance: &str) -> Result<(), ServiceError> {
        self.1.lock().unwrap().remove(instance);
        Ok(())
    }

    async fn purge_instances(&self, before: i64) -> Result<usize, ServiceError> {
        let mut beats = self.1.lock().unwrap();
        let n = beats.len();
        beats.retain(|_, b| *b >= before);
        Ok(n - beats.len())
    }
}

#[derive(Clone, Copy)]
enum Reply {
    Tokens,
    Transient,
    InvalidGrant,
    /// A backend-services assertion refused with `invalid_client`.
    AssertionRefused,
}

/// A token endpoint answering from a script (then `default`), taking `delay` (tokio time) per
/// request, optionally running `during` while a request is in flight.
struct FakeEndpoint {
    clock: ManualClock,
    calls: AtomicUsize,
    script: Mutex<VecDeque<Reply>>,
    default: Reply,
    delay: Duration,
    during: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// The connector's `refresh_token_idle_secs`, in ms.
    refresh_idle_ms: Option<i64>,
}

impl FakeEndpoint {
    fn new(clock: &ManualClock, default: Reply) -> Arc<Self> {
        Arc::new(Self {
            clock: clock.clone(),
            calls: AtomicUsize::new(0),
            script: Mutex::new(VecDeque::new()),
            default,
            delay: Duration::ZERO,
            during: Mutex::new(None),
            refresh_idle_ms: None,
        })
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl TokenEndpoint for Arc<FakeEndpoint> {
    async fn request(&self, _row: &Install) -> Result<SealedTokens, RequestError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let hook = self.during.lock().unwrap().take();
        if let Some(f) = hook {
            f();
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let reply = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(self.default);
        match reply {
            Reply::Tokens => Ok(SealedTokens {
                access: format!("at-{n}").into_bytes(),
                refresh: Some(format!("rt-{n}").into_bytes()),
                expires_at: Some(self.clock.now_ms() + LIFETIME_MS),
                scopes: None,
                context: None,
                refresh_expires_at: self.refresh_idle_ms.map(|ms| self.clock.now_ms() + ms),
            }),
            Reply::Transient => Err(RequestError::Auth(AuthError::Transient {
                status: Some(503),
                reason: "HTTP 503".into(),
            })),
            Reply::InvalidGrant => Err(RequestError::Auth(AuthError::InvalidGrant {
                description: None,
            })),
            Reply::AssertionRefused => {
                Err(RequestError::AssertionRefused(AuthError::InvalidClient {
                    description: None,
                }))
            }
        }
    }
}

type TestKeeper = TokenKeeper<FakeStore, Arc<FakeEndpoint>>;

fn keeper_with(
    cfg: &TokenSettings,
    store: &FakeStore,
    endpoint: &Arc<FakeEndpoint>,
    clock: &ManualClock,
) -> Arc<TestKeeper> {
    Arc::new(TokenKeeper::new(
        cfg,
        store.clone(),
        endpoint.clone(),
        Arc::new(clock.clone()),
        Arc::new(InstallCache::new(cfg.install_cache_ttl_ms)),
    ))
}

fn keeper(store: &FakeStore, endpoint: &Arc<FakeEndpoint>, clock: &ManualClock) -> Arc<TestKeeper> {
    keeper_with(&settings(), store, endpoint, clock)
}

/// A refresh whose newer row is returned as it is.
async fn refresh(
    k: &Arc<TestKeeper>,
    seen_version: i64,
) -> Result<Refreshed<Install>, ServiceError> {
    k.refresh(ID, seen_version, |row| async move { Ok(row) })
        .await
}

fn row_of(r: Result<Refreshed<Install>, ServiceError>) -> Install {
    match r {
        Ok(Refreshed::Row(row)) => row,
        Ok(Refreshed::Cached(_)) => panic!("expected a row, got the cached install"),
        Err(e) => panic!("expected a row, got {e:?}"),
    }
}

fn err_of(r: Result<Refreshed<Install>, ServiceError>) -> ServiceError {
    match r {
        Err(e) => e,
        Ok(_) => panic!("expected an error"),
    }
}

fn retry_after(e: &ServiceError) -> Option<u64> {
    match e {
        ServiceError::Upstream {
            code: ErrorCode::UpstreamUnavailable,
            retry_after_secs,
            ..
        } => *retry_after_secs,
        other => panic!("expected upstream_unavailable, got {other:?}"),
    }
}

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

#[tokio::test]
async fn the_clock_decides_when_a_token_is_due() {
    let clock = ManualClock::new(T0);
    let k = keeper(
        &FakeStore::default(),
        &FakeEndpoint::new(&clock, Reply::Tokens),
        &clock,
    );
    // A 1 h token obtained at T0: due 60 s before it expires.
    let (exp, got) = (Some(T0 + LIFETIME_MS), Some(T0));
    assert!(!k.needs_refresh(exp, got));
    clock.advance(Duration::from_millis((LIFETIME_MS - 60_001) as u64));
    assert!(!k.needs_refresh(exp, got));
    clock.advance(Duration::from_millis(1));
    assert!(k.needs_refresh(exp, got));
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_share_one_refresh() {
    let clock = ManualClock::new(T0);
    let store = FakeStore::with(expired_row());
    let endpoint = Arc::new(FakeEndpoint {
        delay: Duration::from_millis(500),
        ..Arc::into_inner(FakeEndpoint::new(&clock, Reply::Tokens)).unwrap()
    });
    let k = keeper(&store, &endpoint, &clock);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let k = k.clone();
        tasks.spawn(async move { row_of(refresh(&k, 0).await) });
    }
    while let Some(row) = tasks.join_next().await {
        let row = row.unwrap();
        assert_eq!(row.token_version, 1);
        assert_eq!(row.access_token.as_deref(), Some(&b"at-1"[..]));
    }
    assert_eq!(endpoint.calls(), 1, "one request for twenty callers");
    let row = store.row();
    assert_eq!(row.token_version, 1);
    assert_eq!(row.refresh_token.as_deref(), Some(&b"rt-1"[..]));
    assert_eq!(row.last_refresh_at, Some(T0));
    assert_eq!(row.token_expires_at, Some(T0 + LIFETIME_MS));
    assert_eq!((row.lease_owner, row.lease_until), (None, None));
}

#[tokio::test(start_paused = true)]
async fn a_failure_is_shared_with_the_callers_queued_behind_it() {
    let clock = ManualClock::new(T0);
    let store = FakeStore::with(expired_row());
    let endpoint = Arc::new(FakeEndpoint {
        delay: Duration::from_millis(500),
        ..Arc::into_inner(FakeEndpoint::new(&clock, Reply::Transient)).unwrap()
    });
    // No backoff: only "it failed while I queued" keeps the others from asking again.
    let cfg = TokenSettings {
        refresh_backoff_initial_ms: 0,
        ..settings()
    };
    let k = keeper_with(&cfg, &store, &endpoint, &clock);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let k = k.clone();
        tasks.spawn(async move { err_of(refresh(&k, 0).await) });
    }
    while let Some(e) = tasks.join_next().await {
        assert_eq!(retry_after(&e.unwrap()), Some(1));
    }
    assert_eq!(endpoint.calls(), 1);
    // A caller arriving after that flight (and with no backoff) asks again.
    let e = err_of(refresh(&k, 0).await);
    assert_eq!(retry_after(&e), Some(1));
    assert_eq!(endpoint.calls(), 2);
}

/// The prepared form of `row` as the method service builds it (a Canvas install).
fn prepared(row: &Install) -> Arc<Prepared> {
    Arc::new(Prepared {
        tenant_id: row.tenant_id.clone(),
        account_id: row.account_id.clone(),
        auth_kind: switchboard_connector::AuthKind::Oauth2AuthorizationCode,
        bearer: Some(secrecy::SecretString::from("at-0")),
        expires_at: row.token_expires_at,
        obtained_at: row.last_refresh_at,
        token_version: row.token_version,
        has_refresh_token: row.refresh_token.is_some(),
        ..crate::cache::tests::prepared(&row.id)
    })
}

#[tokio::test(start_paused = true)]
async fn a_failure_inside_the_margin_leaves_everyone_the_valid_token() {
    let clock = ManualClock::new(T0);
    // 30 s left of a 1 h token: due for refresh, still usable.
    let store = FakeStore::with(Install {
        token_expires_at: Some(T0 + 30_000),
        last_refresh_at: Some(T0 + 30_000 - LIFETIME_MS),
        ..expired_row()
    });
    let endpoint = Arc::new(FakeEndpoint {
        delay: Duration::from_millis(500),
        ..Arc::into_inner(FakeEndpoint::new(&clock, Reply::Transient)).unwrap()
    });
    let cache = Arc::new(InstallCache::new(60_000));
    let k = Arc::new(TokenKeeper::new(
        &settings(),
        store.clone(),
        endpoint.clone(),
        Arc::new(clock.clone()),
        cache.clone(),
    ));
    assert!(k.needs_refresh(Some(T0 + 30_000), Some(T0 + 30_000 - LIFETIME_MS)));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (k, cache) = (k.clone(), cache.clone());
        tasks.spawn(async move {
            let r = k
                .refresh(ID, 0, |row| async move {
                    // Preparing reads the database (resolve_row) before it caches.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let p = prepared(&row);
                    cache.put(p.clone());
                    Ok(p)
                })
                .await;
            match r {
                Ok(Refreshed::Cached(p) | Refreshed::Row(p)) => p,
                Err(e) => panic!("the valid token should be shared, got {e:?}"),
            }
        });
    }
    while let Some(p) = tasks.join_next().await {
        let p = p.unwrap();
        assert_eq!((p.token_version, p.expires_at), (0, Some(T0 + 30_000)));
    }
    assert_eq!(endpoint.calls(), 1, "one attempt for ten callers");
    let row = store.row();
    assert_eq!(row.status, "authorized");
    assert!(row.last_refresh_error.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_live_lease_elsewhere_is_waited_for_and_its_tokens_used() {
    let clock = ManualClock::new(T0);
    let store = FakeStore::with(Install {
        lease_owner: Some("proc_other".into()),
        lease_until: Some(T0 + 30_000),
        ..expired_row()
    });
    let endpoint = FakeEndpoint::new(&clock, Reply::Tokens);
    let k = keeper(&store, &endpoint, &clock);
    let waiting = tokio::spawn({
        let k = k.clone();
        async move { row_of(refresh(&k, 0).await) }
    });
    // The other process finishes its refresh a (tokio) second later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "waits while the lease is held");
    store.edit(|r| {
        r.access_token = Some(b"at-other".to_vec());
        r.token_version = 1;
        r.lease_owner = None;
        r.lease_until = None;
    });
    let row = waiting.await.unwrap();
    assert_eq!(row.token_version, 1);
    assert_eq!(row.access_token.as_deref(), Some(&b"at-other"[..]));
    assert_eq!(endpoint.calls(), 0, "no second refresh");
}

#[tokio::test(start_paused = true)]
async fn a_lease_held_past_the_wait_timeout_is_503() {
    let clock = ManualClock::new(T0);
    let store = FakeStore::with(Install {
        lease_owner: Some("proc_other".into()),
        lease_until: Some(T0 + 30_000),
        ..expired_row()
    });
    let endpoint = FakeEndpoint::new(&clock, Reply::Tokens);
    let k = keeper(&store, &endpoint, &clock);
    let started = tokio::time::Instant::now();
    let e = err_of(refresh(&k, 0).await);
    assert_eq!(e.code(), ErrorCode::ServiceUnavailable, "{e:?}");
    assert!(started.elapsed() >= Duration::from_millis(10_000));
    assert_eq!(endpoint.calls(), 0);
    assert_eq!(store.row().lease_owner.as_deref(), Some("proc_other"));
}

#[tokio::test]
async fn a_lapsed_lease_of_a_dead_process_is_taken_over() {
    let clock = ManualClock::new(T0);
    let store = FakeStore::with(Install {
        lease_owner: Some("proc_dead".into()),
        lease_until: Some(T0 + 5_000),
        ..expired_row()
    });
    let endpoint = FakeEndpoint::new(&clock, Reply::Tokens);
    let k = keeper(&store, &endpoint, &clock);
    clock.advance(Duration::from_millis(5_000));
    let row = row_of(refresh(&k, 0).await);
    assert_eq!(row.token_version, 1);
    assert_eq!(endpoint.calls(), 1);
    let row = store.row();
    assert_eq!((row.lease_owner, row.lease_until), (None, None), "released");
}

#[tokio::test]
async fn a_fenced_out_write_yields_the_newer_tokens() {
    let clock = ManualClock::new(T0);
    let store = FakeStore::with(expired_row());
    let endpoint = FakeEndpoint::new(&clock, Reply::Tokens);
    // While our request is in flight our lease lapses and another process refreshes.
    let other = store.clone();
    *endpoint.during.lock().unwrap() = Some(Box::new(move || {
        other.edit(|r| {
            r.access_token = Some(b"at-other".to_vec());
            r.refresh_token = Some(b"rt-other".to_vec());
            r.token_version = 1;
            r.lease_owner = Some("proc_other".into());
        })
    }));
    let k = keeper(&store, &endpoint, &clock);
    let row = row_of(refresh(&k, 0).await);
    assert_eq!(row.token_version, 1, "our write did not land");
    assert_eq!(row.access_token.as_deref(), Some(&b"at-other"[..]));
    let stored = store.row();
    assert_eq!(stored.refresh_token.as_deref(), Some(&b"rt-other"[..]));
    assert_eq!(
        stored.lease_owner.as_deref(),
        Some("proc_other"),
        "another owner's lease is not released by us"
    );
}

#[tokio::test]
async fn backoff_doubles_up_to_its_cap_then_a_success_clears_it() {
    let clock = ManualClock::new(T0);
    let store = FakeStore::with(expired_row());
    let endpoint = FakeEndpoint::new(&clock, Reply::Transient);
    let k = keeper(&store, &endpoint, &clock);

    let e = err_of(refresh(&k, 0).await);
    assert_eq!((retry_after(&e), endpoint.calls()), (Some(1), 1));
    assert_eq!(
        store.row().last_refresh_error.as_deref(),
        Some("token endpoint unavailable (HTTP 503); will retry")
    );
    // Inside the 1 s window: the failure is answered without asking.
    clock.advance(Duration::from_millis(999));
    let e = err_of(refresh(&k, 0).await);
    assert_eq!((retry_after(&e), endpoint.calls()), (Some(1), 1));
    // Then 2 s, then 3 s (the cap), and 3 s again.
    clock.advance(Duration::from_millis(1));
    let e = err_of(refresh(&k, 0).await);
    assert_eq!((retry_after(&e), endpoint.calls()), (Some(2), 2));
    clock.advance(Duration::from_millis(1_999));
    let e = err_of(refresh(&k, 0).await);
    assert_eq!((retry_after(&e), endpoint.calls()), (Some(1), 2));
    clock.advance(Duration::from_millis(1));
    let e = err_of(refresh(&k, 0).await);
    assert_eq!((retry_after(&e), endpoint.calls()), (Some(3), 3));
    clock.advance(Duration::from_millis(3_000));
    let e = err_of(refresh(&k, 0).await);
    assert_eq!((retry_after(&e), endpoint.calls()), (Some(3), 4));
    assert_eq!(
        store.row().status,
        "authorized",
        "a transient failure never demotes"
    );

    // The endpoint is back: the first attempt after the window refreshes and clears the error.
    endpoint.script.lock().unwrap().push_back(Reply::Tokens);
    clock.advance(Duration::from_millis(3_000));
    let row = row_of(refresh(&k, 0).await);
    assert_eq!((row.token_version, endpoint.calls()), (1, 5));
    assert_eq!(row.last_refresh_error, None);
    assert_eq!(row.last_refresh_at, Some(clock.now_ms()));
    // A new failure later starts again at the initial wait.
    let k_row = store.row();
    store.edit(|r| r.token_expires_at = Some(clock.now_ms() - 1));
    let e = err_of(refresh(&k, k_row.token_version).await);
    assert_eq!((retry_after(&e), endpoint.calls()), (Some(1), 6));
}

#[tokio::test]
async fn invalid_grant_needs_reauthorization() {
    let clock = ManualClock::new(T0);
    let store = FakeStore::with(expired_row());
    let endpoint = FakeEndpoint::new(&clock, Reply::InvalidGrant);
    let k = keeper(&store, &endpoint, &clock);
    let e = err_of(refresh(&k, 0).await);
    match &e {
        ServiceError::InstallNotAuthorized { status, .. } => {
            assert_eq!(*status, "needs_reauthorization")
        }
        other => panic!("expected install_not_authorized, got {other:?}"),
    }
    let row = store.row();
    assert_eq!(row.status, "needs_reauthorization");
    assert!(row.last_error.unwrap().contains("invalid_grant"));
    assert_eq!((row.lease_owner, row.lease_until), (None, None));
    assert_eq!(row.token_version, 0, "no token written");
    // Nothing is asked again: the install must be re-authorized.
    let e = err_of(refresh(&k, 0).await);
    assert_eq!(e.code(), ErrorCode::InstallNotAuthorized);
    assert_eq!(endpoint.calls(), 1);
}

#[tokio::test]
async fn a_refused_assertion_needs_reauthorization() {
    let clock = ManualClock::new(T0);
    let store = FakeStore::with(expired_row());
    let endpoint = FakeEndpoint::new(&clock, Reply::AssertionRefused);
    let k = keeper(&store, &endpoint, &clock);
    let e = err_of(refresh(&k, 0).await);
    match &e {
        ServiceError::InstallNotAuthorized { status, detail } => {
            assert_eq!(*status, "needs_reauthorization");
            assert!(
                detail.contains("client assertion (invalid_client)"),
                "{detail}"
            );
        }
        other => panic!("expected install_not_authorized, got {other:?}"),
    }
    let row = store.row();
    assert_eq!(row.status, "needs_reauthorization");
    assert!(row.last_error.unwrap().contains("invalid_client"));
    assert_eq!(row.token_version, 0, "no token written");
    let e = err_of(refresh(&k, 0).await);
    assert_eq!(e.code(), ErrorCode::InstallNotAuthorized);
    assert_eq!(endpoint.calls(), 1, "not retried like a transient failure");
}

#[tokio::test]
async fn the_background_pass_refreshes_only_what_is_due() {
    let clock = ManualClock::new(T0);
    let store = FakeStore::with(Install {
        token_expires_at: Some(T0 + 400_000),
        ..expired_row()
    });
    let endpoint = FakeEndpoint::new(&clock, Reply::Tokens);
    let eager = TokenSettings {
        background_refresh_policy: BackgroundRefreshPolicy::Eager,
        ..settings()
    };
    let k = keeper_with(&eager, &store, &endpoint, &clock);
    // 400 s from expiry, horizon 300 s: nothing due.
    assert_eq!(k.refresh_due_installs().await.unwrap(), 0);
    clock.advance(Duration::from_millis(100_001));
    assert_eq!(k.refresh_due_installs().await.unwrap(), 1);
    assert_eq!(endpoint.calls(), 1);
    assert_eq!(store.row().token_version, 1);
    assert_eq!(k.refresh_due_installs().await.unwrap(), 0, "fresh now");
}

// --- Issue 10: crash recovery, detached refreshes, polite background refresh ---------------

#[tokio::test]
async fn a_dead_instances_lease_is_taken_over_at_once_not_after_its_ttl() {
    let clock = ManualClock::new(T0);
    let store = FakeStore::with(Install {
        lease_owner: Some("proc_dead".into()),
        lease_until: Some(T0 + 30_000),
        ..expired_row()
    });
    // Its last heartbeat is exactly `instance_stale_ms` (3 s) old: it is gone.
    store.beat("proc_dead", T0 - 3_000);
    let endpoint = FakeEndpoint::new(&clock, Reply::Tokens);
    let k = keeper(&store, &endpoint, &clock);
    let row = row_of(refresh(&k, 0).await);
    assert_eq!((row.token_version, endpoint.calls()), (1, 1));
    let row = store.row();
    assert_eq!((row.lease_owner, row.lease_until), (None, None), "released");
}

#[tokio::test(start_paused = true)]
async fn a_live_instances_lease_is_never_taken_even_past_its_ttl() {
    let clock = ManualClock::new(T0);
    let store = FakeStore::with(Install {
        lease_owner: Some("proc_live".into()),
        lease_until: Some(T0 - 1),
        ..expired_row()
    });
    // The lease ran out, but its holder's heartbeat is 2.999 s old: a live slow refresh.
    store.beat("proc_live", T0 - 2_999);
    let endpoint = FakeEndpoint::new(&clock, Reply::Tokens);
    let k = keeper(&store, &endpoint, &clock);
    let e = err_of(refresh(&k, 0).await);
    match e {
        ServiceError::RefreshInProgress { retry_after_secs } => assert!(retry_after_secs >= 1),
        other => panic!("expected refresh_in_progress, got {other:?}"),
    }
    assert_eq!(endpoint.calls(), 0, "nothing sent while the holder lives");
    assert_eq!(store.row().lease_owner.as_deref(), Some("proc_live"));
    // Once the holder's heartbeat goes stale, the lease is ours.
    clock.advance(Duration::from_millis(1));
    let row = row_of(refresh(&k, 0).await);
    assert_eq!((row.token_version, endpoint.calls()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_refresh_whose_caller_went_away_still_commits_and_is_drained() {
    let clock = ManualClock::new(T0);
    let store = FakeStore::with(expired_row());
    let endpoint = Arc::new(FakeEndpoint {
        delay: Duration::from_secs(5),
        ..Arc::into_inner(FakeEndpoint::new(&clock, Reply::Tokens)).unwrap()
    });
    let k = keeper(&store, &endpoint, &clock);
    let caller = tokio::spawn({
        let k = k.clone();
        async move { refresh(&k, 0).await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(endpoint.calls(), 1, "the request is at the provider");
    assert_eq!(k.refreshes_in_flight(), 1);
    // The client disconnects (or the server drops the request at shutdown).
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());
    assert!(!k.drain(Duration::from_secs(1)).await, "still running");
    assert!(k.drain(Duration::from_secs(10)).await, "ends and commits");
    let row = store.row();
    assert_eq!(row.token_version, 1);
    assert_eq!(row.refresh_token.as_deref(), Some(&b"rt-1"[..]));
    assert_eq!((row.lease_owner, row.lease_until), (None, None));
    assert_eq!(k.refreshes_in_flight(), 0);
}

#[tokio::test]
async fn heartbeat_deregister_and_purge_keep_the_instance_rows() {
    let clock = ManualClock::new(T0);
    let store = FakeStore::with(expired_row());
    let endpoint = FakeEndpoint::new(&clock, Reply::Tokens);
    let k = keeper(&store, &endpoint, &clock);
    store.beat("proc_long_dead", T0 - 86_400_001);
    store.beat("proc_recently_dead", T0 - 60_000);
    k.heartbeat(false).await.unwrap();
    assert_eq!(store.1.lock().unwrap().get(k.instance_id()), Some(&T0));
    clock.advance(Duration::from_millis(1_000));
    k.heartbeat(true).await.unwrap();
    let mut beats: Vec<_> = store.1.lock().unwrap().keys().cloned().collect();
    beats.sort();
    let mut want = vec![k.instance_id().to_owned(), "proc_recently_dead".to_owned()];
    want.sort();
    assert_eq!(beats, want, "a day without a heartbeat: purged");
    k.deregister().await.unwrap();
    assert!(!store.1.lock().unwrap().contains_key(k.instance_id()));
}

/// A polite pass every minute over one simulated day, 10-minute access tokens.
async fn day_of_passes(k: &Arc<TestKeeper>, clock: &ManualClock, each: impl Fn(i64)) {
    for minute in 1..=1_440 {
        clock.advance(Duration::from_secs(60));
        k.refresh_due_installs().await.unwrap();
        each(minute);
    }
}

#[tokio::test]
async fn the_polite_pass_leaves_idle_installs_alone_until_the_daily_check() {
    let clock = ManualClock::new(T0);
    // Refreshed just now; its 10-minute token expires during every hour of the day.
    let store = FakeStore::with(Install {
        token_expires_at: Some(T0 + 600_000),
        last_refresh_at: Some(T0),
        ..expired_row()
    });
    let endpoint = FakeEndpoint::new(&clock, Reply::Tokens);
    let k = keeper(&store, &endpoint, &clock);
    let calls = endpoint.clone();
    day_of_passes(&k, &clock, |minute| {
        let want = if minute < 1_440 { 0 } else { 1 };
        assert_eq!(calls.calls(), want, "minute {minute}");
    })
    .await;
    // The daily check refreshed it once (and would have found a revoked grant).
    assert_eq!(store.row().token_version, 1);
    assert_eq!(store.row().last_refresh_at, Some(clock.now_ms()));
}

#[tokio::test]
async fn an_install_in_use_is_not_checked_and_calls_refresh_it() {
    let clock = ManualClock::new(T0);
    let store = FakeStore::with(Install {
        token_expires_at: Some(T0 + 600_000),
        last_refresh_at: Some(T0),
        ..expired_row()
    });
    let endpoint = FakeEndpoint::new(&clock, Reply::Tokens);
    let k = keeper(&store, &endpoint, &clock);
    // Used an hour before the day's check is due: written by the next pass, so no check.
    clock.advance(Duration::from_secs(23 * 3_600));
    k.note_used(ID);
    clock.advance(Duration::from_secs(3_600));
    assert_eq!(k.refresh_due_installs().await.unwrap(), 0);
    assert_eq!(endpoint.calls(), 0);
    assert_eq!(store.usage(ID).last_used_at, Some(T0 + 23 * 3_600_000));
    // Its call refreshes it on demand, as before.
    let row = row_of(refresh(&k, 0).await);
    assert_eq!((row.token_version, endpoint.calls()), (1, 1));
    // Uses are written at most once per 10 minutes per install.
    k.note_used(ID);
    assert_eq!(k.flush_used().await.unwrap(), 1);
    clock.advance(Duration::from_secs(60));
    k.note_used(ID);
    assert_eq!(k.flush_used().await.unwrap(), 0);
}

#[tokio::test]
async fn the_polite_pass_refreshes_ahead_of_a_refresh_token_idle_limit() {
    let clock = ManualClock::new(T0);
    let store = FakeStore::with(Install {
        token_expires_at: Some(T0 + 600_000),
        last_refresh_at: Some(T0),
        ..expired_row()
    });
    // The connector declares refresh tokens lapse after 3 h unused; margin 1 h.
    let endpoint = Arc::new(FakeEndpoint {
        refresh_idle_ms: Some(3 * 3_600_000),
        ..Arc::into_inner(FakeEndpoint::new(&clock, Reply::Tokens)).unwrap()
    });
    let k = keeper(&store, &endpoint, &clock);
    // The first refresh records the lapse; from then on every 2 h (3 h - 1 h margin).
    store.edit(|r| r.token_expires_at = Some(T0 - 1));
    row_of(refresh(&k, 0).await);
    assert_eq!(store.usage(ID).refresh_expires_at, Some(T0 + 3 * 3_600_000));
    let calls = endpoint.clone();
    day_of_passes(&k, &clock, |minute| {
        assert_eq!(calls.calls(), 1 + minute as usize / 120, "minute {minute}");
    })
    .await;
    assert_eq!(endpoint.calls(), 13);
    assert_eq!(store.row().status, "authorized");
}

/// The measurement of docs/BENCHMARKS.md ("polite background refresh"): 10,000 idle installs on
/// SQLite, each authorized at some minute of the day before, with 10-minute access tokens; the
/// background refresher passes every minute for one simulated day against a counting token
/// endpoint.
#[tokio::test]
async fn ten_thousand_idle_installs_cost_at_most_one_token_request_a_day() {
    const INSTALLS: usize = 10_000;
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let db = switchboard_db::Db::connect(
        &format!("sqlite://{}", dir.path().join("bench.db").display()),
        4,
    )
    .unwrap();
    db.migrate().unwrap();
    let clock = ManualClock::new(T0);
    {
        let mut conn = db.get().unwrap();
        seed_idle_installs(&mut conn, INSTALLS);
    }
    let store = DbTokenStore::new(db.clone());
    let endpoint = FakeEndpoint::new(&clock, Reply::Tokens);
    let cfg = settings();
    let k = Arc::new(TokenKeeper::new(
        &cfg,
        store,
        endpoint.clone(),
        Arc::new(clock.clone()),
        Arc::new(InstallCache::new(cfg.install_cache_ttl_ms)),
    ));
    let (mut passes, mut rows_returned) = (0u64, 0usize);
    for _ in 0..1_440 {
        clock.advance(Duration::from_secs(60));
        rows_returned += k.refresh_due_installs().await.unwrap();
        passes += 1;
    }
    let requests = endpoint.calls();
    let per_install = requests as f64 / INSTALLS as f64;
    let refreshed: i64 = {
        use diesel::prelude::*;
        use switchboard_db::schema::installs::dsl as i;
        let mut conn = db.get().unwrap();
        i::installs
            // Version 1 from the seed, 2 after the one refresh.
            .filter(i::token_version.eq(2))
            .count()
            .get_result(&mut *conn)
            .unwrap()
    };
    eprintln!(
        "polite refresh: {INSTALLS} idle installs, 10-minute tokens, {passes} passes over one simulated day: \
         {requests} token requests ({per_install:.3} per install per day), \
         {rows_returned} install rows refreshed (each: lease, re-read, fenced write, release), \
         wall time {:.1?}",
        started.elapsed()
    );
    assert!(
        per_install <= 1.0,
        "{per_install} token requests per install per day"
    );
    assert_eq!(requests, INSTALLS, "each is checked once in its day");
    assert_eq!(refreshed, INSTALLS as i64);
}

/// `n` authorized installs, the i-th refreshed at minute `i % 1440` of the day before T0 (plus
/// 30 s), with a 10-minute token; one transaction.
fn seed_idle_installs(conn: &mut switchboard_db::AnyConnection, n: usize) {
    use diesel::Connection;
    use switchboard_db::repo::{accounts, installs, tenants};
    const DAY: i64 = 86_400_000;
    tenants::insert(
        conn,
        &switchboard_db::Tenant {
            id: "ten_bench".into(),
            name: "Bench".into(),
            allowed_return_urls: "[]".into(),
            created_at: T0 - 2 * DAY,
        },
    )
    .unwrap();
    accounts::insert(
        conn,
        &switchboard_db::Account {
            tenant_id: "ten_bench".into(),
            id: "acme".into(),
            name: "Acme".into(),
            created_at: T0 - 2 * DAY,
        },
    )
    .unwrap();
    conn.transaction::<_, switchboard_db::DbError, _>(|conn| {
        for i in 0..n {
            let id = format!("ins_{i:05}");
            installs::insert(
                conn,
                &switchboard_db::NewInstall {
                    id: id.clone(),
                    tenant_id: "ten_bench".into(),
                    account_id: "acme".into(),
                    connector_id: "canvas".into(),
                    auth_type: "oauth2_authorization_code".into(),
                    status: InstallStatus::PendingAuthorization,
                    settings: "{}".into(),
                    return_url: None,
                    created_at: T0 - 2 * DAY,
                    updated_at: T0 - 2 * DAY,
                },
            )?;
            let at = T0 - DAY + (i as i64 % 1_440) * 60_000 + 30_000;
            let write = TokenWrite {
                access_token: b"at-0".to_vec(),
                refresh_token: Some(b"rt-0".to_vec()),
                expires_at: Some(at + 600_000),
                scopes: None,
                context: None,
                status: InstallStatus::Authorized,
                last_error: None,
                last_refresh_at: Some(at),
                last_refresh_error: None,
                now: at,
            };
            assert!(installs::store_tokens(conn, &id, 0, &write)?);
        }
        Ok(())
    })
    .unwrap();
}
