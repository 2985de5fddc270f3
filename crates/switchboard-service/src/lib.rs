//! Application services: tenants and API keys, connector setups, accounts, installs, the OAuth
//! callback, the token lifecycle (single flight per install, across replicas through a database
//! lease) and method calls with the hot-path caches. Handlers call exactly one function here.

pub mod accounts;
pub mod callback;
pub mod connectors;
pub mod error;
pub mod installs;
pub mod keys;
pub mod methods;
pub mod pagination;
pub mod settings;
pub mod setups;
pub mod tokens;

pub use error::{FieldError, ServiceError};

use std::sync::Arc;
use switchboard_config::Settings;
use switchboard_connector::Catalog;
use switchboard_crypto::KeyRing;
use switchboard_db::Db;
use switchboard_outbound::{Outbound, OutboundConfig};

/// The tenant a request is authenticated as. Only [`Services::authenticate`] creates one, so a
/// function taking `&TenantCtx` is tenant-scoped by its signature.
#[derive(Debug, Clone)]
pub struct TenantCtx {
    tenant_id: String,
    key_id: String,
}

impl TenantCtx {
    pub fn tenant_id(&self) -> &str {
        &self.tenant_id
    }
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

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

pub(crate) struct Inner {
    pub settings: Settings,
    pub db: Db,
    pub crypto: KeyRing,
    pub catalog: Catalog,
    pub outbound: Outbound,
    pub redirect_uri: String,
    pub keys: keys::KeyCache,
    pub installs: methods::InstallCache,
    pub tokens: tokens::TokenManager,
}

/// Every service of one Switchboard process. Cheap to clone.
#[derive(Clone)]
pub struct Services {
    pub(crate) inner: Arc<Inner>,
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
        let crypto = KeyRing::load_or_create(&settings.secrets.key_file)?;
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
        let keys = keys::KeyCache::new(settings.api_keys.cache_ttl_ms);
        let installs = methods::InstallCache::new(settings.tokens.install_cache_ttl_ms);
        let tokens = tokens::TokenManager::new(&settings.tokens);
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                db,
                crypto,
                catalog,
                outbound,
                redirect_uri,
                keys,
                installs,
                tokens,
            }),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// Applies pending migrations (serialised across replicas on PostgreSQL).
    pub async fn migrate(&self) -> Result<Vec<String>, ServiceError> {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || db.migrate())
            .await
            .map_err(ServiceError::internal)?
            .map_err(ServiceError::from)
    }

    /// Readiness: the database answers and the connector catalogue is loaded.
    pub async fn ready(&self) -> bool {
        self.inner.db.ping().await.is_ok() && self.inner.catalog.iter().next().is_some()
    }
}
