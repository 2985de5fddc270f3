//! Settings of a Switchboard process: the embedded `config/default.toml`, then
//! `config/default.toml` and `config/{SWITCHBOARD_ENV}.toml` from the working directory, then
//! `SWITCHBOARD__SECTION__KEY` environment variables; validated once at start-up.

use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The embedded defaults (also the documentation of every key).
pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub server: ServerSettings,
    pub connectors: ConnectorsSettings,
    pub secrets: SecretsSettings,
    pub security: SecuritySettings,
    pub oauth: OAuthSettings,
    pub upstream: UpstreamSettings,
    pub tokens: TokenSettings,
    pub api_keys: ApiKeySettings,
    pub log: LogSettings,
    pub metrics: MetricsSettings,
    pub audit: AuditSettings,
    pub limits: LimitsSettings,
    pub webhooks: WebhookSettings,
    pub backend_services: BackendServicesSettings,
    pub console: ConsoleSettings,
    pub mcp: McpSettings,
    pub bulk: BulkSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub pool_size: u32,
    /// How long a request waits for a pooled connection before it is answered 503.
    pub pool_timeout_ms: u64,
}

impl DatabaseSettings {
    pub fn pool_timeout(&self) -> Duration {
        Duration::from_millis(self.pool_timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub bind: String,
    pub public_url: String,
    pub workers: usize,
    pub max_body_bytes: usize,
    /// On SIGTERM (graceful shutdown), how long requests in flight may finish before the
    /// workers stop and drop them (actix's shutdown timeout; SIGINT stops at once).
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorsSettings {
    pub dir: PathBuf,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsSettings {
    pub key_file: PathBuf,
    /// The key ring document itself (what the key file holds), for containers
    /// (`SWITCHBOARD__SECRETS__KEY`); empty: read `key_file`. When set, the file is not used.
    pub key: String,
    /// How often a running server re-reads `key_file` and swaps in a changed key ring.
    pub reload_interval_ms: u64,
}

impl SecretsSettings {
    /// The key ring document from `secrets.key`, when one is configured.
    pub fn inline_key(&self) -> Option<&str> {
        Some(self.key.trim()).filter(|k| !k.is_empty())
    }

    pub fn reload_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.reload_interval_ms)
    }
}

impl std::fmt::Debug for SecretsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `key` holds key material: only say whether it is set.
        f.debug_struct("SecretsSettings")
            .field("key_file", &self.key_file)
            .field("key", &self.inline_key().map(|_| "<set>"))
            .field("reload_interval_ms", &self.reload_interval_ms)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    pub allow_insecure_upstreams: bool,
    pub allowed_return_urls: Vec<String>,
    /// Origins (`https://host[:port]`) under which a tenant may add its own return-URL prefixes.
    pub tenant_return_url_origins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthSettings {
    pub state_ttl_secs: u64,
    /// How long a SMART discovery document (`.well-known/smart-configuration`) is used before it
    /// is read again (issue 11).
    pub discovery_ttl_secs: u64,
    /// How long a setup save waits for SMART discovery of a connector that declares every
    /// endpoint and its issuer (best effort: a slower or failed read is shown as
    /// `discovery_error`, the setup is still saved). It also bounds the CapabilityStatement
    /// check at setup save (`capability_error`).
    pub discovery_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub max_response_bytes: usize,
    pub max_retries: u32,
    pub max_retry_wait_ms: u64,
    pub max_pages: u32,
    /// Deadline of one method call's upstream work (all pages and retries together).
    pub call_deadline_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    pub refresh_margin_max_secs: u64,
    pub lease_ttl_ms: u64,
    pub wait_timeout_ms: u64,
    pub refresh_backoff_initial_ms: u64,
    pub refresh_backoff_max_ms: u64,
    pub background_refresh_interval_secs: u64,
    pub background_refresh_horizon_secs: u64,
    pub install_cache_ttl_ms: u64,
    // Issue 10: crash recovery, detached refreshes, polite background refresh.
    /// How often a process writes its heartbeat (`instances` row).
    pub instance_heartbeat_ms: u64,
    /// A lease whose holder's heartbeat is older than this is taken over at once (the holder died).
    pub instance_stale_ms: u64,
    /// Instance rows without a heartbeat for this long are deleted.
    pub instance_purge_after_secs: u64,
    /// On shutdown, how long in-flight refreshes are awaited so they commit.
    pub shutdown_refresh_wait_ms: u64,
    /// `polite` (idle installs only ahead of refresh-token lapse and for the idle check) or
    /// `eager` (every install whose token expires within the horizon, used or not).
    pub background_refresh_policy: BackgroundRefreshPolicy,
    /// Polite policy: an install neither used nor refreshed for this long is refreshed once, to
    /// detect a revoked grant.
    pub idle_check_interval_secs: u64,
    /// Polite policy: refresh an idle install this long before its refresh token lapses.
    pub refresh_lapse_margin_secs: u64,
}

/// Which installs the background refresher refreshes (`tokens.background_refresh_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackgroundRefreshPolicy {
    /// Idle installs only to keep their refresh token alive and, on a slow cadence, to detect a
    /// revoked grant; installs in use are refreshed by their calls.
    Polite,
    /// Every authorized install whose access token expires within the horizon (before issue 10).
    Eager,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySettings {
    pub cache_ttl_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

/// The PHI audit trail: whether it is written, its in-memory buffer, what a full buffer does,
/// and how long records are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    pub enabled: bool,
    /// Records waiting for the writer; beyond this a record is dropped (or refused).
    pub buffer: usize,
    /// A full buffer fails the call with 503 (and Retry-After) instead of dropping the record.
    pub fail_closed: bool,
    /// Records older than this many days are purged (hourly by the server, `audit purge`).
    pub retention_days: u64,
}

impl AuditSettings {
    /// The retention as milliseconds.
    pub fn retention_ms(&self) -> i64 {
        i64::try_from(self.retention_days.saturating_mul(86_400_000)).unwrap_or(i64::MAX)
    }
}

/// Limits: the request rate per API key, per-tenant quotas, the unknown-key cache and the
/// sharing of connector-declared outbound limits across replicas. A 0 turns a rate or a quota
/// off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSettings {
    /// Requests per minute per API key (refill rate of its bucket); 0 = no limit.
    pub api_key_requests_per_minute: u32,
    /// Requests an API key may send at once before the rate applies.
    pub api_key_burst: u32,
    pub max_accounts_per_tenant: u64,
    pub max_installs_per_tenant: u64,
    pub max_api_keys_per_tenant: u64,
    pub max_pending_oauth_states_per_tenant: u64,
    /// How long an unknown API key is answered 401 without a database read.
    pub bad_key_cache_ttl_ms: u64,
    /// Most unknown keys remembered.
    pub bad_key_cache_size: usize,
    /// Database lookups of uncached keys at once; 0 = half of `database.pool_size` (at least 1).
    pub key_lookup_concurrency: usize,
    /// Replicas sharing the connector-declared outbound limits (each enforces limit / replicas).
    pub replicas: u32,
    /// Longest wait for a connector-declared outbound limit before 429.
    pub outbound_queue_ms: u64,
    /// Connect sessions (hosted connect page links) not yet used or expired, per tenant.
    pub max_pending_connect_sessions_per_tenant: u64,
}

impl LimitsSettings {
    /// The effective number of concurrent key lookups for a pool of `pool_size`.
    pub fn key_lookups(&self, pool_size: u32) -> usize {
        match self.key_lookup_concurrency {
            0 => (pool_size as usize / 2).max(1),
            n => n,
        }
    }
}

/// Install-status webhooks: how the dispatcher polls the outbox, sends and retries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Run the dispatcher in this process (every replica may; they share the queue).
    pub dispatch: bool,
    /// How often the dispatcher looks for due deliveries (events written here wake it at once).
    pub poll_interval_ms: u64,
    /// Timeout of one delivery request.
    pub timeout_ms: u64,
    /// Endpoints served at once by one dispatcher (each still gets one delivery at a time).
    pub concurrency: usize,
    /// The endpoint lease a dispatcher holds while delivering; must exceed `timeout_ms`.
    pub lease_ttl_ms: u64,
    /// First retry delay; doubles per failed attempt up to `retry_max_interval_secs`.
    pub retry_initial_secs: u64,
    pub retry_max_interval_secs: u64,
    /// A delivery is retried for this long (from its event), then marked failed.
    pub retry_for_secs: u64,
    /// `install.refresh_failing` after this many consecutive transient refresh failures.
    pub refresh_failing_after: u32,
    /// Events older than this many days whose deliveries are all finished (delivered or
    /// failed) are purged with their deliveries, hourly by the server.
    pub retention_days: u64,
    /// An endpoint whose attempts have all failed for this long is disabled by the
    /// dispatcher (its pending deliveries are kept); 0: never.
    pub disable_after_failing_secs: u64,
}

