//! Tenants and their API keys. A key is `sbk_<public id>_<secret>`; only its SHA-256 is stored
//! (the secret has 256 bits of entropy, so a fast hash is enough), the plaintext is shown once.
//! Verified keys are cached for `api_keys.cache_ttl_ms` so the hot path does no database read;
//! unknown keys are remembered for `limits.bad_key_cache_ttl_ms` (bounded), and uncached lookups
//! run at most `limits.key_lookup_concurrency` at once, so a flood of bad keys cannot take the
//! database pool. Each key's request rate is limited (`limits.api_key_requests_per_minute`).

use crate::error::ServiceError;
use crate::pagination::{self, PageIn};
use crate::tenant::TenantCtx;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use switchboard_core::{ms_to_rfc3339, now_ms, random_token, ApiKeyId, IdKind};
use switchboard_crypto::KeyRing;
use switchboard_db::repo::{api_keys, tenants};
use switchboard_db::Db;
use switchboard_db::{NewApiKey, NewTenant};
use switchboard_metrics::Cache;

const KEY_PREFIX: &str = "sbk_";

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiKeyOut {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
}

/// One page of `GET /v1/api-keys`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKeyOut>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiKeyCreated {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub created_at: String,
    /// The plaintext key: returned once, never stored.
    pub api_key: String,
}

#[derive(Debug, Serialize)]
pub struct TenantCreated {
    pub tenant: String,
    pub api_key: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantOut {
    pub id: String,
    pub name: String,
    pub allowed_return_urls: Vec<String>,
    pub created_at: String,
}

fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new key: the id's random part doubles as the public part of the plaintext, so logs and
/// audit can name a key (`key_…` or its `prefix`) without the secret.
fn mint_key() -> (String, String, String) {
    let id = IdKind::ApiKey.generate();
    let public = &id[4..];
    let plaintext = format!("{KEY_PREFIX}{public}_{}", random_token(32));
    let prefix = format!("{KEY_PREFIX}{}", &public[..8]);
    (id, plaintext, prefix)
}

pub struct KeyCache {
    ttl: Duration,
    entries: RwLock<HashMap<String, (TenantCtx, Instant)>>,
}

impl KeyCache {
    pub fn new(ttl_ms: u64) -> Self {
        Self {
            ttl: Duration::from_millis(ttl_ms),
            entries: RwLock::new(HashMap::new()),
        }
    }

    fn get(&self, hash: &str) -> Option<TenantCtx> {
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        map.get(hash)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(ctx, _)| ctx.clone())
    }

    fn put(&self, hash: String, ctx: TenantCtx) {
        let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, (_, at)| at.elapsed() < self.ttl);
        }
        map.insert(hash, (ctx, Instant::now()));
    }

    fn forget_key(&self, key_id: &str) {
        let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, (ctx, _)| ctx.key_id != key_id);
    }
}

/// Hashes of presented keys that matched no active key, remembered for a short TTL so repeating
/// a bad key costs no database read. Bounded: when full, expired entries are dropped, and if it
/// is still full the oldest half goes.
pub struct BadKeyCache {
    ttl: Duration,
    capacity: usize,
    entries: std::sync::Mutex<HashMap<String, Instant>>,
}

