//! Setting values: validation of what tenants and installs submit, and merging the layers
//! (definition defaults < tenant setup < install overrides) into what templates render against.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::model::{AuthKind, ConnectorDef, SettingDef, SettingType};
use crate::template::Template;

/// Longest accepted setting value, in characters. Settings are URLs, ids, scopes and secrets;
/// anything longer is a mistake or an attempt to bloat rows and requests.
pub const MAX_SETTING_LEN: usize = 4096;

impl SettingDef {
    /// Normalise then type-check a submitted value, returning its canonical string form.
    ///
    /// Accepts a JSON string for every type, a JSON number for `integer` and a JSON boolean for
    /// `boolean`. The error message never contains the value: it may be a secret.
    pub fn validate_value(&self, raw: &Value) -> Result<String, String> {
        let text = match (raw, self.kind) {
            (Value::String(s), _) => s.clone(),
            (Value::Number(n), SettingType::Integer) => n.to_string(),
            (Value::Bool(b), SettingType::Boolean) => b.to_string(),
            (Value::Null, _) => return Err("must not be null".into()),
            _ => return Err(format!("must be {}", expected_json(self.kind))),
        };
        let value = match self.normalize {
            Some(n) => n.apply(&text),
            None => text,
        };
        if value.chars().count() > MAX_SETTING_LEN {
            return Err(format!("must be at most {MAX_SETTING_LEN} characters"));
        }
        if value.chars().any(char::is_control) {
            return Err("must not contain control characters (line breaks, tabs...)".into());
        }
        match self.kind {
            SettingType::String => Ok(value),
            SettingType::Url => check_url(&value).map(|()| value),
            SettingType::Integer => value
                .trim()
                .parse::<i64>()
                .map(|n| n.to_string())
                .map_err(|_| "must be an integer".to_owned()),
            SettingType::Boolean => match value.trim() {
                "true" => Ok("true".into()),
                "false" => Ok("false".into()),
                _ => Err("must be true or false".into()),
            },
            SettingType::Enum => {
                if self.options.contains(&value) {
                    Ok(value)
                } else {
                    Err(format!("must be one of: {}", self.options.join(", ")))
                }
            }
        }
    }
}

fn expected_json(kind: SettingType) -> &'static str {
    match kind {
        SettingType::String | SettingType::Url | SettingType::Enum => "a string",
        SettingType::Integer => "an integer (number or string)",
        SettingType::Boolean => "a boolean (true/false or \"true\"/\"false\")",
    }
}

/// The rules for a `url` setting and for URL templates rendered at load time: absolute http(s)
/// with a host, no fragment (RFC 6749 §3.1.2 forbids them on endpoints) and no userinfo
/// (credentials in a URL end up in logs and proxies).
pub fn check_url(value: &str) -> Result<(), String> {
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must be an absolute http(s) URL without whitespace".into());
    }
    let url = url::Url::parse(value).map_err(|_| "must be an absolute http(s) URL".to_owned())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http(s) URL".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must be an absolute http(s) URL with a host".into());
    }
    if url.fragment().is_some() {
        return Err("must not contain a fragment (#...)".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials (user:password@)".into());
    }
    Ok(())
}

/// Merge the setting layers: definition defaults, then the tenant's setup, then the install's
/// overrides, the last only for settings declared `install_override = true` (the service rejects
/// other override keys with an error before it gets here; dropping them again keeps a stale row
/// from ever redirecting an install). Keys the definition does not declare are ignored.
pub fn merge_settings(
    def: &ConnectorDef,
    setup: &BTreeMap<String, String>,
    overrides: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut merged = BTreeMap::new();
    for s in &def.settings {
        let value = overrides
            .get(&s.key)
            .filter(|_| s.install_override)
            .or_else(|| setup.get(&s.key))
            .or(s.default.as_ref());
        if let Some(v) = value {
            merged.insert(s.key.clone(), v.clone());
        }
    }
    merged
}

/// Setting keys an install with this auth type needs: those used by the auth entry's templates,
/// the FHIR base and the static headers. Required-ness is per auth type (a Canvas install using
/// the dashboard token needs no client id), which is why this exists next to `required`.
pub fn settings_used_by_auth(def: &ConnectorDef, kind: AuthKind) -> BTreeSet<String> {
    let mut sources: Vec<&str> = vec![def.fhir_base.as_str()];
    sources.extend(def.headers.values().map(String::as_str));
    if let Some(auth) = def.auth(kind) {
        sources.extend(auth.templates().into_iter().map(|(_, t)| t));
    }
    let mut keys = BTreeSet::new();
    for src in sources {
        // Unparseable templates cannot reach a loaded catalog; ignoring them here keeps this
        // function total for hand-built definitions.
        if let Ok(t) = Template::parse(src) {
            keys.extend(t.setting_keys().map(str::to_owned));
        }
    }
    keys
}

