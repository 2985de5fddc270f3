//! The resource body of a write method (`body` beside `params`), checked against the method's
//! declared shape ([`switchboard_connector::BodyDef`]) before anything is sent: `resourceType`
//! and the required top-level elements. Messages name elements, never echo values (a resource
//! is patient data).

use std::fmt;

use bytes::Bytes;
use serde_json::Value;
use switchboard_connector::CompiledMethod;

use crate::params::ParamError;

/// A body that passed [`validate_body`]: the bytes sent upstream and, for a conditional
/// create, the `If-None-Exist` query. `Debug` shows the length only.
#[derive(Clone)]
pub struct WriteBody {
    bytes: Bytes,
    if_none_exist: Option<String>,
}

impl fmt::Debug for WriteBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBody")
            .field("bytes", &self.bytes.len())
            .field("conditional", &self.if_none_exist.is_some())
            .finish()
    }
}

impl WriteBody {
    /// The JSON sent upstream (serde_json's compact form: object keys sorted, so the same
    /// resource always gives the same bytes).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// `identifier=<system>|<value>` (percent-encoded) for `If-None-Exist`.
    pub fn if_none_exist(&self) -> Option<&str> {
        self.if_none_exist.as_deref()
    }
}

/// Checks `body` against `method`: a write method needs a JSON object whose `resourceType` is
/// the declared one and which carries every required element (present, not null, not an empty
/// string, array or object); any other method takes no body. Errors name `body` or
/// `body.<element>`.
pub fn validate_body(
    method: &CompiledMethod,
    body: Option<&Value>,
) -> Result<Option<WriteBody>, Vec<ParamError>> {
    let Some(shape) = method.body() else {
        return match body {
            None => Ok(None),
            Some(_) => Err(vec![ParamError::new("body", "this method takes no body")]),
        };
    };
    let Some(Value::Object(resource)) = body else {
        return Err(vec![ParamError::new(
            "body",
            format!(
                "required: a FHIR {} resource (JSON object)",
                shape.resource_type
            ),
        )]);
    };
    let mut errors = Vec::new();
    if resource.get("resourceType").and_then(Value::as_str) != Some(&shape.resource_type) {
        errors.push(ParamError::new(
            "body.resourceType",
            format!("must be \"{}\"", shape.resource_type),
        ));
    }
    for name in &shape.required {
        let present = match resource.get(name) {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            Some(_) => true,
        };
        if !present {
            errors.push(ParamError::new(
                format!("body.{name}"),
                format!("required by {}", method.id()),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let if_none_exist = if method.conditional_identifier() {
        first_identifier(body.unwrap_or(&Value::Null))
    } else {
        None
    };
    let bytes = serde_json::to_vec(resource)
        .map_err(|_| vec![ParamError::new("body", "is not serialisable")])?;
    Ok(Some(WriteBody {
        bytes: Bytes::from(bytes),
        if_none_exist,
    }))
}

/// `identifier=<system>|<value>` from the first identifier that has a value.
fn first_identifier(resource: &Value) -> Option<String> {
    let id = resource.get("identifier")?.as_array()?.first()?;
    let value = id.get("value")?.as_str().filter(|v| !v.is_empty())?;
    let system = id.get("system").and_then(Value::as_str).unwrap_or("");
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    Some(format!("identifier={}|{}", enc(system), enc(value)))
}
