//! A tenant's connector setup (its app registration: endpoint, client id, client secret...).

use crate::cache::InstallCache;
use crate::error::ServiceError;
use crate::resolve::{needs_discovery, Resolver};
use crate::settings::{self, Layer};
use crate::tenant::TenantCtx;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;
use switchboard_core::{ms_to_rfc3339, now_ms, ConnectorId};
use switchboard_crypto::KeyRing;
use switchboard_db::repo::{capability, discovery, setups, webhooks};
use switchboard_db::Db;

use crate::signing_keys::{RotateIn, SetupKeys, SetupKeysOut, SigningKeyIn};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SetupOut {
    pub connector: String,
    /// Secret values are `{"set":true}`, never the value.
    #[schema(value_type = Object)]
    pub settings: Value,
    pub created_at: String,
    pub updated_at: String,
    /// Connectors with `oauth2_backend_services`: the hosted JWK Set URL to register with the
    /// EHR and the setup's keys (public facts only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_keys: Option<Vec<crate::signing_keys::SigningKeyOut>>,
    /// What SMART discovery found for the setup's FHIR base (connectors with `[discovery]` that
    /// leave an endpoint or the issuer to it); null when not read.
    pub discovered: Option<DiscoveredOut>,
    /// Connectors that declare every endpoint and their issuer but also `[discovery]` (Epic,
    /// Canvas, Medplum): why the best-effort discovery at the last save failed (URL and status
    /// only); absent when it succeeded or was not attempted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery_error: Option<String>,
    /// The connector's declared search parameters that the FHIR server's CapabilityStatement
    /// (`{fhir_base}metadata`, read at the last save) does not list: warnings, never a
    /// refusal. Empty when every one is listed or the statement was not read.
    pub capability_warnings: Vec<CapabilityWarningOut>,
    /// When the CapabilityStatement was read (the last save); null when not checked: the
    /// connector declares no `[discovery]`, or the setup's settings form no FHIR base.
    pub capability_checked_at: Option<String>,
    /// Why the CapabilityStatement could not be read at the last save (URL and HTTP status
    /// or the failure, never a secret); absent when it was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capability_error: Option<String>,
}

/// A declared search parameter the FHIR server does not list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CapabilityWarningOut {
    /// The connector method that sends it, e.g. `search_patients`.
    pub method: String,
    /// The resource type it searches, e.g. `Patient`.
    pub resource: String,
    /// The parameter's upstream name, e.g. `birthDate`.
    pub param: String,
}

/// The discovery fields of a setup: (discovered, discovery_error).
type DiscoveryView = (Option<DiscoveredOut>, Option<String>);

impl SetupOut {
    /// The response for a stored setup: its settings masked, its keys' public view, the
    /// discovery read for its FHIR base and its last capability check.
    fn new(
        connector_id: &ConnectorId,
        def: &switchboard_connector::ConnectorDef,
        values: &std::collections::BTreeMap<String, String>,
        row: &switchboard_db::ConnectorSetup,
        keys: Option<SetupKeysOut>,
        (discovered, discovery_error): DiscoveryView,
        checked: Option<&switchboard_db::CapabilityCheck>,
    ) -> Self {
        let (jwks_url, signing_keys) = match keys {
            Some(k) => (Some(k.jwks_url), Some(k.signing_keys)),
            None => (None, None),
        };
        let (capability_warnings, capability_checked_at, capability_error) = match checked {
            Some(c) => (
                serde_json::from_str(&c.warnings).unwrap_or_default(),
                Some(ms_to_rfc3339(c.checked_at)),
                c.error.clone(),
            ),
            None => (Vec::new(), None, None),
        };
        Self {
            connector: connector_id.to_string(),
            settings: settings::masked(def, values),
            created_at: ms_to_rfc3339(row.created_at),
            updated_at: ms_to_rfc3339(row.updated_at),
            jwks_url,
            signing_keys,
            discovered,
            discovery_error,
            capability_warnings,
            capability_checked_at,
            capability_error,
        }
    }
}

/// A SMART discovery document as `GET .../setup` shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DiscoveredOut {
    pub issuer: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    pub introspection_endpoint: Option<String>,
    pub capabilities: Vec<String>,
    pub code_challenge_methods_supported: Vec<String>,
    pub grant_types_supported: Vec<String>,
    pub scopes_supported: Vec<String>,
    /// RFC 9207: the server puts `iss` in authorization responses (then a missing `iss` is
    /// refused).
    pub authorization_response_iss_parameter_supported: bool,
    pub fetched_at: String,
}

