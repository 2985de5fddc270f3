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

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SetupOut {
    pub connector: String,
    /// Secret values are `{"set":true}`, never the value.
    #[schema(value_type = Object)]
    pub settings: Value,
    pub created_at: String,
    pub updated_at: String,
}

/// Tenants' connector setups. A change drops every prepared install (they embed the setup).
pub struct SetupService {
    pub(crate) db: Db,
    pub(crate) crypto: Arc<KeyRing>,
    pub(crate) resolver: Arc<Resolver>,
    pub(crate) cache: Arc<InstallCache>,
    pub(crate) audit: Arc<crate::audit::AuditLog>,
    pub(crate) outbox: Arc<crate::webhooks::Outbox>,
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
        let aad = settings::setup_aad(&t.tenant_id, connector_id);
        let stored = settings::seal(&self.crypto, def, &values, &aad);
        let (tenant, cid, now) = (t.tenant_id.clone(), connector_id.to_string(), now_ms());
        let event = self.outbox.setup_event(&tenant, &cid, "saved");
        let row = self
            .db
            .run(move |conn| {
                conn.transaction(|conn| {
                    let row = setups::upsert(conn, &tenant, &cid, &stored, now)?;
                    webhooks::emit(conn, &event)?;
                    Ok(row)
                })
            })
            .await?;
        self.outbox.committed();
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
        Ok(SetupOut {
            connector: connector_id.to_string(),
            settings: settings::masked(&connector.def, &values),
            created_at: ms_to_rfc3339(row.created_at),
            updated_at: ms_to_rfc3339(row.updated_at),
        })
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