/// Settings an install of `kind` uses that have no usable value in `merged`, in declaration
/// order: absent, or blank without the definition declaring a default (a declared default of ""
/// means "empty is meaningful", e.g. Canvas client-credential scopes).
pub fn missing_for_auth(
    def: &ConnectorDef,
    kind: AuthKind,
    merged: &BTreeMap<String, String>,
) -> Vec<String> {
    let used = settings_used_by_auth(def, kind);
    def.settings
        .iter()
        .filter(|s| used.contains(&s.key))
        .filter(|s| match merged.get(&s.key) {
            None => true,
            Some(v) => v.trim().is_empty() && s.default.is_none(),
        })
        .map(|s| s.key.clone())
        .collect()
}

/// A plausible value for a setting, used at load time to render URL templates and catch those
/// that can never form a URL. Uses the declared default when it is valid.
pub(crate) fn sample_value(s: &SettingDef) -> String {
    if !s.secret {
        if let Some(d) = &s.default {
            if let Ok(v) = s.validate_value(&Value::String(d.clone())) {
                return v;
            }
        }
    }
    match s.kind {
        SettingType::Url => "https://example.invalid/".into(),
        SettingType::Integer => "1".into(),
        SettingType::Boolean => "true".into(),
        SettingType::Enum => s.options.first().cloned().unwrap_or_else(|| "x".into()),
        SettingType::String => "x".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Normalizer;
    use serde_json::json;

    fn setting(kind: SettingType) -> SettingDef {
        SettingDef {
            key: "k".into(),
            label: "K".into(),
            kind,
            required: false,
            secret: false,
            default: None,
            help: None,
            install_override: false,
            options: vec![],
            normalize: None,
        }
    }

    #[test]
    fn url_values() {
        let s = setting(SettingType::Url);
        assert_eq!(
            s.validate_value(&json!("https://x.org/a/")).unwrap(),
            "https://x.org/a/"
        );
        assert_eq!(
            s.validate_value(&json!("http://127.0.0.1:8080/")).unwrap(),
            "http://127.0.0.1:8080/"
        );
        for bad in [
            "x.org/a",
            "/relative",
            "ftp://x.org/",
            "https://x.org/#frag",
            "https://user:pw@x.org/",
            "https://user@x.org/",
            "https://x.org/a b",
            "https://x.org/\nfoo",
            "javascript:alert(1)",
            "",
            "https://",
            "file:///etc/passwd",
        ] {
            assert!(s.validate_value(&json!(bad)).is_err(), "{bad:?}");
        }
        assert!(s.validate_value(&json!(5)).is_err());
    }

    #[test]
    fn url_with_epic_normaliser() {
        let mut s = setting(SettingType::Url);
        s.normalize = Some(Normalizer::EpicEndpoint);
        assert_eq!(
            s.validate_value(&json!(" https://x.org/FHIRProxy/api/FHIR/R4 "))
                .unwrap(),
            "https://x.org/FHIRProxy/"
        );
    }

    #[test]
    fn integer_boolean_enum_values() {
        let i = setting(SettingType::Integer);
        assert_eq!(i.validate_value(&json!(42)).unwrap(), "42");
        assert_eq!(i.validate_value(&json!("-7")).unwrap(), "-7");
        assert_eq!(i.validate_value(&json!("+7")).unwrap(), "7");
        assert!(i.validate_value(&json!("4.2")).is_err());
        assert!(i.validate_value(&json!(4.2)).is_err());
        assert!(i.validate_value(&json!(true)).is_err());

        let b = setting(SettingType::Boolean);
        assert_eq!(b.validate_value(&json!(true)).unwrap(), "true");
        assert_eq!(b.validate_value(&json!("false")).unwrap(), "false");
        assert!(b.validate_value(&json!("yes")).is_err());
        assert!(b.validate_value(&json!(1)).is_err());

        let mut e = setting(SettingType::Enum);
        e.options = vec!["preview".into(), "production".into()];
        assert_eq!(e.validate_value(&json!("preview")).unwrap(), "preview");
        let err = e.validate_value(&json!("staging")).unwrap_err();
        assert_eq!(err, "must be one of: preview, production");
    }

    #[test]
    fn string_limits_and_secrecy_of_messages() {
        let mut s = setting(SettingType::String);
        s.secret = true;
        assert_eq!(s.validate_value(&json!("abc")).unwrap(), "abc");
        assert!(s.validate_value(&json!("x".repeat(4096))).is_ok());
        let long = "s3cr3t".repeat(1000);
        let err = s.validate_value(&json!(long)).unwrap_err();
        assert!(!err.contains("s3cr3t"));
        let err = s.validate_value(&json!("s3cr3t\nx")).unwrap_err();
        assert!(!err.contains("s3cr3t"));
        assert!(s.validate_value(&Value::Null).is_err());
        assert!(s.validate_value(&json!({"a": 1})).is_err());
        assert!(s.validate_value(&json!(["a"])).is_err());
        assert!(s.validate_value(&json!(3)).is_err());
    }

    fn def() -> ConnectorDef {
        let mut a = setting(SettingType::Url);
        a.key = "endpoint".into();
        a.default = Some("https://default/".into());
        a.install_override = true;
        let mut b = setting(SettingType::String);
        b.key = "client_id".into();
        b.required = true;
        let mut c = setting(SettingType::String);
        c.key = "scopes".into();
        c.default = Some("openid".into());
        let mut d = setting(SettingType::String);
        d.key = "api_token".into();
        d.secret = true;
        let mut e = setting(SettingType::String);
        e.key = "system_scopes".into();
        e.default = Some(String::new());
        ConnectorDef {
            id: "t".into(),
            name: "T".into(),
            version: "1.0.0".into(),
            description: None,
            settings: vec![a, b, c, d, e],
            auth: vec![
                crate::model::AuthDef::StaticBearer(crate::model::StaticBearerDef {
                    token: "{{settings.api_token}}".into(),
                }),
                crate::model::AuthDef::Oauth2ClientCredentials(
                    crate::model::ClientCredentialsDef {
                        token_url: Some("{{settings.endpoint}}token".into()),
                        client_id: "{{settings.client_id}}".into(),
                        client_secret: "{{settings.api_token}}".into(),
                        scopes: "{{settings.system_scopes}}".into(),
                        client_auth: Default::default(),
                        token_params: BTreeMap::new(),
                        revocation_url: None,
                    },
                ),
            ],
            fhir_base: "{{settings.endpoint}}fhir/".into(),
            headers: BTreeMap::new(),
            include: vec![],
            methods: vec![],
            limits: None,
            discovery: None,
            search_params: BTreeMap::new(),
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn merge_layers() {
        let d = def();
        let merged = merge_settings(&d, &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(
            merged,
            map(&[
                ("endpoint", "https://default/"),
                ("scopes", "openid"),
                ("system_scopes", "")
            ])
        );

        let setup = map(&[
            ("endpoint", "https://setup/"),
            ("client_id", "cid"),
            ("scopes", "openid fhirUser"),
            ("unknown", "x"),
        ]);
        let overrides = map(&[
            ("endpoint", "https://override/"),
            // Not install_override: must be ignored.
            ("client_id", "evil"),
            ("unknown", "y"),
        ]);
        let merged = merge_settings(&d, &setup, &overrides);
        assert_eq!(
            merged,
            map(&[
                ("endpoint", "https://override/"),
                ("client_id", "cid"),
                ("scopes", "openid fhirUser"),
                ("system_scopes", "")
            ])
        );
        let merged = merge_settings(&d, &setup, &BTreeMap::new());
        assert_eq!(merged["endpoint"], "https://setup/");
    }

    #[test]
    fn settings_per_auth_type() {
        let d = def();
        let used = settings_used_by_auth(&d, AuthKind::StaticBearer);
        assert_eq!(
            used.into_iter().collect::<Vec<_>>(),
            ["api_token", "endpoint"]
        );
        let used = settings_used_by_auth(&d, AuthKind::Oauth2ClientCredentials);
        assert_eq!(
            used.into_iter().collect::<Vec<_>>(),
            ["api_token", "client_id", "endpoint", "system_scopes"]
        );

        let merged = merge_settings(&d, &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(
            missing_for_auth(&d, AuthKind::StaticBearer, &merged),
            ["api_token"]
        );
        assert_eq!(
            missing_for_auth(&d, AuthKind::Oauth2ClientCredentials, &merged),
            ["client_id", "api_token"]
        );
        let merged = merge_settings(
            &d,
            &map(&[("client_id", "c"), ("api_token", "t")]),
            &BTreeMap::new(),
        );
        // system_scopes is "" by declared default: empty is meaningful there.
        assert!(missing_for_auth(&d, AuthKind::Oauth2ClientCredentials, &merged).is_empty());
        // An auth type the connector lacks needs only what the FHIR base needs.
        assert!(missing_for_auth(&d, AuthKind::Oauth2AuthorizationCode, &merged).is_empty());
    }

    #[test]
    fn samples_use_valid_defaults() {
        let d = def();
        assert_eq!(sample_value(&d.settings[0]), "https://default/");
        assert_eq!(sample_value(&d.settings[1]), "x");
        let mut u = setting(SettingType::Url);
        u.default = Some("not a url".into());
        assert_eq!(sample_value(&u), "https://example.invalid/");
    }
}
