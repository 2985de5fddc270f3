//! What `GET /v1/connectors` and `GET /v1/connectors/{id}` show: everything a console needs to
//! render a setup form and a workflow needs to call methods, and nothing secret (secret settings
//! never show a default; templates name settings, never their values).

use serde_json::{json, Map, Value};

use crate::model::{
    AuthDef, ClientAuth, ConnectorDef, MethodDef, ParamDef, RefreshPolicy, SettingDef,
};
use crate::settings::settings_used_by_auth;

/// `{id, name, version, auth_types, methods: [{id, name}]}` for the connector list.
pub fn summary(def: &ConnectorDef) -> Value {
    json!({
        "id": def.id,
        "name": def.name,
        "version": def.version,
        "auth_types": auth_types(def),
        "methods": def.methods.iter().map(|m| json!({"id": m.id, "name": m.name})).collect::<Vec<_>>(),
    })
}

/// The full public definition.
pub fn public_view(def: &ConnectorDef) -> Value {
    let mut v = Map::new();
    v.insert("id".into(), json!(def.id));
    v.insert("name".into(), json!(def.name));
    v.insert("version".into(), json!(def.version));
    if let Some(d) = &def.description {
        v.insert("description".into(), json!(d));
    }
    v.insert("auth_types".into(), auth_types(def));
    v.insert(
        "default_auth_type".into(),
        json!(def.default_auth().map(|a| a.kind().as_str())),
    );
    v.insert(
        "settings".into(),
        Value::Array(def.settings.iter().map(setting_view).collect()),
    );
    v.insert(
        "auth".into(),
        Value::Array(def.auth.iter().map(|a| auth_view(def, a)).collect()),
    );
    v.insert(
        "methods".into(),
        Value::Array(def.methods.iter().map(method_view).collect()),
    );
    Value::Object(v)
}

fn auth_types(def: &ConnectorDef) -> Value {
    json!(def
        .auth
        .iter()
        .map(|a| a.kind().as_str())
        .collect::<Vec<_>>())
}

fn setting_view(s: &SettingDef) -> Value {
    let mut v = Map::new();
    v.insert("key".into(), json!(s.key));
    v.insert("label".into(), json!(s.label));
    v.insert("type".into(), json!(s.kind));
    v.insert("required".into(), json!(s.required));
    v.insert("secret".into(), json!(s.secret));
    if !s.secret {
        if let Some(d) = &s.default {
            v.insert("default".into(), json!(d));
        }
    }
    if let Some(h) = &s.help {
        v.insert("help".into(), json!(h));
    }
    v.insert("install_override".into(), json!(s.install_override));
    if !s.options.is_empty() {
        v.insert("options".into(), json!(s.options));
    }
    if let Some(n) = &s.normalize {
        v.insert("normalize".into(), json!(n));
    }
    Value::Object(v)
}

fn client_auth_str(c: ClientAuth) -> &'static str {
    match c {
        ClientAuth::ClientSecretBasic => "client_secret_basic",
        ClientAuth::ClientSecretPost => "client_secret_post",
        ClientAuth::None => "none",
    }
}

fn refresh_str(r: RefreshPolicy) -> &'static str {
    match r {
        RefreshPolicy::Rotating => "rotating",
        RefreshPolicy::Reusable => "reusable",
        RefreshPolicy::None => "none",
    }
}

