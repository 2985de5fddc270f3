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

/// The install table, with the lease and fenced write of `switchboard_db::repo`.
#[derive(Clone, Default)]
struct FakeStore(Arc<Mutex<HashMap<String, Install>>>);

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
    ) -> Result<(Option<Install>, bool), ServiceError> {
        let mut rows = self.0.lock().unwrap();
        let Some(row) = rows.get_mut(install_id) else {
            return Ok((None, false));
        };
        let read = row.clone();
        if row.token_version > seen_version {
            return Ok((Some(read), false));
        }
        let free =
            row.lease_until.is_none_or(|u| u <= now) || row.lease_owner.as_deref() == Some(owner);
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
}

#[derive(Clone, Copy)]
enum Reply {
    Tokens,
    Transient,
    InvalidGrant,
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
            }),
            Reply::Transient => Err(RequestError::Auth(AuthError::Transient {
                status: Some(503),
                reason: "HTTP 503".into(),
            })),
            Reply::InvalidGrant => Err(RequestError::Auth(AuthError::InvalidGrant {
                description: None,
            })),
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
async fn refresh(k: &TestKeeper, seen_version: i64) -> Result<Refreshed<Install>, ServiceError> {
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
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../connectors");
    let catalog = switchboard_connector::load_dir(&dir).expect("shipped connectors load");
    Arc::new(Prepared {
        id: row.id.clone(),
        tenant_id: row.tenant_id.clone(),
        account_id: row.account_id.clone(),
        connector: catalog.get("canvas").expect("canvas"),
        auth_kind: switchboard_connector::AuthKind::Oauth2AuthorizationCode,
        status: InstallStatus::Authorized,
        status_error: None,
        fhir_base: url::Url::parse("https://fhir.example/").unwrap(),
        headers: vec![],
        bearer: Some(secrecy::SecretString::from("at-0")),
        expires_at: row.token_expires_at,
        obtained_at: row.last_refresh_at,
        token_version: row.token_version,
        has_refresh_token: row.refresh_token.is_some(),
        granted_scope: None,
        search_params: vec![],
        loaded_at: std::time::Instant::now(),
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
async fn the_background_pass_refreshes_only_what_is_due() {
    let clock = ManualClock::new(T0);
    let store = FakeStore::with(Install {
        token_expires_at: Some(T0 + 400_000),
        ..expired_row()
    });
    let endpoint = FakeEndpoint::new(&clock, Reply::Tokens);
    let k = keeper(&store, &endpoint, &clock);
    // 400 s from expiry, horizon 300 s: nothing due.
    assert_eq!(k.refresh_due_installs().await.unwrap(), 0);
    clock.advance(Duration::from_millis(100_001));
    assert_eq!(k.refresh_due_installs().await.unwrap(), 1);
    assert_eq!(endpoint.calls(), 1);
    assert_eq!(store.row().token_version, 1);
    assert_eq!(k.refresh_due_installs().await.unwrap(), 0, "fresh now");
}