impl BadKeyCache {
    pub fn new(ttl_ms: u64, capacity: usize) -> Self {
        Self {
            ttl: Duration::from_millis(ttl_ms),
            capacity,
            entries: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn contains(&self, hash: &str) -> bool {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.get(hash).is_some_and(|at| at.elapsed() < self.ttl)
    }

    fn put(&self, hash: String) {
        if self.capacity == 0 || self.ttl.is_zero() {
            return;
        }
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.capacity {
            map.retain(|_, at| at.elapsed() < self.ttl);
        }
        if map.len() >= self.capacity {
            let mut ages: Vec<Instant> = map.values().copied().collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            map.retain(|_, at| *at > cut);
        }
        map.insert(hash, Instant::now());
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

fn validate_name(name: &str, what: &str) -> Result<String, ServiceError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ServiceError::InvalidRequest(format!(
            "{what} must be 1 to 200 printable characters"
        )));
    }
    Ok(name.to_owned())
}

/// Tenants and their API keys, and the authentication of every request.
pub struct KeyService {
    pub(crate) db: Db,
    pub(crate) keys: KeyCache,
    pub(crate) bad_keys: BadKeyCache,
    /// Uncached key lookups running at once (`limits.key_lookup_concurrency`).
    pub(crate) lookups: tokio::sync::Semaphore,
    pub(crate) rate: crate::limits::KeyRateLimit,
    pub(crate) limits: switchboard_config::LimitsSettings,
    /// Which return-URL prefixes a tenant may add.
    pub(crate) security: switchboard_config::SecuritySettings,
    /// Seals the list cursors.
    pub(crate) crypto: Arc<KeyRing>,
    pub(crate) audit: Arc<crate::audit::AuditLog>,
}

impl KeyService {
    /// Creates a tenant and its first API key (the CLI's `tenant create`).
    pub async fn create_tenant(&self, name: &str) -> Result<TenantCreated, ServiceError> {
        let name = validate_name(name, "tenant name")?;
        let tenant_id = IdKind::Tenant.generate();
        let (key_id, plaintext, prefix) = mint_key();
        let now = now_ms();
        let key_hash = hash_key(&plaintext);
        let (t, k) = (tenant_id.clone(), key_id);
        // The first key's creation is an administrative change like any other key's. It is
        // written with the tenant (the CLI that runs this has no audit writer task), never the key.
        let record = self.audit.enabled().then(|| {
            (
                crate::audit::AuditLog::new_id(),
                format!("api_key.created:{k}"),
            )
        });
        self.db
            .run(move |conn| {
                conn.write_transaction(|conn| {
                    tenants::insert(
                        conn,
                        &NewTenant {
                            id: t.clone(),
                            name,
                            allowed_return_urls: "[]".into(),
                            created_at: now,
                        },
                    )?;
                    api_keys::insert(
                        conn,
                        &NewApiKey {
                            id: k,
                            tenant_id: t.clone(),
                            name: "initial".into(),
                            prefix,
                            key_hash: key_hash.clone(),
                            created_at: now,
                        },
                    )?;
                    if let Some((id, action)) = &record {
                        let event = switchboard_db::NewAuditEvent::admin(id, &t, now, action, 201);
                        switchboard_db::repo::audit::insert_batch(conn, &[event])?;
                    }
                    Ok(())
                })
            })
            .await?;
        Ok(TenantCreated {
            tenant: tenant_id,
            api_key: plaintext,
        })
    }

    /// Resolves a bearer API key to its tenant. Unknown, malformed and revoked keys all answer
    /// the same `None`, in constant work per request after the first lookup.
    ///
    /// A known key then counts one request against its rate: past it, 429 `rate_limited`.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<TenantCtx>, ServiceError> {
        let found = self.lookup(presented).await?;
        if let Some(ctx) = &found {
            self.rate.check_ctx(ctx)?;
        }
        Ok(found)
    }

    /// Counts one request against the rate of the key `ctx` acts with (a console session's
    /// requests count against the key it was opened with): 429 `rate_limited` past it.
    pub fn check_rate(&self, ctx: &TenantCtx) -> Result<(), ServiceError> {
        self.rate.check(&ctx.key_id)
    }

    async fn lookup(&self, presented: &str) -> Result<Option<TenantCtx>, ServiceError> {
        if !presented.starts_with(KEY_PREFIX) || presented.len() > 200 {
            return Ok(None);
        }
        let hash = hash_key(presented);
        let cached = self.keys.get(&hash);
        switchboard_metrics::cache_lookup(Cache::ApiKey, cached.is_some());
        if let Some(ctx) = cached {
            return Ok(Some(ctx));
        }
        if self.bad_keys.contains(&hash) {
            return Ok(None);
        }
        let _permit = self
            .lookups
            .acquire()
            .await
            .map_err(ServiceError::internal)?;
        // Another request may have looked the same key up while this one waited.
        if let Some(ctx) = self.keys.get(&hash) {
            return Ok(Some(ctx));
        }
        if self.bad_keys.contains(&hash) {
            return Ok(None);
        }
        let h = hash.clone();
        let now = now_ms();
        let found = self
            .db
            .run(move |conn| {
                let key = api_keys::find_active_by_hash(conn, &h)?;
                if let Some(k) = &key {
                    api_keys::touch_last_used(conn, std::slice::from_ref(&k.id), now)?;
                }
                Ok(key)
            })
            .await?;
        let Some(k) = found else {
            self.bad_keys.put(hash);
            return Ok(None);
        };
        let ctx = TenantCtx {
            tenant_id: k.tenant_id,
            key_id: k.id,
            request_id: None,
        };
        self.keys.put(hash, ctx.clone());
        Ok(Some(ctx))
    }

    pub async fn create_api_key(
        &self,
        t: &TenantCtx,
        name: &str,
    ) -> Result<ApiKeyCreated, ServiceError> {
        let name = validate_name(name, "name")?;
        let (id, plaintext, prefix) = mint_key();
        let now = now_ms();
        let row = NewApiKey {
            id: id.clone(),
            tenant_id: t.tenant_id.clone(),
            name: name.clone(),
            prefix: prefix.clone(),
            key_hash: hash_key(&plaintext),
            created_at: now,
        };
        let limit = self.limits.max_api_keys_per_tenant;
        self.db
            .run(move |conn| {
                conn.write_transaction(|conn| {
                    if limit > 0 && api_keys::count_active(conn, &row.tenant_id)? >= limit {
                        return Ok(false);
                    }
                    api_keys::insert(conn, &row).map(|_| true)
                })
            })
            .await?
            .then_some(())
            .ok_or(ServiceError::QuotaExceeded {
                quota: "api_keys",
                limit,
            })?;
        self.audit.admin(
            &t.tenant_id,
            Some(t),
            &format!("api_key.created:{id}"),
            201,
            Default::default(),
        )?;
        Ok(ApiKeyCreated {
            id,
            name,
            prefix,
            created_at: ms_to_rfc3339(now),
            api_key: plaintext,
        })
    }