fn auth_view(def: &ConnectorDef, a: &AuthDef) -> Value {
    let kind = a.kind();
    let settings: Vec<String> = settings_used_by_auth(def, kind).into_iter().collect();
    match a {
        AuthDef::Oauth2AuthorizationCode(c) => json!({
            "type": kind.as_str(),
            "needs_user": true,
            "pkce": true,
            "scopes": c.scopes,
            "client_auth": client_auth_str(c.client_auth),
            "refresh": refresh_str(c.refresh),
            "authorize_url": c.authorize_url,
            "token_url": c.token_url,
            "authorize_params": c.authorize_params,
            "issuer": c.issuer,
            "revocation": c.revocation_url.is_some(),
            "settings": settings,
        }),
        AuthDef::Oauth2ClientCredentials(c) => json!({
            "type": kind.as_str(),
            "needs_user": false,
            "scopes": c.scopes,
            "client_auth": client_auth_str(c.client_auth),
            "token_url": c.token_url,
            "revocation": c.revocation_url.is_some(),
            "settings": settings,
        }),
        AuthDef::StaticBearer(_) => json!({
            "type": kind.as_str(),
            "needs_user": false,
            "settings": settings,
        }),
        AuthDef::Oauth2BackendServices(c) => json!({
            "type": kind.as_str(),
            "needs_user": false,
            "scopes": c.scopes,
            "client_auth": "private_key_jwt",
            "signing_algs": ["RS384", "ES384"],
            "token_url": c.token_url,
            "jku": c.jku,
            "revocation": c.revocation_url.is_some(),
            "settings": settings,
        }),
    }
}

fn method_view(m: &MethodDef) -> Value {
    let mut v = Map::new();
    v.insert("id".into(), json!(m.id));
    v.insert("name".into(), json!(m.name));
    if let Some(d) = &m.description {
        v.insert("description".into(), json!(d));
    }
    v.insert("verb".into(), json!(m.verb.as_str()));
    v.insert("path".into(), json!(m.path));
    if let Some(s) = &m.scope {
        v.insert("scope".into(), json!(s));
    }
    v.insert("writes".into(), json!(m.verb.writes()));
    if let Some(body) = &m.body {
        v.insert(
            "body".into(),
            json!({"resource_type": body.resource_type, "required": body.required}),
        );
        v.insert(
            "conditional_identifier".into(),
            json!(m.conditional_identifier),
        );
    }
    v.insert("paging".into(), json!(m.paging));
    if !m.kind.is_call() {
        v.insert("kind".into(), json!(m.kind));
        v.insert("level".into(), json!(m.level));
    }
    if !m.require_one_of.is_empty() {
        v.insert("require_one_of".into(), json!(m.require_one_of));
    }
    v.insert(
        "params".into(),
        Value::Array(m.params.iter().map(param_view).collect()),
    );
    Value::Object(v)
}

/// A JSON-Schema-like description of one param: absent keywords mean "no constraint".
fn param_view(p: &ParamDef) -> Value {
    let mut v = Map::new();
    v.insert("name".into(), json!(p.name));
    v.insert("in".into(), json!(p.location));
    v.insert("type".into(), json!(p.kind));
    v.insert("required".into(), json!(p.required));
    v.insert("repeated".into(), json!(p.repeated));
    if !p.allowed.is_empty() {
        v.insert("enum".into(), json!(p.allowed));
    }
    if let Some(pat) = &p.pattern {
        v.insert("pattern".into(), json!(pat));
    }
    if let Some(min) = p.minimum {
        v.insert("minimum".into(), json!(min));
    }
    if let Some(max) = p.maximum {
        v.insert("maximum".into(), json!(max));
    }
    if let Some(d) = &p.description {
        v.insert("description".into(), json!(d));
    }
    Value::Object(v)
}

