//! Connector settings as stored: validated and normalised against the connector's declared
//! fields, secret values sealed with AES-256-GCM (AAD = owner + field), masked in responses.

use crate::error::{FieldError, ServiceError};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use switchboard_connector::ConnectorDef;
use switchboard_crypto::KeyRing;

/// Who provides a settings map: the tenant's connector setup or one install's overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Setup,
    Install,
}

/// Validates and normalises a settings object from an API body. Every problem is reported at
/// once; values are never echoed back (they may be secrets).
pub fn validate_input(
    def: &ConnectorDef,
    input: &Map<String, Value>,
    layer: Layer,
) -> Result<BTreeMap<String, String>, ServiceError> {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for (key, value) in input {
        let Some(field) = def.settings.iter().find(|s| &s.key == key) else {
            errors.push(FieldError::new(key, "unknown setting for this connector"));
            continue;
        };
        if layer == Layer::Install && !field.install_override {
            errors.push(FieldError::new(
                key,
                "this setting belongs to the connector setup and cannot be overridden per install",
            ));
            continue;
        }
        match field.validate_value(value) {
            Ok(v) => {
                out.insert(key.clone(), v);
            }
            Err(message) => errors.push(FieldError::new(key, message)),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ServiceError::InvalidSettings(errors))
    }
}

/// Serialises settings for storage: plain values as strings, secret values as
/// `{"enc":"<base64 ciphertext>"}` bound to `{aad_prefix}:{key}`.
pub fn seal(
    crypto: &KeyRing,
    def: &ConnectorDef,
    values: &BTreeMap<String, String>,
    aad_prefix: &str,
) -> String {
    let mut map = Map::new();
    for (key, value) in values {
        let secret = def.settings.iter().any(|s| &s.key == key && s.secret);
        let stored = if secret {
            let aad = format!("{aad_prefix}:{key}");
            json!({ "enc": crypto.encrypt_to_base64(value, aad.as_bytes()) })
        } else {
            Value::String(value.clone())
        };
        map.insert(key.clone(), stored);
    }
    Value::Object(map).to_string()
}

/// Reverses [`seal`].
pub fn open(
    crypto: &KeyRing,
    stored: &str,
    aad_prefix: &str,
) -> Result<BTreeMap<String, String>, ServiceError> {
    let map: Map<String, Value> = serde_json::from_str(stored)
        .map_err(|_| ServiceError::internal("stored settings are not a JSON object"))?;
    let mut out = BTreeMap::new();
    for (key, value) in map {
        let plain = match value {
            Value::String(s) => s,
            Value::Object(o) => {
                let b64 = o
                    .get("enc")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ServiceError::internal("stored secret has no ciphertext"))?;
                let aad = format!("{aad_prefix}:{key}");
                crypto.decrypt_from_base64(b64, aad.as_bytes())?
            }
            _ => {
                return Err(ServiceError::internal(
                    "stored setting has an unexpected type",
                ))
            }
        };
        out.insert(key, plain);
    }
    Ok(out)
}

/// The API view of settings: secret values replaced by `{"set":true}`.
pub fn masked(def: &ConnectorDef, values: &BTreeMap<String, String>) -> Value {
    let mut map = Map::new();
    for (key, value) in values {
        let secret = def.settings.iter().any(|s| &s.key == key && s.secret);
        map.insert(
            key.clone(),
            if secret {
                json!({ "set": true })
            } else {
                Value::String(value.clone())
            },
        );
    }
    Value::Object(map)
}

/// AAD owner prefixes, so a ciphertext copied to another row or field fails to decrypt.
pub fn setup_aad(tenant_id: &str, connector_id: &str) -> String {
    format!("setup:{tenant_id}:{connector_id}")
}

pub fn install_aad(install_id: &str) -> String {
    format!("install:{install_id}")
}