impl WebhookSettings {
    /// The retention as milliseconds.
    pub fn retention_ms(&self) -> i64 {
        i64::try_from(self.retention_days.saturating_mul(86_400_000)).unwrap_or(i64::MAX)
    }

    /// `disable_after_failing_secs` as milliseconds; None when it is 0 (never).
    pub fn disable_after_failing_ms(&self) -> Option<i64> {
        (self.disable_after_failing_secs > 0).then(|| {
            i64::try_from(self.disable_after_failing_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
        })
    }
}

/// FHIR Bulk Data export jobs: the background poller of status URLs, its bounds on the EHR's
/// `Retry-After`, the file download deadline and the retention of finished exports.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkSettings {
    /// Run the job poller in this process (every replica may; they share the jobs).
    pub poll: bool,
    /// How often the poller looks for jobs whose next poll is due.
    pub poll_interval_ms: u64,
    /// The per-job lease a poller holds while polling; must exceed upstream.request_timeout_ms.
    pub lease_ttl_ms: u64,
    /// Wait before the next poll when the EHR sends no `Retry-After`.
    pub default_retry_after_secs: u64,
    /// Bounds on the EHR's `Retry-After` (seconds or an HTTP date), clamped into them.
    pub min_retry_after_secs: u64,
    pub max_retry_after_secs: u64,
    /// Deadline of one output file download streamed to the caller (no size cap applies).
    pub file_deadline_secs: u64,
    /// A completed export is deleted upstream this long after completion when its files were
    /// not all downloaded (it is deleted at once after the last one); its files are no longer
    /// served then (`expired`).
    pub retention_secs: u64,
}