impl DiscoveredOut {
    /// The document of a cached row, or the stored best-effort error.
    fn from_row(row: &switchboard_db::Discovery) -> Option<Result<Self, String>> {
        let d = match crate::resolve::cached_document(&row.document)? {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(Self {
            issuer: d.issuer,
            authorization_endpoint: d.authorization_endpoint,
            token_endpoint: d.token_endpoint,
            revocation_endpoint: d.revocation_endpoint,
            introspection_endpoint: d.introspection_endpoint,
            capabilities: d.capabilities,
            code_challenge_methods_supported: d.code_challenge_methods_supported,
            grant_types_supported: d.grant_types_supported,
            scopes_supported: d.scopes_supported,
            authorization_response_iss_parameter_supported: d
                .authorization_response_iss_parameter_supported,
            fetched_at: ms_to_rfc3339(row.fetched_at),
        }))
    }
}

/// Tenants' connector setups. A change drops every prepared install (they embed the setup).
pub struct SetupService {
    pub(crate) db: Db,
    pub(crate) crypto: Arc<KeyRing>,
    pub(crate) resolver: Arc<Resolver>,
    pub(crate) cache: Arc<InstallCache>,
    pub(crate) audit: Arc<crate::audit::AuditLog>,
    pub(crate) outbox: Arc<crate::webhooks::Outbox>,
    pub(crate) keys: Arc<SetupKeys>,
}

impl SetupService {
    /// Creates or replaces the setup. The body is validated as a whole before anything is
    /// written; secret values are sealed.
    pub async fn put_setup(
        &self,
        t: &TenantCtx,
        connector_id: &ConnectorId,
        input: &Map<String, Value>,
    ) -> Result<SetupOut, ServiceError> {
        self.put_setup_with_key(t, connector_id, input, None).await
    }

    /// [`Self::put_setup`] with the setup's `signing_key` (backend-services connectors): a key
    /// is generated when the setup has none, an uploaded key replaces the set. A bad key is a
    /// 422 and nothing is written.
    pub async fn put_setup_with_key(
        &self,
        t: &TenantCtx,
        connector_id: &ConnectorId,
        input: &Map<String, Value>,
        signing_key: Option<&SigningKeyIn>,
    ) -> Result<SetupOut, ServiceError> {
        let connector = self.resolver.connector(connector_id)?;
        let def = &connector.def;
        let values = settings::validate_input(def, input, Layer::Setup)?;
        self.resolver.check_setting_urls(&connector, &values)?;
        // The FHIR base as this setup renders it (when it renders without install overrides).
        let merged = switchboard_connector::merge_settings(def, &values, &Default::default());
        if let Some(base) = connector
            .render_fhir_base(&merged)
            .ok()
            .and_then(|b| url::Url::parse(&b).ok())
        {
            self.resolver.check_upstream_url("fhir_base", &base)?;
        }
        // Discovery before anything is written: a failure is a 422 naming the URL and status,
        // except for connectors that declare every endpoint (best effort, never blocking).
        // The CapabilityStatement check runs beside it and never blocks.
        let discovery = async {
            if def.discovery.is_some() {
                self.discover_for(t, &connector, &values, needs_discovery(def))
                    .await
            } else {
                Ok(None)
            }
        };
        let (discovered_base, checked) = tokio::join!(
            discovery,
            self.check_capabilities(&t.tenant_id, &connector, &values)
        );
        let discovered_base = discovered_base?;
        let plan = self
            .keys
            .plan(&t.tenant_id, &connector, signing_key)
            .await?;
        let aad = settings::setup_aad(&t.tenant_id, connector_id);
        let stored = settings::seal(&self.crypto, def, &values, &aad);
        let (tenant, cid, now) = (t.tenant_id.clone(), connector_id.to_string(), now_ms());
        let event = self.outbox.setup_event(&tenant, &cid, "saved");
        let keys = self.keys.clone();
        let capability_row = checked.clone();
        let row = self
            .db
            .run(move |conn| {
                conn.write_transaction(|conn| {
                    let row = setups::upsert(conn, &tenant, &cid, &stored, now)?;
                    keys.apply(conn, &tenant, &cid, &plan)?;
                    match &capability_row {
                        Some(c) => capability::upsert(conn, c)?,
                        None => {
                            capability::delete_for(conn, &tenant, &cid)?;
                        }
                    }
                    // Last: on PostgreSQL the tenant's event lock is held from here to COMMIT.
                    webhooks::emit(conn, &event)?;
                    Ok(row)
                })
            })
            .await?;
        self.outbox.committed();
        let key_view = self.keys.view(&t.tenant_id, connector_id).await?;
        self.cache.clear();
        let target = crate::audit::Target {
            connector_id: Some(connector_id.to_string()),
            ..Default::default()
        };
        self.audit
            .admin(&t.tenant_id, Some(t), "setup.saved", 200, target)?;
        let discovery = match discovered_base {
            Some(base) => self.cached(t, connector_id, &base).await?,
            None => (None, None),
        };
        Ok(SetupOut::new(
            connector_id,
            def,
            &values,
            &row,
            key_view,
            discovery,
            checked.as_ref(),
        ))
    }

