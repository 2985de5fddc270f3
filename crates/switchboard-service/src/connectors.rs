//! The connector catalogue as the API shows it.

use crate::{ServiceError, Services};
use serde_json::{json, Value};
use switchboard_core::ConnectorId;

impl Services {
    pub fn list_connectors(&self) -> Value {
        let list: Vec<Value> = self
            .inner
            .catalog
            .iter()
            .map(|c| switchboard_connector::summary(&c.def))
            .collect();
        json!({ "connectors": list })
    }

    pub fn get_connector(&self, id: &ConnectorId) -> Result<Value, ServiceError> {
        self.inner
            .catalog
            .get(id)
            .map(|c| switchboard_connector::public_view(&c.def))
            .ok_or_else(|| ServiceError::UnknownConnector(id.to_string()))
    }
}