impl BulkSettings {
    pub fn retention_ms(&self) -> i64 {
        i64::try_from(self.retention_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }
}

/// SMART Backend Services keys: the setup key rotation schedule and the hosted JWK Set's
/// cache lifetime.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendServicesSettings {
    /// After `POST .../setup/keys/rotate` the new key is published this long before it signs,
    /// and the old key stays published this long after it stopped signing.
    pub key_overlap_secs: u64,
    /// `Cache-Control: public, max-age` of `GET /jwks/{id}.json`; must be below the overlap so
    /// a verifier's cached copy holds the next key before it is used.
    pub jwks_max_age_secs: u64,
}

impl BackendServicesSettings {
    pub fn key_overlap_ms(&self) -> i64 {
        i64::try_from(self.key_overlap_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }
}

/// The web console's sessions (issue 15): idle and absolute lifetimes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    /// A session ends after this many seconds without a request.
    pub session_idle_secs: u64,
    /// A session ends this many seconds after sign-in, however active.
    pub session_max_secs: u64,
}

/// Agent sessions and the MCP server at `/mcp` (issue 15).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpSettings {
    /// Browser origins (`http(s)://host[:port]`) allowed to call `/mcp` besides the origin of
    /// `server.public_url`; a request with any other `Origin` header is 403. Requests without
    /// `Origin` (non-browser clients) are not affected.
    pub allowed_origins: Vec<String>,
    /// Lifetime of an agent session whose request names no `expires_in`.
    pub session_default_ttl_secs: u64,
    /// The largest `expires_in` a session request may ask for (422 beyond).
    pub session_max_ttl_secs: u64,
    /// Live (neither revoked nor expired) agent sessions a tenant may hold; 0 = no quota.
    pub max_sessions_per_tenant: u64,
}

/// Where `/metrics` is served and whether it needs a token. `Debug` hides the token.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// `HOST:PORT` of a listener of its own; empty serves `/metrics` on `server.bind`.
    pub bind: String,
    /// A bearer token `/metrics` requires; empty leaves it open.
    pub token: String,
}

impl MetricsSettings {
    /// The separate listener's address, if one is configured.
    pub fn separate_bind(&self) -> Option<&str> {
        Some(self.bind.trim()).filter(|b| !b.is_empty())
    }

