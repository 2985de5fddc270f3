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

    /// `(name, JSON Schema)` of every connector method's call body, named
    /// `MethodCall.{connector}.{method}` (the OpenAPI document's per-method bodies).
    pub fn method_call_schemas(&self) -> Vec<(String, Value)> {
        self.catalog
            .iter()
            .flat_map(|c| {
                c.def.methods.iter().map(|m| {
                    (
                        format!("MethodCall.{}.{}", c.def.id, m.id),
                        switchboard_connector::method_call_schema(&c.def, m),
                    )
                })
            })
            .collect()
    }
}
