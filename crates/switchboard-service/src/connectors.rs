//! The connector catalogue as the API shows it.

use crate::error::ServiceError;
use serde_json::{json, Value};
use switchboard_connector::Catalog;
use switchboard_core::ConnectorId;

/// The loaded connector catalogue.
pub struct ConnectorService {
    pub(crate) catalog: Catalog,
}

impl ConnectorService {
    pub fn list_connectors(&self) -> Value {
        let list: Vec<Value> = self
            .catalog
            .iter()
            .map(|c| switchboard_connector::summary(&c.def))
            .collect();
        json!({ "connectors": list })
    }

    pub fn get_connector(&self, id: &ConnectorId) -> Result<Value, ServiceError> {
        self.catalog
            .get(id)
            .map(|c| switchboard_connector::public_view(&c.def))
            .ok_or_else(|| ServiceError::UnknownConnector(id.to_string()))
    }
}
