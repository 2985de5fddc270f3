//! Lenient parsing of a successful token response (RFC 6749 §5.1 + SMART App Launch context).

use crate::{id_token, AuthError};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// A successful token-endpoint answer.
///
/// `Debug` redacts both tokens. A refresh response without `refresh_token` leaves it `None`:
/// keep the stored one (RFC 6749 §6; Epic and Cerner never rotate).
pub struct TokenResponse {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    /// Seconds; `None` when absent or unreadable.
    pub expires_in: Option<u64>,
    /// Seconds the refresh token stays valid, when the server declares it (non-standard:
    /// `refresh_expires_in` or `refresh_token_expires_in`; 0 means no limit and reads as None).
    pub refresh_expires_in: Option<u64>,
    /// Granted scopes as the server wrote them (may differ from the request; Epic answers with
    /// its own API names).
    pub scope: Option<String>,
    /// Always `"Bearer"` (checked case-insensitively, normalised).
    pub token_type: String,
    pub context: SmartContext,
}

impl TokenResponse {
    /// Absolute expiry in epoch milliseconds, given the time the request was sent.
    pub fn expires_at_ms(&self, sent_at_ms: i64) -> Option<i64> {
        let secs = i64::try_from(self.expires_in?).unwrap_or(i64::MAX);
        Some(sent_at_ms.saturating_add(secs.saturating_mul(1000)))
    }
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"[REDACTED]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("expires_in", &self.expires_in)
            .field("refresh_expires_in", &self.refresh_expires_in)
            .field("scope", &self.scope)
            .field("token_type", &self.token_type)
            .field("context", &self.context)
            .finish()
    }
}

/// SMART launch context from the token response, stored as JSON with the install.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmartContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    /// From the id_token (`fhirUser`, or `profile`); see `id_token::fhir_user` for why the
    /// signature is not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub need_patient_banner: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl SmartContext {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Parses a 2xx token response body. Lenient where servers differ harmlessly (any content type,
/// a UTF-8 BOM, `expires_in` as a numeric string, `token_type` in any letter case, unknown fields,
/// scope as an array), strict where it matters (an object, a usable `access_token`, Bearer).
/// Errors never quote the body.
pub(crate) fn parse_token_response(body: &[u8]) -> Result<TokenResponse, AuthError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return Err(AuthError::Protocol(
            "token response is not a JSON object".into(),
        ));
    };

    let access_token = match obj.get("access_token") {
        Some(Value::String(t)) if !t.is_empty() => t,
        Some(_) => {
            return Err(AuthError::Protocol(
                "token response has an empty or non-string access_token".into(),
            ))
        }
        None => {
            return Err(AuthError::Protocol(
                "token response has no access_token".into(),
            ))
        }
    };
    // It goes into `Authorization: Bearer ...` on every API call (RFC 6750 b64token is a subset).
    if !access_token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AuthError::Protocol(
            "access_token contains characters not allowed in an HTTP header".into(),
        ));
    }

    match obj.get("token_type") {
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
        Some(Value::String(t)) => {
            let shown: String = t
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .take(32)
                .collect();
            return Err(AuthError::Protocol(format!(
                "token_type `{shown}` is not Bearer"
            )));
        }
        _ => {
            return Err(AuthError::Protocol(
                "token response has no token_type".into(),
            ))
        }
    }

    let expires_in = match obj.get("expires_in") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let parsed = lenient_seconds(v);
            if parsed.is_none() {
                tracing::warn!("token response has an unreadable expires_in; ignoring it");
            }
            parsed
        }
    };

    let refresh_expires_in = ["refresh_expires_in", "refresh_token_expires_in"]
        .iter()
        .find_map(|k| obj.get(*k).and_then(lenient_seconds))
        .filter(|s| *s > 0);

    let refresh_token = match obj.get("refresh_token") {
        Some(Value::String(t)) if !t.is_empty() => Some(SecretString::from(t.as_str())),
        _ => None,
    };

    let scope = match obj.get("scope") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    };

    let context = SmartContext {
        patient: id_like(&obj, "patient"),
        encounter: id_like(&obj, "encounter"),
        fhir_user: match obj.get("id_token") {
            Some(Value::String(t)) => id_token::fhir_user(t),
            _ => None,
        },
        need_patient_banner: match obj.get("need_patient_banner") {
            Some(Value::Bool(b)) => Some(*b),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Some(true),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Some(false),
            _ => None,
        },
        tenant: id_like(&obj, "tenant"),
    };

    Ok(TokenResponse {
        access_token: SecretString::from(access_token.as_str()),
        refresh_token,
        expires_in,
        refresh_expires_in,
        scope,
        token_type: "Bearer".to_owned(),
        context,
    })
}