    /// One page of the tenant's keys that are not revoked, oldest first.
    pub async fn list_api_keys(
        &self,
        t: &TenantCtx,
        page: PageIn,
    ) -> Result<ApiKeyList, ServiceError> {
        const SCOPE: &str = "api_keys";
        let ring = &self.crypto;
        let start = pagination::start(ring, &t.tenant_id, SCOPE, &page)?;
        let tenant = t.tenant_id.clone();
        let page = self
            .db
            .run(move |conn| api_keys::list_page(conn, &tenant, start.after.as_ref(), start.limit))
            .await?;
        Ok(ApiKeyList {
            next_cursor: page
                .next
                .map(|after| pagination::seal(ring, &t.tenant_id, SCOPE, &after)),
            api_keys: page
                .rows
                .into_iter()
                .map(|k| ApiKeyOut {
                    id: k.id,
                    name: k.name,
                    prefix: k.prefix,
                    created_at: ms_to_rfc3339(k.created_at),
                    last_used_at: k.last_used_at.map(ms_to_rfc3339),
                })
                .collect(),
        })
    }

    /// Revokes a key at once on this replica (and within the cache TTL on the others).
    pub async fn revoke_api_key(&self, t: &TenantCtx, id: &ApiKeyId) -> Result<(), ServiceError> {
        let (tenant, key) = (t.tenant_id.clone(), id.to_owned());
        let revoked = self
            .db
            .run(move |conn| api_keys::revoke(conn, &tenant, &key, now_ms()))
            .await?;
        self.keys.forget_key(id);
        if revoked {
            self.audit.admin(
                &t.tenant_id,
                Some(t),
                &format!("api_key.revoked:{id}"),
                204,
                Default::default(),
            )
        } else {
            Err(ServiceError::NotFound("API key not found".into()))
        }
    }

    pub async fn get_tenant(&self, t: &TenantCtx) -> Result<TenantOut, ServiceError> {
        let tenant = t.tenant_id.clone();
        let row = self
            .db
            .run(move |conn| tenants::find(conn, &tenant))
            .await?
            .ok_or_else(|| ServiceError::NotFound("tenant not found".into()))?;
        Ok(TenantOut {
            allowed_return_urls: serde_json::from_str(&row.allowed_return_urls).unwrap_or_default(),
            id: row.id,
            name: row.name,
            created_at: ms_to_rfc3339(row.created_at),
        })
    }

    /// Replaces the tenant's own list of allowed `return_url` prefixes.
    pub async fn set_allowed_return_urls(
        &self,
        t: &TenantCtx,
        prefixes: Vec<String>,
    ) -> Result<TenantOut, ServiceError> {
        if prefixes.len() > 50 {
            return Err(ServiceError::InvalidRequest(
                "at most 50 return URL prefixes".into(),
            ));
        }
        for p in &prefixes {
            crate::return_url::validate_return_prefix(p)?;
        }
        let security = &self.security;
        if let Some(outside) = prefixes.iter().find(|p| {
            !crate::return_url::tenant_prefix_allowed(
                p,
                &security.allowed_return_urls,
                &security.tenant_return_url_origins,
            )
        }) {
            let origin = url::Url::parse(outside)
                .map(|u| u.origin().ascii_serialization())
                .unwrap_or_default();
            return Err(ServiceError::ReturnUrlOriginNotAllowed(format!(
                "the origin {origin} is not open to tenant return URLs (security.tenant_return_url_origins) and the prefix is not under security.allowed_return_urls"
            )));
        }
        let tenant = t.tenant_id.clone();
        let json = serde_json::to_string(&prefixes).map_err(ServiceError::internal)?;
        self.db
            .run(move |conn| tenants::set_allowed_return_urls(conn, &tenant, &json))
            .await?;
        self.get_tenant(t).await
    }
}

#[cfg(test)]
mod tests {
    use super::BadKeyCache;

    #[test]
    fn bad_key_cache_is_bounded_and_expires() {
        let cache = BadKeyCache::new(60_000, 100);
        for i in 0..1_000 {
            cache.put(format!("h{i}"));
            assert!(cache.len() <= 100, "grew to {}", cache.len());
        }
        assert!(cache.contains("h999"));
        assert!(!cache.contains("h0"));
        let expired = BadKeyCache::new(0, 100);
        expired.put("h".into());
        assert!(!expired.contains("h"));
    }
}