/// The JSON Schema (draft 2020-12 keywords) of a call's arguments given as one flat object: each
/// param by name (its type, enum, pattern anchored as the engine matches it, bounds, description;
/// a repeated param also takes an array), `body` for a write method (the FHIR resource, its
/// `resourceType` fixed and its required elements), `max_pages` for a paged search (unless a
/// param has that name), `require_one_of` as `anyOf` of `required` sets. The MCP server offers
/// it as a tool's `inputSchema`; the engine still validates every call.
pub fn method_input_schema(m: &MethodDef) -> Value {
    let mut props = Map::new();
    let mut required: Vec<String> = Vec::new();
    for p in &m.params {
        props.insert(p.name.clone(), param_schema(p));
        if p.required {
            required.push(p.name.clone());
        }
    }
    if let Some(body) = body_schema(m) {
        props.insert("body".into(), body);
        required.push("body".into());
    }
    if m.paging == crate::model::Paging::FhirBundle && m.param("max_pages").is_none() {
        props.insert(
            "max_pages".into(),
            json!({
                "type": "integer",
                "minimum": 1,
                "description": "Follow the searchset's next links up to this many pages (default 1)",
            }),
        );
    }
    let mut schema = Map::new();
    schema.insert("type".into(), json!("object"));
    schema.insert("properties".into(), Value::Object(props));
    if !required.is_empty() {
        schema.insert("required".into(), json!(required));
    }
    schema.insert("additionalProperties".into(), json!(false));
    if !m.require_one_of.is_empty() {
        schema.insert(
            "anyOf".into(),
            Value::Array(
                m.require_one_of
                    .iter()
                    .map(|set| json!({ "required": set }))
                    .collect(),
            ),
        );
    }
    Value::Object(schema)
}

/// The schema of a write method's FHIR resource body: its `resourceType` fixed and its required
/// elements (shared by the MCP tool schema and the OpenAPI method-call body).
fn body_schema(m: &MethodDef) -> Option<Value> {
    let body = m.body.as_ref()?;
    let mut need = vec!["resourceType".to_owned()];
    need.extend(body.required.iter().cloned());
    Some(json!({
        "type": "object",
        "description": format!("The FHIR {} resource to send", body.resource_type),
        "properties": { "resourceType": { "const": body.resource_type } },
        "required": need,
    }))
}

fn param_schema(p: &ParamDef) -> Value {
    use crate::model::ParamType as T;
    let mut one = Map::new();
    match p.kind {
        T::String | T::Date | T::Token => {
            one.insert("type".into(), json!("string"));
        }
        T::Integer => {
            one.insert("type".into(), json!("integer"));
        }
        T::Number => {
            one.insert("type".into(), json!("number"));
        }
        T::Boolean => {
            one.insert("type".into(), json!("boolean"));
        }
        T::Json => {}
    }
    if !p.allowed.is_empty() {
        one.insert("enum".into(), json!(p.allowed));
    }
    if let Some(pat) = &p.pattern {
        one.insert("pattern".into(), json!(format!("^(?:{pat})$")));
    }
    if matches!(p.kind, T::Integer | T::Number) {
        if let Some(min) = p.minimum {
            one.insert("minimum".into(), json!(min));
        }
        if let Some(max) = p.maximum {
            one.insert("maximum".into(), json!(max));
        }
    }
    let mut v = if p.repeated {
        let mut either = Map::new();
        either.insert(
            "anyOf".into(),
            json!([Value::Object(one.clone()), {"type": "array", "items": Value::Object(one), "minItems": 1}]),
        );
        either
    } else {
        one
    };
    if let Some(d) = &p.description {
        v.insert("description".into(), json!(d));
    }
    Value::Object(v)
}