    /// The token scrapes must present, if one is configured.
    pub fn required_token(&self) -> Option<&str> {
        Some(self.token.as_str()).filter(|t| !t.is_empty())
    }
}

impl std::fmt::Debug for MetricsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsSettings")
            .field("bind", &self.bind)
            .field("token", &self.required_token().map(|_| "***"))
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Settings {
    /// Loads from the current working directory and the process environment.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_from(Path::new("config"), std::env::vars())
    }

    /// Loads with an explicit config directory and environment (tests pass their own).
    pub fn load_from(
        dir: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: std::collections::HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("SWITCHBOARD"))
            .collect();
        let mut builder = Config::builder()
            .add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml))
            .add_source(File::from(dir.join("default.toml")).required(false));
        if let Some(name) = env.get("SWITCHBOARD_ENV").filter(|n| !n.is_empty()) {
            builder =
                builder.add_source(File::from(dir.join(format!("{name}.toml"))).required(true));
        }
        let env_source = Environment::with_prefix("SWITCHBOARD")
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("security.allowed_return_urls")
            .with_list_parse_key("security.tenant_return_url_origins")
            .with_list_parse_key("mcp.allowed_origins")
            .try_parsing(true)
            .source(Some(
                env.into_iter()
                    .filter(|(k, _)| k != "SWITCHBOARD_ENV")
                    .collect(),
            ));
        let settings: Settings = builder.add_source(env_source).build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        let db = &self.database.url;
        if !(db.starts_with("sqlite://")
            || db.starts_with("postgres://")
            || db.starts_with("postgresql://"))
        {
            return invalid(
                "database.url",
                "must start with sqlite://, postgres:// or postgresql://".into(),
            );
        }
        if self.audit.enabled && self.audit.buffer == 0 {
            return invalid("audit.buffer", "must be at least 1".into());
        }
        if self.audit.retention_days == 0 {
            return invalid("audit.retention_days", "must be at least 1".into());
        }
        let wh = &self.webhooks;
        if wh.retention_days == 0 {
            return invalid("webhooks.retention_days", "must be at least 1".into());
        }
        if wh.poll_interval_ms == 0 || wh.concurrency == 0 || wh.refresh_failing_after == 0 {
            return invalid(
                "webhooks",
                "poll_interval_ms, concurrency and refresh_failing_after must be at least 1".into(),
            );
        }
        if wh.lease_ttl_ms <= wh.timeout_ms {
            return invalid(
                "webhooks.lease_ttl_ms",
                "must exceed webhooks.timeout_ms".into(),
            );
        }
        if wh.retry_initial_secs == 0 || wh.retry_max_interval_secs < wh.retry_initial_secs {
            return invalid(
                "webhooks.retry_initial_secs",
                "must be at least 1 and at most webhooks.retry_max_interval_secs".into(),
            );
        }
        let bulk = &self.bulk;
        if bulk.poll_interval_ms == 0 || bulk.file_deadline_secs == 0 || bulk.retention_secs == 0 {
            return invalid(
                "bulk",
                "poll_interval_ms, file_deadline_secs and retention_secs must be at least 1".into(),
            );
        }
        if bulk.min_retry_after_secs == 0 || bulk.max_retry_after_secs < bulk.min_retry_after_secs {
            return invalid(
                "bulk.min_retry_after_secs",
                "must be at least 1 and at most bulk.max_retry_after_secs".into(),
            );
        }
        if bulk.lease_ttl_ms <= self.upstream.request_timeout_ms {
            return invalid(
                "bulk.lease_ttl_ms",
                "must exceed upstream.request_timeout_ms".into(),
            );
        }
        if self.secrets.reload_interval_ms == 0 {
            return invalid("secrets.reload_interval_ms", "must be at least 1".into());
        }
        if self.database.pool_size == 0 {
            return invalid("database.pool_size", "must be at least 1".into());
        }
        if self.database.pool_timeout_ms == 0 {
            return invalid("database.pool_timeout_ms", "must be at least 1".into());
        }
        match url::Url::parse(&self.server.public_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.query().is_none() => {}
            _ => {
                return invalid(
                    "server.public_url",
                    "must be an absolute http(s) URL without query".into(),
                )
            }
        }
        if self.server.bind.parse::<std::net::SocketAddr>().is_err() {
            return invalid("server.bind", "must be HOST:PORT with an IP address".into());
        }
        for prefix in &self.security.allowed_return_urls {
            match url::Url::parse(prefix) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => {
                    return invalid(
                        "security.allowed_return_urls",
                        "each entry must be an absolute http(s) URL prefix".into(),
                    )
                }
            }
        }
        for origin in &self.security.tenant_return_url_origins {
            match url::Url::parse(origin) {
                Ok(u)
                    if matches!(u.scheme(), "http" | "https")
                        && u.host().is_some()
                        && u.path() == "/"
                        && u.query().is_none()
                        && u.username().is_empty()
                        && u.password().is_none() => {}
                _ => {
                    return invalid(
                        "security.tenant_return_url_origins",
                        "each entry must be an origin: http(s)://host[:port] with no path".into(),
                    )
                }
            }
        }
        if self.upstream.call_deadline_ms == 0 {
            return invalid("upstream.call_deadline_ms", "must be at least 1".into());
        }
        if self.limits.replicas == 0 {
            return invalid("limits.replicas", "must be at least 1".into());
        }
        if self.limits.api_key_requests_per_minute > 0 && self.limits.api_key_burst == 0 {
            return invalid(
                "limits.api_key_burst",
                "must be at least 1 when limits.api_key_requests_per_minute is set".into(),
            );
        }
        if self.upstream.max_pages == 0 {
            return invalid("upstream.max_pages", "must be at least 1".into());
        }
        if self.tokens.lease_ttl_ms <= self.upstream.request_timeout_ms {
            return invalid(
                "tokens.lease_ttl_ms",
                "must exceed upstream.request_timeout_ms (a refresh must end before its lease can be taken over)".into(),
            );
        }
        if self.tokens.instance_stale_ms < 2 * self.tokens.instance_heartbeat_ms.max(1) {
            return invalid(
                "tokens.instance_stale_ms",
                "must be at least twice tokens.instance_heartbeat_ms (one late heartbeat must not look like a crash)".into(),
            );
        }
        if let Some(bind) = self.metrics.separate_bind() {
            if bind.parse::<std::net::SocketAddr>().is_err() {
                return invalid(
                    "metrics.bind",
                    "must be empty or HOST:PORT with an IP address".into(),
                );
            }
        }
        if self
            .metrics
            .required_token()
            .is_some_and(|t| t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return invalid(
                "metrics.token",
                "must be empty or at least 16 characters without whitespace".into(),
            );
        }
        if self.console.session_idle_secs == 0
            || self.console.session_max_secs < self.console.session_idle_secs
        {
            return invalid(
                "console.session_max_secs",
                "console.session_idle_secs must be positive and session_max_secs at least it"
                    .into(),
            );
        }
        let mcp = &self.mcp;
        if mcp.session_default_ttl_secs == 0
            || mcp.session_max_ttl_secs < mcp.session_default_ttl_secs
        {
            return invalid(
                "mcp.session_default_ttl_secs",
                "must be at least 1 and at most mcp.session_max_ttl_secs".into(),
            );
        }
        for origin in &mcp.allowed_origins {
            match url::Url::parse(origin) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.path() == "/" => {}
                _ => {
                    return invalid(
                        "mcp.allowed_origins",
                        "each entry must be an origin: http(s)://host[:port] with no path".into(),
                    )
                }
            }
        }
        if self.backend_services.key_overlap_secs <= self.backend_services.jwks_max_age_secs {
            return invalid(
                "backend_services.key_overlap_secs",
                "must exceed backend_services.jwks_max_age_secs (verifiers must see the next key before it signs)".into(),
            );
        }
        if self.log.level.trim().is_empty() {
            return invalid("log.level", "must not be empty".into());
        }
        Ok(())
    }

    /// `{public_url}/connector/callback`, byte for byte what must be registered with each EHR.
    pub fn redirect_uri(&self) -> String {
        format!(
            "{}/connector/callback",
            self.server.public_url.trim_end_matches('/')
        )
    }

    /// The database URL with any password replaced, for logs.
    pub fn database_url_redacted(&self) -> String {
        match url::Url::parse(&self.database.url) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            _ => self.database.url.clone(),
        }
    }
}

