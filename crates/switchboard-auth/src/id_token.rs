//! Reading the `fhirUser` claim of an OpenID Connect id_token.

use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashSet;

#[derive(Deserialize)]
struct Claims {
    #[serde(rename = "fhirUser", default)]
    fhir_user: Option<Value>,
    #[serde(default)]
    profile: Option<Value>,
}

/// The `fhirUser` claim (SMART v2), else `profile` (SMART v1), of an id_token, read WITHOUT
/// verifying the signature or any claim.
///
/// Why that is sound here: the id_token is only ever taken from the body of a token-endpoint
/// response, over a TLS connection we opened ourselves to the token URL recorded for the install.
/// OpenID Connect Core 1.0 §3.1.3.7 (item 6) allows exactly this: "If the ID Token is received via
/// direct communication between the Client and the Token Endpoint ..., the TLS server validation
/// MAY be used to validate the issuer in place of checking the token signature." The value is only
/// stored as launch context (who authorised the install); Switchboard never uses it to
/// authenticate anyone or to take an authorization decision. Expiry is not checked either (Epic
/// id_tokens live 5 minutes, and we read the claim once, at exchange time).
///
/// Anything unreadable (not a JWT, unknown `alg`, claim not a string) gives `None`: a broken
/// id_token must not cost the install its access token.
pub(crate) fn fhir_user(id_token: &str) -> Option<String> {
    let mut validation = Validation::default();
    validation.insecure_disable_signature_validation();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims = HashSet::new();
    let data =
        jsonwebtoken::decode::<Claims>(id_token, &DecodingKey::from_secret(&[]), &validation)
            .ok()?;
    let pick = |v: Option<Value>| match v {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s),
        _ => None,
    };
    pick(data.claims.fhir_user).or_else(|| pick(data.claims.profile))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    /// An RS256-looking JWT with a junk signature.
    pub(crate) fn fake_jwt(claims: &serde_json::Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{header}.{payload}.c2lnbmF0dXJl")
    }

    #[test]
    fn reads_fhir_user_without_verification_even_when_expired() {
        let t = fake_jwt(&serde_json::json!({
            "iss": "https://as.example", "aud": "client", "sub": "u1",
            "exp": 1_000_000, "iat": 999_700,
            "fhirUser": "https://fhir.example/Practitioner/123",
            "profile": "Practitioner/ignored"
        }));
        assert_eq!(
            fhir_user(&t).as_deref(),
            Some("https://fhir.example/Practitioner/123")
        );
    }

    #[test]
    fn falls_back_to_profile() {
        let t = fake_jwt(&serde_json::json!({"profile": "Patient/9", "fhirUser": 5}));
        assert_eq!(fhir_user(&t).as_deref(), Some("Patient/9"));
    }

    #[test]
    fn unreadable_tokens_give_none() {
        assert_eq!(fhir_user("not-a-jwt"), None);
        assert_eq!(fhir_user("a.b.c"), None);
        assert_eq!(fhir_user(&fake_jwt(&serde_json::json!({"sub": "x"}))), None);
        let none_alg = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(br#"{"fhirUser":"Patient/1"}"#)
        );
        assert_eq!(fhir_user(&none_alg), None);
    }
}
