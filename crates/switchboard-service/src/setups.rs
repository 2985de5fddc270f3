//! A tenant's connector setup (its app registration: endpoint, client id, client secret...).

use crate::settings::{self, Layer};
use crate::{ServiceError, Services, TenantCtx};
use serde::Serialize;
use serde_json::{Map, Value};
use switchboard_core::{ms_to_rfc3339, now_ms, ConnectorId};
use switchboard_db::repo::setups;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SetupOut {
    pub connector: String,
    /// Secret values are `{"set":true}`, never the value.
    #[schema(value_type = Object)]
    pub settings: Value,
    pub created_at: String,
    pub updated_at: String,
}

impl Services {
    /// Creates or replaces the setup. The body is validated as a whole before anything is
    /// written; secret values are sealed.
    pub async fn put_setup(
        &self,
        t: &TenantCtx,
        connector_id: &ConnectorId,
        input: &Map<String, Value>,
    ) -> Result<SetupOut, ServiceError> {
        let connector = self.connector(connector_id)?;
        let def = &connector.def;
        let values = settings::validate_input(def, input, Layer::Setup)?;
        let aad = settings::setup_aad(&t.tenant_id, connector_id);
        let stored = settings::seal(&self.inner.crypto, def, &values, &aad);
        let (tenant, cid, now) = (t.tenant_id.clone(), connector_id.to_string(), now_ms());
        let row = self
            .inner
            .db
            .run(move |conn| setups::upsert(conn, &tenant, &cid, &stored, now))
            .await?;
        self.inner.installs.clear();
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
        let connector = self.connector(connector_id)?;
        let (tenant, cid) = (t.tenant_id.clone(), connector_id.to_string());
        let row = self
            .inner
            .db
            .run(move |conn| setups::find(conn, &tenant, &cid))
            .await?
            .ok_or_else(|| ServiceError::NotFound("this connector has no setup".into()))?;
        let values = settings::open(
            &self.inner.crypto,
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
        self.connector(connector_id)?;
        let (tenant, cid) = (t.tenant_id.clone(), connector_id.to_string());
        let deleted = self
            .inner
            .db
            .run(move |conn| setups::delete(conn, &tenant, &cid))
            .await?;
        self.inner.installs.clear();
        if deleted {
            Ok(())
        } else {
            Err(ServiceError::NotFound("this connector has no setup".into()))
        }
    }

    /// The decrypted setup values of a tenant's connector (empty when there is no setup).
    pub(crate) async fn setup_values(
        &self,
        tenant_id: &str,
        connector_id: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, ServiceError> {
        let (tenant, cid) = (tenant_id.to_owned(), connector_id.to_owned());
        let row = self
            .inner
            .db
            .run(move |conn| setups::find(conn, &tenant, &cid))
            .await?;
        match row {
            Some(r) => settings::open(
                &self.inner.crypto,
                &r.settings,
                &settings::setup_aad(tenant_id, connector_id),
            ),
            None => Ok(Default::default()),
        }
    }

    pub(crate) fn connector(
        &self,
        id: &str,
    ) -> Result<std::sync::Arc<switchboard_connector::Connector>, ServiceError> {
        self.inner
            .catalog
            .get(id)
            .ok_or_else(|| ServiceError::UnknownConnector(id.to_owned()))
    }
}
