//! Application services: one service per resource, each owning only the shared pieces it
//! needs (keys, setups, accounts+installs, the OAuth callback, method calls, the connector
//! catalogue, agent sessions for `/mcp`), and the token lifecycle ([`TokenKeeper`]: single
//! flight per install, across replicas through a database lease). Handlers call exactly one function here.
//!
//! Modules depend one way: leaves (`error`, `tenant`, `clock`, `settings`, `sealing`, `cache`,
//! `return_url`, `pagination`, `limits`, `console` (web console sessions, on `clock` and
//! `tenant`), then `resolve` on `settings`, `audit` on `pagination` and
//! `tenant`, `webhooks` on `audit`, `clock`, `pagination` and `tenant`, and `signing_keys` on `resolve`
//! and `clock`) <- `tokens` <- the services (`keys`, `setups`, `installs` + `accounts`,
//! `callback`, `methods` (with `bulk`: Bulk Data jobs and their poller), `connectors`,
//! `agent_sessions` on `clock` and `pagination`; they
//! record through `audit` and write webhook events
//! through `webhooks::Outbox`) <- `Services` (this file). Key
//! custody (`rotation`: the registry of encrypted columns, `keys rotate|status|prune`) uses
//! only the database and the key ring.
//! No service calls another service; the token keeper knows nothing of method calls.

pub mod accounts;
pub mod agent_sessions;
pub mod audit;
pub mod bulk;
pub mod cache;
pub mod callback;
pub mod clock;
pub mod connect;
pub mod connectors;
pub mod console;
pub mod error;
pub mod installs;
pub mod keys;
pub mod limits;
pub mod methods;
pub mod pagination;
pub mod resolve;
mod return_url;
pub mod rotation;
pub mod sealing;
pub mod settings;
pub mod setups;
pub mod signing_keys;
pub mod tenant;
pub mod tokens;
pub mod webhooks;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{FieldError, ServiceError};
pub use tenant::TenantCtx;
pub use tokens::{Keeper, TokenKeeper};

use std::sync::Arc;
use switchboard_config::Settings;
use switchboard_connector::Catalog;
use switchboard_crypto::KeyRing;
use switchboard_db::Db;
use switchboard_outbound::{Outbound, OutboundConfig};

