//! The JSON Schema of the connector file format, generated from the model so that the schema,
//! the loader and the types cannot drift. Committed as `connectors/connector.schema.json` (a test
//! fails when it is stale) and referenced by each connector file's `#:schema` line.

use std::sync::LazyLock;

use serde_json::Value;

use crate::model::ConnectorDef;

static SCHEMA: LazyLock<Value> = LazyLock::new(generate);

/// JSON Schema (draft-07, the newest draft TOML editor tooling such as taplo validates
/// reliably) of a connector file. TOML has no `null`, so the `null` alternatives schemars emits
/// for `Option` fields are removed: an absent key is how a file says "none".
pub fn json_schema() -> Value {
    SCHEMA.clone()
}

/// The cached schema, for the loader's structural pass.
pub(crate) fn schema_ref() -> &'static Value {
    &SCHEMA
}

/// The schema exactly as committed: pretty JSON with a trailing newline.
pub fn json_schema_pretty() -> String {
    let mut s = serde_json::to_string_pretty(&*SCHEMA).unwrap_or_default();
    s.push('\n');
    s
}

fn generate() -> Value {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let schema = generator.into_root_schema_for::<ConnectorDef>();
    let mut value = serde_json::to_value(schema).unwrap_or(Value::Null);
    strip_null(&mut value);
    sort_keys(&mut value);
    if let Value::Object(root) = &mut value {
        root.insert(
            "title".into(),
            Value::String("Switchboard connector definition".into()),
        );
    }
    value
}

/// Rebuild every object with its keys in sorted order, so the committed file does not depend
/// on whether some other crate in the build turned on serde_json's `preserve_order`.
fn sort_keys(v: &mut Value) {
    match v {
        Value::Object(obj) => {
            let mut entries: Vec<(String, Value)> = std::mem::take(obj).into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (k, mut child) in entries {
                sort_keys(&mut child);
                obj.insert(k, child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(sort_keys),
        _ => {}
    }
}

fn strip_null(v: &mut Value) {
    match v {
        Value::Object(obj) => {
            if let Some(Value::Array(types)) = obj.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    obj.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(branches)) = obj.get_mut("anyOf") {
                branches.retain(|b| b.get("type").and_then(Value::as_str) != Some("null"));
                if branches.len() == 1 {
                    let only = branches.remove(0);
                    obj.remove("anyOf");
                    obj.insert("allOf".into(), Value::Array(vec![only]));
                }
            }
            for child in obj.values_mut() {
                strip_null(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_null),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;
    use std::path::PathBuf;

    fn contains_null_type(v: &Value) -> bool {
        match v {
            Value::Object(obj) => {
                obj.get("type").and_then(Value::as_str) == Some("null")
                    || obj
                        .get("type")
                        .and_then(Value::as_array)
                        .is_some_and(|a| a.iter().any(|t| t == "null"))
                    || obj.values().any(contains_null_type)
            }
            Value::Array(a) => a.iter().any(contains_null_type),
            _ => false,
        }
    }

    fn definitions(v: &Value) -> Option<&Map<String, Value>> {
        v.get("definitions").and_then(Value::as_object)
    }

    fn committed_path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../connectors/connector.schema.json")
    }

    /// The committed schema must equal the generated one. Regenerate with
    /// `SWITCHBOARD_BLESS=1 cargo test -p switchboard-connector`.
    #[test]
    fn committed_schema_is_fresh() {
        let want = json_schema_pretty();
        let path = committed_path();
        if std::env::var_os("SWITCHBOARD_BLESS").is_some_and(|v| v == "1") {
            std::fs::write(&path, &want).expect("write connectors/connector.schema.json");
            return;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "connectors/connector.schema.json is stale (or missing): the connector model changed. \
             Regenerate it with `SWITCHBOARD_BLESS=1 cargo test -p switchboard-connector` and commit it."
        );
    }

    #[test]
    fn schema_is_draft07_without_nulls() {
        let s = json_schema();
        assert_eq!(
            s["$schema"].as_str(),
            Some("http://json-schema.org/draft-07/schema#")
        );
        assert!(!contains_null_type(&s));
        let defs = definitions(&s).expect("definitions");
        for name in ["AuthDef", "MethodDef", "ParamDef", "SettingDef"] {
            assert!(defs.contains_key(name), "{name}");
        }
        assert_eq!(s["additionalProperties"], Value::Bool(false));
    }
}
