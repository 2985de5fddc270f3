//! Application services: one service per resource, each owning only the shared pieces it
//! needs (keys, setups, accounts+installs, the OAuth callback, method calls, the connector
//! catalogue), and the token lifecycle ([`TokenKeeper`]: single flight per install, across
//! replicas through a database lease). Handlers call exactly one function here.
//!
//! Modules depend one way: leaves (`error`, `tenant`, `clock`, `settings`, `sealing`, `cache`,
//! `return_url`, `pagination`, then `resolve` on `settings` and `audit` on `pagination` and
//! `tenant`) <- `tokens` <- the services (`keys`, `setups`, `installs` + `accounts`, `callback`,
//! `methods`, `connectors`; they record through `audit`) <- `Services` (this file).
//! No service calls another service; the token keeper knows nothing of method calls.

pub mod accounts;
pub mod audit;
pub mod cache;
pub mod callback;
pub mod clock;
pub mod connectors;
pub mod error;
pub mod installs;
pub mod keys;
pub mod methods;
pub mod pagination;
pub mod resolve;
mod return_url;
pub mod sealing;
pub mod settings;
pub mod setups;
pub mod tenant;
pub mod tokens;

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
    settings: Arc<Settings>,
    db: Db,
    catalog: Catalog,
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
        let crypto = Arc::new(KeyRing::load_or_create(&settings.secrets.key_file)?);
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
        });
        let tokens = Arc::new(TokenKeeper::new(
            &settings.tokens,
            tokens::DbTokenStore::new(db.clone()),
            tokens::OAuthTokenEndpoint {
                resolver: resolver.clone(),
                crypto: crypto.clone(),
                outbound: outbound.clone(),
                redirect_uri: redirect_uri.clone(),
                clock: clock.clone(),
            },
            clock,
            cache.clone(),
        ));
        let audit = Arc::new(audit::AuditLog::new(
            db.clone(),
            crypto.clone(),
            &settings.audit,
        ));
        Ok(Self {
            keys: Arc::new(keys::KeyService {
                db: db.clone(),
                keys: keys::KeyCache::new(settings.api_keys.cache_ttl_ms),
                crypto: crypto.clone(),
                audit: audit.clone(),
            }),
            setups: Arc::new(setups::SetupService {
                db: db.clone(),
                crypto: crypto.clone(),
                resolver: resolver.clone(),
                cache: cache.clone(),
                audit: audit.clone(),
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
            }),
            callback: Arc::new(callback::CallbackService {
                db: db.clone(),
                crypto: crypto.clone(),
                outbound: outbound.clone(),
                resolver: resolver.clone(),
                cache: cache.clone(),
                audit: audit.clone(),
            }),
            methods: Arc::new(methods::MethodService {
                settings: settings.clone(),
                db: db.clone(),
                crypto,
                outbound,
                resolver,
                cache,
                tokens: tokens.clone(),
                audit: audit.clone(),
            }),
            connectors: Arc::new(connectors::ConnectorService {
                catalog: catalog.clone(),
            }),
            tokens,
            audit,
            settings,
            db,
            catalog,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn db(&self) -> &Db {
        &self.db
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
