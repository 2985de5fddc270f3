//! A tenant's connector setup (its app registration: endpoint, client id, client secret...).

use crate::cache::InstallCache;
use crate::error::ServiceError;
use crate::resolve::Resolver;
use crate::settings::{self, Layer};
use crate::tenant::TenantCtx;
use diesel::Connection;
use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use switchboard_core::{ms_to_rfc3339, now_ms, ConnectorId};
use switchboard_crypto::KeyRing;
use switchboard_db::repo::{setups, webhooks};
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
}

impl SetupOut {
    fn with_keys(mut self, keys: Option<crate::signing_keys::SetupKeysOut>) -> Self {
        if let Some(k) = keys {
            self.jwks_url = Some(k.jwks_url);
            self.signing_keys = Some(k.signing_keys);
        }
        self
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
        let plan = self
            .keys
            .plan(&t.tenant_id, &connector, signing_key)
            .await?;
        let aad = settings::setup_aad(&t.tenant_id, connector_id);
        let stored = settings::seal(&self.crypto, def, &values, &aad);
        let (tenant, cid, now) = (t.tenant_id.clone(), connector_id.to_string(), now_ms());
        let event = self.outbox.setup_event(&tenant, &cid, "saved");
        let keys = self.keys.clone();
        let row = self
            .db
            .run(move |conn| {
                conn.transaction(|conn| {
                    let row = setups::upsert(conn, &tenant, &cid, &stored, now)?;
                    webhooks::emit(conn, &event)?;
                    keys.apply(conn, &tenant, &cid, &plan)?;
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
        Ok(SetupOut {
            connector: connector_id.to_string(),
            settings: settings::masked(def, &values),
            created_at: ms_to_rfc3339(row.created_at),
            updated_at: ms_to_rfc3339(row.updated_at),
            jwks_url: None,
            signing_keys: None,
        }
        .with_keys(key_view))
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
        Ok(SetupOut {
            connector: connector_id.to_string(),
            settings: settings::masked(&connector.def, &values),
            created_at: ms_to_rfc3339(row.created_at),
            updated_at: ms_to_rfc3339(row.updated_at),
            jwks_url: None,
            signing_keys: None,
        }
        .with_keys(key_view))
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
                conn.transaction(|conn| {
                    SetupKeys::delete_all(conn, &tenant, &cid)?;
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