/// The JSON Schema (OpenAPI 3.1 dialect) of the body of `POST .../methods/{method}` for this
/// method: `params` with each parameter's type, enum, pattern (anchored, as the engine applies
/// it), bounds and arrays where `repeated`, no other key; `max_pages` for paged methods; the
/// FHIR resource `body` (its `resourceType` and required elements) for writes.
pub fn method_call_schema(connector: &ConnectorDef, m: &MethodDef) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    for p in &m.params {
        let schema = param_schema(p);
        if p.required {
            required.push(p.name.clone());
        }
        props.insert(p.name.clone(), schema);
    }
    let needs_params = !required.is_empty() || !m.require_one_of.is_empty();
    let mut params =
        json!({ "type": "object", "properties": props, "additionalProperties": false });
    if !required.is_empty() {
        params["required"] = json!(required);
    }
    if !m.require_one_of.is_empty() {
        params["description"] = json!(format!(
            "Also needs every parameter of one of: {}",
            m.require_one_of
                .iter()
                .map(|set| format!("[{}]", set.join(", ")))
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    let mut body = Map::new();
    body.insert("params".into(), params);
    let mut top_required = Vec::new();
    if needs_params {
        top_required.push("params");
    }
    body.insert(
        "max_pages".into(),
        json!({
            "type": ["integer", "null"],
            "minimum": 1,
            "description": "Bundle pages to follow (searches; default 1, at most upstream.max_pages)."
        }),
    );
    if let Some(b) = body_schema(m) {
        body.insert("body".into(), b);
        top_required.push("body");
    }
    json!({
        "title": format!("{}.{}", connector.id, m.id),
        "description": format!("{} ({}): {}", m.name, connector.name, m.description.as_deref().unwrap_or("")),
        "type": "object",
        "properties": body,
        "required": top_required,
        "additionalProperties": false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_call_schemas_carry_types_enums_patterns_and_bodies() {
        let canvas = load("canvas");
        let schema = |id: &str| {
            let m = canvas.methods.iter().find(|m| m.id == id).unwrap();
            method_call_schema(&canvas, m)
        };
        let search = schema("search_patients");
        assert_eq!(search["title"], "canvas.search_patients");
        let params = &search["properties"]["params"]["properties"];
        assert_eq!(
            params["gender"]["enum"],
            json!(["male", "female", "other", "unknown"])
        );
        assert_eq!(params["phone"]["pattern"], "^(?:[0-9]{10})$");
        assert_eq!(params["_count"]["type"], "integer");
        assert_eq!(params["_count"]["maximum"], 100);
        assert_eq!(params["identifier"]["anyOf"][1]["type"], "array");
        assert_eq!(
            search["properties"]["params"]["additionalProperties"],
            false
        );
        assert_eq!(search["required"], json!([]));
        let get = schema("get_patient");
        assert_eq!(get["required"], json!(["params"]));
        assert_eq!(get["properties"]["params"]["required"], json!(["id"]));
        let create = schema("create_document_reference");
        let body = &create["properties"]["body"];
        assert_eq!(
            body["properties"]["resourceType"]["const"],
            "DocumentReference"
        );
        assert!(body["required"]
            .as_array()
            .unwrap()
            .contains(&json!("extension")));
        assert!(create["required"]
            .as_array()
            .unwrap()
            .contains(&json!("body")));
    }
    use std::path::PathBuf;

    fn load(id: &str) -> ConnectorDef {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../connectors")
            .join(format!("{id}.toml"));
        crate::load_file(&path).unwrap_or_else(|d| panic!("{d:?}"))
    }

    #[test]
    fn method_input_schema_lists_params_body_and_paging() {
        let def = load("canvas");
        let get = def.methods.iter().find(|m| m.id == "get_patient").unwrap();
        let s = method_input_schema(get);
        assert_eq!(s["type"], "object");
        assert_eq!(s["properties"]["id"]["type"], "string");
        assert_eq!(s["required"], json!(["id"]));
        assert_eq!(s["additionalProperties"], false);
        let search = def
            .methods
            .iter()
            .find(|m| m.id == "search_patients")
            .unwrap();
        let s = method_input_schema(search);
        assert_eq!(s["properties"]["max_pages"]["type"], "integer");
        let write = def.methods.iter().find(|m| m.body.is_some()).unwrap();
        let s = method_input_schema(write);
        let body = write.body.as_ref().unwrap();
        assert_eq!(
            s["properties"]["body"]["properties"]["resourceType"]["const"],
            body.resource_type.as_str()
        );
        assert!(s["required"].as_array().unwrap().contains(&json!("body")));
    }

    #[test]
    fn summary_shape() {
        let mut s = summary(&load("canvas"));
        // The file's own methods come first; the US Core ones it includes follow.
        s["methods"].as_array_mut().unwrap().truncate(2);
        assert_eq!(
            s,
            json!({
                "id": "canvas",
                "name": "Canvas Medical",
                "version": "1.0.0",
                "auth_types": ["oauth2_authorization_code", "oauth2_client_credentials", "static_bearer"],
                "methods": [
                    {"id": "get_patient", "name": "Get Patient"},
                    {"id": "search_patients", "name": "Search Patients"}
                ]
            })
        );
    }

    #[test]
    fn public_view_shows_settings_without_secrets() {
        let mut def = load("epic");
        // Defaults of secret settings are rejected at load; the view must not rely on that.
        def.settings[2].default = Some("leak-me".into());
        let v = public_view(&def);
        let text = v.to_string();
        assert!(!text.contains("leak-me"));

        let settings = v["settings"].as_array().unwrap();
        let endpoint = &settings[0];
        assert_eq!(endpoint["key"], "endpoint");
        assert_eq!(endpoint["type"], "url");
        assert_eq!(endpoint["required"], true);
        assert_eq!(endpoint["secret"], false);
        assert_eq!(endpoint["install_override"], true);
        assert_eq!(
            endpoint["default"],
            "https://fhir.epic.com/interconnect-fhir-oauth/"
        );
        assert!(endpoint["help"].as_str().unwrap().contains("api/FHIR/R4"));
        let secret = &settings[2];
        assert_eq!(secret["key"], "client_secret");
        assert_eq!(secret["secret"], true);
        assert!(secret.get("default").is_none());

        let auth = &v["auth"][0];
        assert_eq!(auth["type"], "oauth2_authorization_code");
        assert_eq!(auth["pkce"], true);
        assert_eq!(auth["client_auth"], "client_secret_basic");
        assert_eq!(auth["refresh"], "reusable");
        assert_eq!(auth["scopes"], "{{settings.scopes}}");
        assert_eq!(auth["authorize_params"]["aud"], "{{fhir_base}}");
        assert_eq!(
            auth["settings"],
            json!(["client_id", "client_secret", "endpoint", "scopes"])
        );
        assert_eq!(v["auth_types"], json!(["oauth2_authorization_code"]));
        assert_eq!(v["default_auth_type"], "oauth2_authorization_code");
    }

    #[test]
    fn public_view_describes_params_as_schemas() {
        let v = public_view(&load("epic"));
        let search = &v["methods"][1];
        assert_eq!(search["id"], "search_patients");
        assert_eq!(search["verb"], "GET");
        assert_eq!(search["path"], "Patient");
        assert_eq!(search["paging"], "fhir_bundle");
        assert_eq!(search["scope"], "user/Patient.read");
        assert_eq!(search["require_one_of"][0], json!(["_id"]));
        assert!(search["description"].as_str().unwrap().contains("100"));
        let params = search["params"].as_array().unwrap();
        let gender = params.iter().find(|p| p["name"] == "gender").unwrap();
        assert_eq!(
            gender,
            &json!({
                "name": "gender",
                "in": "query",
                "type": "string",
                "required": false,
                "repeated": false,
                "enum": ["male", "female", "other", "unknown"],
                "description": "Legal sex as FHIR gender; legal-sex is preferred from Epic Aug 2021 and takes precedence."
            })
        );
        let identifier = params.iter().find(|p| p["name"] == "identifier").unwrap();
        assert_eq!(identifier["type"], "token");
        assert_eq!(identifier["repeated"], true);

        let get = &v["methods"][0];
        assert_eq!(get["params"][0]["in"], "path");
        assert_eq!(get["params"][0]["required"], true);
        assert_eq!(get["params"][0]["pattern"], "[A-Za-z0-9\\-\\.]{1,64}");

        let canvas = public_view(&load("canvas"));
        let count = canvas["methods"][1]["params"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "_count")
            .unwrap()
            .clone();
        assert_eq!(count["type"], "integer");
        assert_eq!(count["minimum"], 1);
        assert_eq!(count["maximum"], 100);
        // Wire names are an upstream detail.
        assert!(!canvas.to_string().contains("upstream_name"));
        let bearer = &canvas["auth"][2];
        assert_eq!(
            bearer,
            &json!({"type": "static_bearer", "needs_user": false, "settings": ["api_token", "fhir_base_url"]})
        );
    }
}