/// Failures while assembling the services at start-up.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("database: {0}")]
    Db(#[from] switchboard_db::DbError),
    #[error("encryption key ring: {0}")]
    Crypto(#[from] switchboard_crypto::CryptoError),
    #[error("encryption key ring: {0}")]
    Custody(#[from] rotation::CustodyError),
    #[error("connector definitions are invalid:\n{0}")]
    Connectors(String),
    #[error("outbound HTTP client: {0}")]
    Outbound(String),
}

/// Every service of one Switchboard process. Cheap to clone.
#[derive(Clone)]
pub struct Services {
    pub keys: Arc<keys::KeyService>,
    pub setups: Arc<setups::SetupService>,
    pub installs: Arc<installs::InstallService>,
    pub callback: Arc<callback::CallbackService>,
    pub methods: Arc<methods::MethodService>,
    pub connectors: Arc<connectors::ConnectorService>,
    pub tokens: Arc<Keeper>,
    /// The audit trail writer (the server spawns its task).
    pub audit: Arc<audit::AuditLog>,
    pub webhooks: Arc<webhooks::WebhookService>,
    /// The webhook dispatcher (the server spawns its task when `webhooks.dispatch`).
    pub dispatcher: Arc<webhooks::Dispatcher>,
    /// SMART Backend Services setup keys (the public JWK Set route reads them).
    pub setup_keys: Arc<signing_keys::SetupKeys>,
    /// Web console sessions (issue 15).
    pub console: Arc<console::ConsoleService>,
    /// Agent sessions, the access of MCP clients to `/mcp` (issue 15).
    pub agent_sessions: Arc<agent_sessions::AgentSessionService>,
    /// The Bulk Data job poller (the server spawns its task when `bulk.poll`).
    pub bulk_poller: Arc<bulk::BulkPoller>,
    settings: Arc<Settings>,
    db: Db,
    catalog: Catalog,
    /// The one key ring every service encrypts with (swapped in place on reload).
    key_ring: Arc<KeyRing>,
}

impl Services {
    /// Connects the database (without migrating), loads the key ring and the connector
    /// catalogue, builds the one outbound HTTP client.
    pub fn build(settings: Settings) -> Result<Self, StartupError> {
        let db = Db::connect_with(
            &settings.database.url,
            settings.database.pool_size,
            settings.database.pool_timeout(),
        )?;
        Self::build_with_db(settings, db)
    }

    pub fn build_with_db(settings: Settings, db: Db) -> Result<Self, StartupError> {
        Self::build_with_clock(settings, db, Arc::new(SystemClock))
    }

    /// Like [`Services::build_with_db`] with the clock of the token lifecycle (tests pass a
    /// [`ManualClock`]).
    pub fn build_with_clock(
        settings: Settings,
        db: Db,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartupError> {
        let crypto = Arc::new(rotation::load_ring(&settings.secrets, &db)?);
        let agent_clock = clock.clone();
        let catalog =
            switchboard_connector::load_dir(&settings.connectors.dir).map_err(|diags| {
                StartupError::Connectors(
                    diags
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            })?;
        let up = &settings.upstream;
        let outbound = Outbound::new(OutboundConfig {
            connect_timeout: up.connect_timeout(),
            request_timeout: up.request_timeout(),
            max_response_bytes: up.max_response_bytes,
            allow_insecure: settings.security.allow_insecure_upstreams,
            max_retries: up.max_retries,
            max_retry_wait: up.max_retry_wait(),
            user_agent: format!("switchboard/{}", env!("CARGO_PKG_VERSION")),
        })
        .map_err(|e| StartupError::Outbound(e.to_string()))?;
        let redirect_uri = settings.redirect_uri();
        let settings = Arc::new(settings);
        let cache = Arc::new(cache::InstallCache::new(
            settings.tokens.install_cache_ttl_ms,
        ));
        let resolver = Arc::new(resolve::Resolver {
            db: db.clone(),
            crypto: crypto.clone(),
            catalog: catalog.clone(),
            outbound: outbound.clone(),
            discovery_ttl_ms: i64::try_from(settings.oauth.discovery_ttl_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            discovery_timeout: std::time::Duration::from_millis(
                settings.oauth.discovery_timeout_ms,
            ),
        });
        let outbound_limits = Arc::new(limits::OutboundLimits::new(&settings.limits));
        let outbox = Arc::new(webhooks::Outbox::new(
            clock.clone(),
            settings.webhooks.refresh_failing_after,
        ));
        let keys = Arc::new(signing_keys::SetupKeys {
            db: db.clone(),
            crypto: crypto.clone(),
            clock: clock.clone(),
            overlap_ms: settings.backend_services.key_overlap_ms(),
            jwks_max_age_secs: settings.backend_services.jwks_max_age_secs,
            public_url: settings.server.public_url.trim_end_matches('/').to_owned(),
        });
        let tokens = Arc::new(TokenKeeper::new(
            &settings.tokens,
            tokens::DbTokenStore::new(db.clone()).with_outbox(outbox.clone()),
            tokens::OAuthTokenEndpoint {
                resolver: resolver.clone(),
                crypto: crypto.clone(),
                outbound: outbound.clone(),
                redirect_uri: redirect_uri.clone(),
                clock: clock.clone(),
                limits: outbound_limits.clone(),
                keys: keys.clone(),
            },
            clock.clone(),
            cache.clone(),
        ));
        let audit = Arc::new(audit::AuditLog::new(
            db.clone(),
            crypto.clone(),
            &settings.audit,
        ));
        let console = Arc::new(console::ConsoleService {
            db: db.clone(),
            audit: audit.clone(),
            clock: clock.clone(),
            idle_ms: i64::try_from(settings.console.session_idle_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            max_ms: i64::try_from(settings.console.session_max_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            origin: url::Url::parse(&settings.server.public_url)
                .map(|u| u.origin().ascii_serialization())
                .unwrap_or_default(),
        });
        let crypto_for_services = crypto.clone();
        let methods = Arc::new(methods::MethodService {
            settings: settings.clone(),
            db: db.clone(),
            crypto: crypto.clone(),
            outbound: outbound.clone(),
            resolver: resolver.clone(),
            cache: cache.clone(),
            tokens: tokens.clone(),
            audit: audit.clone(),
            limits: outbound_limits.clone(),
        });
        Ok(Self {
            keys: Arc::new(keys::KeyService {
                db: db.clone(),
                keys: keys::KeyCache::new(settings.api_keys.cache_ttl_ms),
                bad_keys: keys::BadKeyCache::new(
                    settings.limits.bad_key_cache_ttl_ms,
                    settings.limits.bad_key_cache_size,
                ),
                lookups: tokio::sync::Semaphore::new(
                    settings.limits.key_lookups(settings.database.pool_size),
                ),
                rate: limits::KeyRateLimit::new(&settings.limits),
                limits: settings.limits.clone(),
                security: settings.security.clone(),
                crypto: crypto.clone(),
                audit: audit.clone(),
            }),
            setups: Arc::new(setups::SetupService {
                db: db.clone(),
                crypto: crypto.clone(),
                resolver: resolver.clone(),
                cache: cache.clone(),
                audit: audit.clone(),
                outbox: outbox.clone(),
                keys: keys.clone(),
            }),
            installs: Arc::new(installs::InstallService {
                settings: settings.clone(),
                db: db.clone(),
                crypto: crypto.clone(),
                outbound: outbound.clone(),
                redirect_uri,
                resolver: resolver.clone(),
                cache: cache.clone(),
                audit: audit.clone(),
                limits: outbound_limits.clone(),
                outbox: outbox.clone(),
                keys: keys.clone(),
            }),
            callback: Arc::new(callback::CallbackService {
                db: db.clone(),
                crypto: crypto.clone(),
                outbound: outbound.clone(),
                resolver: resolver.clone(),
                cache: cache.clone(),
                audit: audit.clone(),
                limits: outbound_limits.clone(),
                outbox: outbox.clone(),
            }),
            webhooks: Arc::new(webhooks::WebhookService {
                db: db.clone(),
                crypto: crypto.clone(),
                outbound: outbound.clone(),
                outbox: outbox.clone(),
                audit: audit.clone(),
            }),
            dispatcher: Arc::new(webhooks::Dispatcher::new(
                db.clone(),
                crypto.clone(),
                outbound.clone(),
                outbox,
                audit.clone(),
                settings.webhooks.clone(),
            )),
            bulk_poller: Arc::new(bulk::BulkPoller {
                methods: methods.clone(),
            }),
            methods,
            connectors: Arc::new(connectors::ConnectorService {
                catalog: catalog.clone(),
            }),
            agent_sessions: Arc::new(agent_sessions::AgentSessionService {
                db: db.clone(),
                catalog: catalog.clone(),
                clock: agent_clock,
                settings: settings.mcp.clone(),
                crypto: crypto.clone(),
                audit: audit.clone(),
            }),
            tokens,
            audit,
            setup_keys: keys,
            console,
            settings,
            db,
            catalog,
            key_ring: crypto_for_services,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The key ring shared by every service.
    pub fn key_ring(&self) -> &Arc<KeyRing> {
        &self.key_ring
    }

    /// Key custody (`keys rotate|status|prune`) on this process's database and key ring.
    pub fn custody(&self) -> rotation::Custody {
        rotation::Custody {
            db: self.db.clone(),
            source: rotation::KeySource::of(&self.settings.secrets),
            ring: self.key_ring.clone(),
            audit: self.settings.audit.enabled,
        }
    }

    /// Refuses a key ring lacking a key id the database uses (run after migrating).
    pub async fn check_key_ring(&self) -> Result<(), StartupError> {
        let source = rotation::KeySource::of(&self.settings.secrets);
        rotation::check_ring(&self.db, &self.key_ring, &source).await?;
        Ok(())
    }

    /// Re-reads the key file and swaps in its ring when it changed (the server calls this every
    /// `secrets.reload_interval_ms`). `seen` is the SHA-256 of the file last parsed: an
    /// unchanged file is not parsed again. Returns the new primary key id when it swapped.
    pub fn reload_key_ring(
        &self,
        seen: &mut Option<[u8; 32]>,
    ) -> Result<Option<String>, switchboard_crypto::CryptoError> {
        use sha2::Digest as _;
        let rotation::KeySource::File(path) = rotation::KeySource::of(&self.settings.secrets)
        else {
            return Ok(None);
        };
        let bytes = secrecy::zeroize::Zeroizing::new(std::fs::read(&path).map_err(|source| {
            switchboard_crypto::CryptoError::Io {
                path: path.clone(),
                source,
            }
        })?);
        let digest: [u8; 32] = sha2::Sha256::digest(bytes.as_slice()).into();
        if *seen == Some(digest) {
            return Ok(None);
        }
        let fresh = KeyRing::from_json(&bytes, &path)?;
        *seen = Some(digest);
        if fresh.same_keys(&self.key_ring) {
            return Ok(None);
        }
        let primary = fresh.primary_kid();
        self.key_ring.replace(fresh);
        Ok(Some(primary))
    }

    /// Applies pending migrations (serialised across replicas on PostgreSQL).
    pub async fn migrate(&self) -> Result<Vec<String>, ServiceError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.migrate())
            .await
            .map_err(ServiceError::internal)?
            .map_err(ServiceError::from)
    }

    /// Readiness: the database answers and the connector catalogue is loaded.
    pub async fn ready(&self) -> bool {
        self.db.ping().await.is_ok() && self.catalog.iter().next().is_some()
    }
}