    /// Reads discovery for the FHIR base the setup values form (when they form one: a base
    /// left to install overrides is discovered when the install is created). Returns the base.
    async fn discover_for(
        &self,
        t: &TenantCtx,
        connector: &switchboard_connector::Connector,
        values: &std::collections::BTreeMap<String, String>,
        required: bool,
    ) -> Result<Option<String>, ServiceError> {
        let merged =
            switchboard_connector::merge_settings(&connector.def, values, &Default::default());
        let Ok(ctx) = connector.context(merged) else {
            return Ok(None);
        };
        let Some(base) = ctx
            .fhir_base
            .as_deref()
            .and_then(|b| url::Url::parse(b).ok())
        else {
            return Ok(None);
        };
        self.resolver.check_upstream_url("fhir_base", &base)?;
        if required {
            self.resolver
                .discovery(&t.tenant_id, connector, &base, &ctx, true)
                .await?;
        } else {
            self.resolver
                .discovery_best_effort(&t.tenant_id, connector, &base, &ctx)
                .await?;
        }
        Ok(Some(base.to_string()))
    }

    /// For a connector declaring `[discovery]`, reads the CapabilityStatement of the FHIR base
    /// the setup values form (none formed, or no `[discovery]`: no check, `None`) and lists the declared search parameters it does not list. Best effort: waits at
    /// most `oauth.discovery_timeout_ms`, goes through the outbound policy with the connector's
    /// `[discovery] headers` (no credentials), and a failure becomes the row's `error`.
    async fn check_capabilities(
        &self,
        tenant_id: &str,
        connector: &switchboard_connector::Connector,
        values: &std::collections::BTreeMap<String, String>,
    ) -> Option<switchboard_db::CapabilityCheck> {
        use switchboard_engine::capability;
        // Only connectors that declare `[discovery]` contact their FHIR base at save (the
        // others' setup save connects to nothing, a guarantee tests hold).
        connector.def.discovery.as_ref()?;
        let merged =
            switchboard_connector::merge_settings(&connector.def, values, &Default::default());
        let ctx = connector.context(merged).ok()?;
        let base = url::Url::parse(ctx.fhir_base.as_deref()?).ok()?;
        let headers = connector.render_discovery_headers(&ctx).unwrap_or_default();
        let read = async {
            let http = self
                .resolver
                .outbound
                .client_for(&base)
                .map_err(|e| format!("refused: {e}"))?;
            capability::read(http, &base, &headers)
                .await
                .map_err(|e| e.to_string())
        };
        let wait = self.resolver.discovery_timeout;
        let read = match tokio::time::timeout(wait, read).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "{} did not answer within {} ms",
                capability::metadata_url(&base),
                wait.as_millis()
            )),
        };
        let (warnings, error) = match read {
            Ok(server) => (capability::unlisted_params(connector, &server), None),
            Err(e) => {
                tracing::info!(connector = %connector.def.id, error = %e, "CapabilityStatement not read");
                (
                    Vec::new(),
                    Some(format!("CapabilityStatement not read: {e}")),
                )
            }
        };
        Some(switchboard_db::CapabilityCheck {
            tenant_id: tenant_id.to_owned(),
            connector_id: connector.def.id.clone(),
            fhir_base: base.to_string(),
            warnings: serde_json::to_string(&warnings).unwrap_or_else(|_| "[]".into()),
            error,
            checked_at: now_ms(),
        })
    }

    async fn cached(
        &self,
        t: &TenantCtx,
        connector_id: &ConnectorId,
        base: &str,
    ) -> Result<DiscoveryView, ServiceError> {
        let (tenant, cid, base) = (
            t.tenant_id.clone(),
            connector_id.to_string(),
            base.to_owned(),
        );
        let row = self
            .db
            .run(move |conn| discovery::find(conn, &tenant, &cid, &base))
            .await?;
        Ok(match row.as_ref().and_then(DiscoveredOut::from_row) {
            Some(Ok(d)) => (Some(d), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        })
    }

    pub async fn get_setup(
        &self,
        t: &TenantCtx,
        connector_id: &ConnectorId,
    ) -> Result<SetupOut, ServiceError> {
        let connector = self.resolver.connector(connector_id)?;
        let (tenant, cid) = (t.tenant_id.clone(), connector_id.to_string());
        let row = self
            .db
            .run(move |conn| setups::find(conn, &tenant, &cid))
            .await?
            .ok_or_else(|| ServiceError::NotFound("this connector has no setup".into()))?;
        let values = settings::open(
            &self.crypto,
            &row.settings,
            &settings::setup_aad(&t.tenant_id, connector_id),
        )?;
        let key_view = self.keys.view(&t.tenant_id, connector_id).await?;
        let (tenant, cid) = (t.tenant_id.clone(), connector_id.to_string());
        let checked = self
            .db
            .run(move |conn| capability::find(conn, &tenant, &cid))
            .await?;
        let discovery = if connector.def.discovery.is_some() {
            let merged =
                switchboard_connector::merge_settings(&connector.def, &values, &Default::default());
            let base = connector
                .context(merged)
                .ok()
                .and_then(|c| c.fhir_base)
                .and_then(|b| url::Url::parse(&b).ok());
            match base {
                Some(base) => self.cached(t, connector_id, base.as_str()).await?,
                None => (None, None),
            }
        } else {
            (None, None)
        };
        Ok(SetupOut::new(
            connector_id,
            &connector.def,
            &values,
            &row,
            key_view,
            discovery,
            checked.as_ref(),
        ))
    }

    /// `POST /v1/connectors/{c}/setup/keys/rotate`: publishes a new key now; it signs after
    /// `backend_services.key_overlap_secs`, and the old key leaves the JWK Set one overlap later.
    pub async fn rotate_keys(
        &self,
        t: &TenantCtx,
        connector_id: &ConnectorId,
        input: &RotateIn,
    ) -> Result<SetupKeysOut, ServiceError> {
        let connector = self.resolver.connector(connector_id)?;
        let out = self.keys.rotate(&t.tenant_id, &connector, input).await?;
        let target = crate::audit::Target {
            connector_id: Some(connector_id.to_string()),
            ..Default::default()
        };
        self.audit
            .admin(&t.tenant_id, Some(t), "setup.keys_rotated", 200, target)?;
        Ok(out)
    }

    pub async fn delete_setup(
        &self,
        t: &TenantCtx,
        connector_id: &ConnectorId,
    ) -> Result<(), ServiceError> {
        self.resolver.connector(connector_id)?;
        let (tenant, cid) = (t.tenant_id.clone(), connector_id.to_string());
        let event = self.outbox.setup_event(&tenant, &cid, "deleted");
        let deleted = self
            .db
            .run(move |conn| {
                conn.write_transaction(|conn| {
                    SetupKeys::delete_all(conn, &tenant, &cid)?;
                    discovery::delete_for(conn, &tenant, &cid)?;
                    capability::delete_for(conn, &tenant, &cid)?;
                    let deleted = setups::delete(conn, &tenant, &cid)?;
                    if deleted {
                        webhooks::emit(conn, &event)?;
                    }
                    Ok(deleted)
                })
            })
            .await?;
        self.outbox.committed();
        self.cache.clear();
        if deleted {
            let target = crate::audit::Target {
                connector_id: Some(connector_id.to_string()),
                ..Default::default()
            };
            self.audit
                .admin(&t.tenant_id, Some(t), "setup.deleted", 204, target)
        } else {
            Err(ServiceError::NotFound("this connector has no setup".into()))
        }
    }
}
