//! Install tokens at rest: AES-GCM under the key ring, bound by AAD to the install and to which
//! token it is (`install:<id>:access_token` / `:refresh_token`). Depends on nothing else in the
//! crate but the error type.

use crate::error::ServiceError;
use secrecy::{ExposeSecret, SecretString};
use switchboard_auth::TokenResponse;
use switchboard_crypto::KeyRing;
use switchboard_db::Install;

/// A token response ready to store.
#[derive(Clone)]
pub struct SealedTokens {
    pub access: Vec<u8>,
    pub refresh: Option<Vec<u8>>,
    pub expires_at: Option<i64>,
    pub scopes: Option<String>,
    pub context: Option<String>,
    /// When the refresh token lapses if unused: the server's declared `refresh_expires_in`, or
    /// the connector's `refresh_token_idle_secs` if sooner (added by whoever knows the
    /// connector: the token endpoint, the callback).
    pub refresh_expires_at: Option<i64>,
}

pub(crate) fn token_aad(install_id: &str, which: &str) -> String {
    format!("install:{install_id}:{which}")
}

/// Seals a token response received at `now` (epoch ms; the expiry is counted from it).
pub(crate) fn seal_tokens(
    crypto: &KeyRing,
    install_id: &str,
    t: &TokenResponse,
    now: i64,
) -> SealedTokens {
    let access = crypto.encrypt(
        t.access_token.expose_secret().as_bytes(),
        token_aad(install_id, "access_token").as_bytes(),
    );
    let refresh = t.refresh_token.as_ref().map(|r| {
        crypto.encrypt(
            r.expose_secret().as_bytes(),
            token_aad(install_id, "refresh_token").as_bytes(),
        )
    });
    // The launch context names the patient (PHI): sealed like the tokens.
    let context = serde_json::to_value(&t.context)
        .ok()
        .filter(|v| {
            v.as_object()
                .is_some_and(|o| o.values().any(|x| !x.is_null()))
        })
        .map(|v| seal_context(crypto, install_id, &v.to_string()));
    SealedTokens {
        access,
        refresh,
        expires_at: t
            .expires_in
            .map(|s| now + (s.min(10 * 365 * 86_400) as i64) * 1000),
        scopes: t.scope.clone(),
        context,
        // The server's declared refresh-token lifetime; the token endpoint adds the connector's.
        refresh_expires_at: t
            .refresh_expires_in
            .map(|s| now + (s.min(10 * 365 * 86_400) as i64) * 1000),
    }
}

/// The stored form of a launch context: `{"enc":"<base64 blob>"}` under the AAD
/// `install:{id}:context`.
pub(crate) fn seal_context(crypto: &KeyRing, install_id: &str, json: &str) -> String {
    use base64::Engine as _;
    let blob = crypto.encrypt(json.as_bytes(), token_aad(install_id, "context").as_bytes());
    serde_json::json!({ "enc": base64::engine::general_purpose::STANDARD.encode(blob) }).to_string()
}

/// The launch context of a row as JSON: sealed ones are opened; a plaintext object written
/// before issue 11 is read as is. `None` when absent or unreadable.
pub(crate) fn open_context(
    crypto: &KeyRing,
    install_id: &str,
    stored: Option<&str>,
) -> Option<serde_json::Value> {
    use base64::Engine as _;
    let v: serde_json::Value = serde_json::from_str(stored?).ok()?;
    match v.get("enc").and_then(serde_json::Value::as_str) {
        Some(b64) => {
            let blob = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            let plain = crypto
                .decrypt(&blob, token_aad(install_id, "context").as_bytes())
                .ok()?;
            serde_json::from_slice(&plain).ok()
        }
        None => Some(v),
    }
}

pub(crate) struct OpenTokens {
    pub access: Option<SecretString>,
    pub refresh: Option<SecretString>,
}

pub(crate) fn open_tokens(crypto: &KeyRing, row: &Install) -> Result<OpenTokens, ServiceError> {
    let open =
        |blob: &Option<Vec<u8>>, which: &str| -> Result<Option<SecretString>, ServiceError> {
            match blob {
                Some(b) => {
                    let plain = crypto.decrypt(b, token_aad(&row.id, which).as_bytes())?;
                    let s = String::from_utf8(plain)
                        .map_err(|_| ServiceError::internal("stored token is not UTF-8"))?;
                    Ok(Some(SecretString::from(s)))
                }
                None => Ok(None),
            }
        };
    Ok(OpenTokens {
        access: open(&row.access_token, "access_token")?,
        refresh: open(&row.refresh_token, "refresh_token")?,
    })
}