/// `3600`, `3600.0`, `"3600"`, `" 3600 "` -> 3600. Negative, fractional-garbage or huge -> None.
fn lenient_seconds(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && *f < 1e15)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
}

/// A string id (numbers tolerated); empty strings are absent.
fn id_like(obj: &Map<String, Value>, key: &str) -> Option<String> {
    match obj.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id_token::tests::fake_jwt;
    use secrecy::ExposeSecret;
    use serde_json::json;

    fn parse(v: Value) -> Result<TokenResponse, AuthError> {
        parse_token_response(v.to_string().as_bytes())
    }

    #[test]
    fn epic_style_response() {
        let r = parse(json!({
            "access_token": "eyJ.access.token",
            "token_type": "bearer",
            "expires_in": 3240,
            "scope": "Patient.read Patient.search",
            "state": "abc",
            "patient": "erXuFYUfucBZaryVksYEcMg3",
            "__epic.dstu2.patient": "T1wI5bk8n1YVgvWk9D05BmRV0Pi3ECImNSK8DKyKltsMB",
            "encounter": "eySnzekbpf6uGZz87ndPuRQ3",
            "need_patient_banner": "true",
            "id_token": fake_jwt(&json!({"fhirUser": "https://fhir.example/Practitioner/p1", "exp": 1}))
        }))
        .unwrap();
        assert_eq!(r.access_token.expose_secret(), "eyJ.access.token");
        assert!(r.refresh_token.is_none());
        assert_eq!(r.expires_in, Some(3240));
        assert_eq!(r.scope.as_deref(), Some("Patient.read Patient.search"));
        assert_eq!(r.token_type, "Bearer");
        assert_eq!(
            r.context,
            SmartContext {
                patient: Some("erXuFYUfucBZaryVksYEcMg3".into()),
                encounter: Some("eySnzekbpf6uGZz87ndPuRQ3".into()),
                fhir_user: Some("https://fhir.example/Practitioner/p1".into()),
                need_patient_banner: Some(true),
                tenant: None,
            }
        );
        assert_eq!(
            serde_json::to_value(&r.context).unwrap(),
            json!({
                "patient": "erXuFYUfucBZaryVksYEcMg3",
                "encounter": "eySnzekbpf6uGZz87ndPuRQ3",
                "fhir_user": "https://fhir.example/Practitioner/p1",
                "need_patient_banner": true
            })
        );
    }

    #[test]
    fn expires_in_is_lenient() {
        for (v, want) in [
            (json!(3600), Some(3600)),
            (json!("3600"), Some(3600)),
            (json!(" 570 "), Some(570)),
            (json!(3599.9), Some(3599)),
            (json!(-5), None),
            (json!("soon"), None),
            (json!(null), None),
            (json!({}), None),
        ] {
            let r = parse(json!({"access_token": "a", "token_type": "Bearer", "expires_in": v}))
                .unwrap();
            assert_eq!(r.expires_in, want, "{v}");
        }
    }

    #[test]
    fn token_type_must_be_bearer_in_any_case() {
        for ok in ["bearer", "Bearer", "BEARER"] {
            assert!(parse(json!({"access_token": "a", "token_type": ok})).is_ok());
        }
        for bad in [
            json!({"access_token": "a", "token_type": "mac"}),
            json!({"access_token": "a", "token_type": "DPoP"}),
            json!({"access_token": "a"}),
            json!({"access_token": "a", "token_type": 1}),
        ] {
            assert!(matches!(parse(bad), Err(AuthError::Protocol(_))));
        }
    }

    #[test]
    fn access_token_is_required_and_usable() {
        for bad in [
            json!({"token_type": "bearer", "refresh_token": "RT-SECRET"}),
            json!({"access_token": "", "token_type": "bearer"}),
            json!({"access_token": 12, "token_type": "bearer"}),
            json!({"access_token": "a b", "token_type": "bearer"}),
            json!({"access_token": "a\r\nX-Evil: 1", "token_type": "bearer"}),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(matches!(err, AuthError::Protocol(_)));
            assert!(!format!("{err} {err:?}").contains("RT-SECRET"));
        }
    }

    #[test]
    fn non_json_bodies_are_protocol_errors_without_the_body() {
        for body in [
            &b"<html>AT-SECRET</html>"[..],
            b"",
            b"[1,2]",
            b"access_token=AT-SECRET&token_type=bearer",
        ] {
            let err = parse_token_response(body).unwrap_err();
            assert!(matches!(err, AuthError::Protocol(_)));
            assert!(!format!("{err} {err:?}").contains("AT-SECRET"));
        }
    }

    #[test]
    fn odd_but_harmless_shapes() {
        let mut body = b"\xEF\xBB\xBF".to_vec();
        body.extend_from_slice(
            json!({
                "access_token": "a", "token_type": "Bearer", "refresh_token": "",
                "scope": ["openid", "fhirUser"], "patient": 123, "tenant": "t1",
                "need_patient_banner": false, "id_token": "garbage", "unknown": {"x": [1]}
            })
            .to_string()
            .as_bytes(),
        );
        let r = parse_token_response(&body).unwrap();
        assert!(r.refresh_token.is_none(), "empty refresh_token = none");
        assert_eq!(r.scope.as_deref(), Some("openid fhirUser"));
        assert_eq!(r.context.patient.as_deref(), Some("123"));
        assert_eq!(r.context.tenant.as_deref(), Some("t1"));
        assert_eq!(r.context.need_patient_banner, Some(false));
        assert_eq!(r.context.fhir_user, None);
    }

    #[test]
    fn debug_redacts_tokens_and_expiry_helper() {
        let r = parse(json!({
            "access_token": "AT-SECRET-1", "refresh_token": "RT-SECRET-2",
            "token_type": "bearer", "expires_in": 60
        }))
        .unwrap();
        let dbg = format!("{r:?}");
        assert!(
            !dbg.contains("AT-SECRET-1") && !dbg.contains("RT-SECRET-2"),
            "{dbg}"
        );
        assert!(dbg.contains("[REDACTED]"));
        assert_eq!(
            r.refresh_token.as_ref().unwrap().expose_secret(),
            "RT-SECRET-2"
        );
        assert_eq!(r.expires_at_ms(1_000), Some(61_000));
        assert!(SmartContext::default().is_empty());
    }

    #[test]
    fn a_declared_refresh_token_lifetime_is_read() {
        let r = parse(json!({"access_token": "a", "token_type": "Bearer",
            "refresh_token": "r", "refresh_expires_in": 1800}))
        .unwrap();
        assert_eq!(r.refresh_expires_in, Some(1800));
        let r = parse(json!({"access_token": "a", "token_type": "Bearer",
            "refresh_token": "r", "refresh_token_expires_in": "7776000"}))
        .unwrap();
        assert_eq!(r.refresh_expires_in, Some(7_776_000));
        // Keycloak's offline tokens say 0: no limit.
        let r = parse(json!({"access_token": "a", "token_type": "Bearer",
            "refresh_expires_in": 0}))
        .unwrap();
        assert_eq!(r.refresh_expires_in, None);
        let r = parse(json!({"access_token": "a", "token_type": "Bearer"})).unwrap();
        assert_eq!(r.refresh_expires_in, None);
    }
}
