//! The prepared-install cache of the hot path. An install is prepared once (merged settings
//! rendered, FHIR base parsed, headers built, access token decrypted) and kept for
//! `tokens.install_cache_ttl_ms`; every change this process makes to an install drops its
//! entry, other replicas' changes are seen within the TTL. Loads are single-flight: when an
//! entry expires under load, one call re-reads the install and the others wait for it, instead
//! of every call in flight reading it at once. Depends on nothing else in the crate.

use reqwest::header::{HeaderName, HeaderValue};
use secrecy::SecretString;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use switchboard_connector::{AuthKind, Connector};
use switchboard_core::InstallStatus;
use url::Url;

/// An install ready for calls.
pub struct Prepared {
    pub id: String,
    pub tenant_id: String,
    pub account_id: String,
    pub connector: Arc<Connector>,
    pub auth_kind: AuthKind,
    pub status: InstallStatus,
    pub status_error: Option<String>,
    pub fhir_base: Url,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub bearer: Option<SecretString>,
    pub expires_at: Option<i64>,
    pub obtained_at: Option<i64>,
    pub token_version: i64,
    pub has_refresh_token: bool,
    /// The scope string the token response granted (or the requested one when it said
    /// nothing, RFC 6749 §5.1); `None` = unknown, not checked.
    pub granted_scope: Option<String>,
    /// The connector's `search_params`, rendered for this install.
    pub search_params: Vec<(String, String)>,
    pub(crate) loaded_at: Instant,
}

impl Prepared {
    pub fn can_refresh(&self) -> bool {
        match self.auth_kind {
            AuthKind::Oauth2ClientCredentials | AuthKind::Oauth2BackendServices => true,
            AuthKind::Oauth2AuthorizationCode => self.has_refresh_token,
            AuthKind::StaticBearer => false,
        }
    }
}

/// Lock stripes for loads: two installs share one only by their id's hash.
const LOAD_STRIPES: usize = 64;

pub struct InstallCache {
    ttl: Duration,
    map: RwLock<HashMap<String, Arc<Prepared>>>,
    loads: Box<[tokio::sync::Mutex<()>]>,
}

impl InstallCache {
    pub fn new(ttl_ms: u64) -> Self {
        Self {
            ttl: Duration::from_millis(ttl_ms),
            map: RwLock::new(HashMap::new()),
            loads: (0..LOAD_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    /// The fresh entry for `id`, or the one `load` makes (and puts in the cache). At most one
    /// load of an install runs at a time in this process; a call that waited for another's load
    /// takes its result. `load` errors are not cached: the next call loads again.
    pub(crate) async fn get_or_load<F, E>(&self, id: &str, load: F) -> Result<Arc<Prepared>, E>
    where
        F: std::future::Future<Output = Result<Arc<Prepared>, E>>,
    {
        let stripe = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        }) as usize
            % LOAD_STRIPES;
        let _guard = self.loads[stripe].lock().await;
        if let Some(p) = self.get(id) {
            return Ok(p);
        }
        load.await
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<Prepared>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .filter(|p| p.loaded_at.elapsed() < self.ttl)
            .cloned()
    }

    /// Any cached entry, however old (used after waiting for a refresh in this process).
    pub fn get_any(&self, id: &str) -> Option<Arc<Prepared>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    pub(crate) fn put(&self, p: Arc<Prepared>) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.len() > 50_000 {
            map.retain(|_, v| v.loaded_at.elapsed() < self.ttl);
        }
        map.insert(p.id.clone(), p);
    }

    pub fn remove(&self, id: &str) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    pub fn clear(&self) {
        self.map.write().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A prepared Canvas static-bearer install `id` of tenant `ten_1` (the shipped connector);
    /// other tests override the fields they need.
    pub(crate) fn prepared(id: &str) -> Prepared {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../connectors");
        let catalog = switchboard_connector::load_dir(&dir).expect("shipped connectors load");
        Prepared {
            id: id.to_owned(),
            tenant_id: "ten_1".into(),
            account_id: "acc_1".into(),
            connector: catalog.get("canvas").expect("canvas"),
            auth_kind: AuthKind::StaticBearer,
            status: InstallStatus::Authorized,
            status_error: None,
            fhir_base: Url::parse("https://fhir.example/").unwrap(),
            headers: vec![],
            bearer: None,
            expires_at: None,
            obtained_at: None,
            token_version: 0,
            has_refresh_token: false,
            granted_scope: None,
            search_params: vec![],
            loaded_at: Instant::now(),
        }
    }

    /// Loads `id` as the method service does (the load puts its result in the cache), yielding
    /// in between as a database read would, and counts the loads.
    async fn load(
        cache: &InstallCache,
        loads: &AtomicUsize,
        id: &str,
        fail: bool,
    ) -> Result<Arc<Prepared>, &'static str> {
        cache
            .get_or_load(id, async {
                loads.fetch_add(1, Ordering::SeqCst);
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
                if fail {
                    return Err("database down");
                }
                let p = Arc::new(prepared(id));
                cache.put(p.clone());
                Ok(p)
            })
            .await
    }

    #[tokio::test]
    async fn concurrent_misses_of_one_install_load_it_once() {
        let cache = Arc::new(InstallCache::new(60_000));
        let loads = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (cache, loads) = (cache.clone(), loads.clone());
            tasks.spawn(async move {
                load(&cache, &loads, "ins_a", false)
                    .await
                    .map(|p| p.id.clone())
            });
        }
        while let Some(r) = tasks.join_next().await {
            assert_eq!(r.unwrap().unwrap(), "ins_a");
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        // Another install is loaded on its own.
        load(&cache, &loads, "ins_b", false).await.unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_load_is_not_cached() {
        let cache = InstallCache::new(60_000);
        let loads = AtomicUsize::new(0);
        assert_eq!(
            load(&cache, &loads, "ins_a", true).await.err(),
            Some("database down")
        );
        assert!(cache.get("ins_a").is_none());
        load(&cache, &loads, "ins_a", false).await.unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 2);
        assert!(cache.get("ins_a").is_some());
    }
}
