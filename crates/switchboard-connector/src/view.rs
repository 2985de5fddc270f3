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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn load(id: &str) -> ConnectorDef {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../connectors")
            .join(format!("{id}.toml"));
        crate::load_file(&path).unwrap_or_else(|d| panic!("{d:?}"))
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