impl UpstreamSettings {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn max_retry_wait(&self) -> Duration {
        Duration::from_millis(self.max_retry_wait_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn embedded_defaults_match_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::load_from(dir.path(), env(&[])).unwrap();
        assert_eq!(s.database.url, "sqlite://data/switchboard.db");
        assert_eq!(s.server.bind, "127.0.0.1:8080");
        assert_eq!(s.server.public_url, "http://127.0.0.1:8080");
        assert_eq!(s.connectors.dir, PathBuf::from("connectors"));
        assert_eq!(s.secrets.key_file, PathBuf::from("data/secret.key"));
        assert!(!s.security.allow_insecure_upstreams);
        assert!(s.security.allowed_return_urls.is_empty());
        assert_eq!(s.redirect_uri(), "http://127.0.0.1:8080/connector/callback");
    }

    #[test]
    fn env_overrides_files_and_parses_lists() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("default.toml"),
            "[server]\nbind = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("staging.toml"),
            "[server]\npublic_url = \"https://sb.example\"\n",
        )
        .unwrap();
        let s = Settings::load_from(
            dir.path(),
            env(&[
                ("SWITCHBOARD_ENV", "staging"),
                ("SWITCHBOARD__DATABASE__URL", "postgres://u:pw@localhost/db"),
                ("SWITCHBOARD__SECURITY__ALLOW_INSECURE_UPSTREAMS", "true"),
                (
                    "SWITCHBOARD__SECURITY__ALLOWED_RETURN_URLS",
                    "https://a.example/,https://b.example/x",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(s.server.bind, "127.0.0.1:9000");
        assert_eq!(s.server.public_url, "https://sb.example");
        assert_eq!(s.database.url, "postgres://u:pw@localhost/db");
        assert!(s.security.allow_insecure_upstreams);
        assert_eq!(
            s.security.allowed_return_urls,
            vec!["https://a.example/", "https://b.example/x"]
        );
        assert!(!s.database_url_redacted().contains("pw"));
    }

    #[test]
    fn invalid_values_are_rejected_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let err = Settings::load_from(
            dir.path(),
            env(&[("SWITCHBOARD__DATABASE__URL", "mysql://x")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("database.url"), "{err}");
        let err = Settings::load_from(
            dir.path(),
            env(&[("SWITCHBOARD__SERVER__PUBLIC_URL", "not a url")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("server.public_url"), "{err}");
        let err = Settings::load_from(
            dir.path(),
            env(&[("SWITCHBOARD__TOKENS__LEASE_TTL_MS", "30000")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("tokens.lease_ttl_ms"), "{err}");
    }

    #[test]
    fn metrics_keys_default_to_the_main_listener_open_and_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::load_from(dir.path(), env(&[])).unwrap();
        assert_eq!(s.metrics.separate_bind(), None);
        assert_eq!(s.metrics.required_token(), None);
        let s = Settings::load_from(
            dir.path(),
            env(&[
                ("SWITCHBOARD__METRICS__BIND", "127.0.0.1:9100"),
                ("SWITCHBOARD__METRICS__TOKEN", "scrape-token-0123456789"),
            ]),
        )
        .unwrap();
        assert_eq!(s.metrics.separate_bind(), Some("127.0.0.1:9100"));
        assert_eq!(s.metrics.required_token(), Some("scrape-token-0123456789"));
        assert!(!format!("{s:?}").contains("scrape-token-0123456789"));
        for (key, value, name) in [
            ("SWITCHBOARD__METRICS__BIND", "localhost", "metrics.bind"),
            ("SWITCHBOARD__METRICS__TOKEN", "short", "metrics.token"),
        ] {
            let err = Settings::load_from(dir.path(), env(&[(key, value)])).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn missing_environment_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Settings::load_from(dir.path(), env(&[("SWITCHBOARD_ENV", "nope")])).is_err());
    }

    #[test]
    fn shutdown_grace_defaults_to_thirty_seconds_and_is_configurable() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::load_from(dir.path(), env(&[])).unwrap();
        assert_eq!(s.server.shutdown_grace_secs, 30);
        let s = Settings::load_from(
            dir.path(),
            env(&[("SWITCHBOARD__SERVER__SHUTDOWN_GRACE_SECS", "3")]),
        )
        .unwrap();
        assert_eq!(s.server.shutdown_grace_secs, 3);
    }
}
