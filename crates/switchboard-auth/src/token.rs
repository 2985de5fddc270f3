//! The back channel: token-endpoint requests (code exchange, refresh, client credentials) and
//! RFC 7009 revocation, with client authentication and error classification.

use crate::error::{scrub_description, scrub_error_code};
use crate::response::{parse_token_response, TokenResponse};
use crate::AuthError;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use std::error::Error as _;
use std::fmt;
use switchboard_connector::model::ClientAuth;
use url::form_urlencoded;
use url::Url;

/// Largest token-endpoint body read. Real responses are a few KiB (Epic JWT tokens + id_token).
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

const FORM: &str = "application/x-www-form-urlencoded";

/// RFC 7009 `token_type_hint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenTypeHint {
    AccessToken,
    RefreshToken,
}

impl TokenTypeHint {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AccessToken => "access_token",
            Self::RefreshToken => "refresh_token",
        }
    }
}

/// One authorization server's token endpoint, as seen by one client registration.
///
/// Every call takes the `reqwest::Client` to use. It MUST NOT follow redirects
/// (`redirect::Policy::none()`, which the shared outbound client uses): a 307/308 would replay
/// the form, with the code, verifier or refresh token and possibly the client secret, to
/// wherever `Location` points. A 3xx answer is reported as [`AuthError::Protocol`]. Timeouts are
/// the client's; a timeout is [`AuthError::Transient`].
///
/// Client authentication follows `client_auth` (RFC 6749 §2.3.1):
/// - `ClientSecretBasic`: `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))`,
///   no `client_id` in the body (Epic);
/// - `ClientSecretPost`: `client_id` and `client_secret` in the body;
/// - `None`: `client_id` in the body, the secret (even if set) sent nowhere.
///
/// `extra_params` are appended to code-exchange, refresh and client-credentials requests (not
/// to revocation). They cannot change a parameter this crate sets, nor `grant_type`,
/// `client_id` or `client_secret`; one that repeats a set parameter's exact value is dropped
/// (so a connector may always pass `redirect_uri`, which Canvas wants on refresh).
///
/// `Debug` shows neither the secret nor extra parameter values.
#[derive(Clone)]
pub struct TokenClient {
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub client_auth: ClientAuth,
    pub extra_params: Vec<(String, String)>,
}

impl fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenClient")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[REDACTED]"),
            )
            .field("client_auth", &self.client_auth)
            .field(
                "extra_params",
                &self
                    .extra_params
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl TokenClient {
    /// Authorization-code exchange with PKCE (RFC 6749 §4.1.3, RFC 7636 §4.5). `redirect_uri`
    /// must be the identical string sent to the authorization endpoint.
    pub async fn exchange_code(
        &self,
        http: &reqwest::Client,
        code: &str,
        redirect_uri: &str,
        verifier: &SecretString,
    ) -> Result<TokenResponse, AuthError> {
        let verifier = verifier.expose_secret();
        let params = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        self.token_request(http, params, &[code, verifier]).await
    }

    /// Refresh (RFC 6749 §6). A response without `refresh_token` means: keep the current one.
    pub async fn refresh(
        &self,
        http: &reqwest::Client,
        refresh_token: &SecretString,
    ) -> Result<TokenResponse, AuthError> {
        let refresh_token = refresh_token.expose_secret();
        let params = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        self.token_request(http, params, &[refresh_token]).await
    }

    /// Client credentials (RFC 6749 §4.4). `scope` is sent only when `scopes` is not blank
    /// (Epic's backend example and Canvas send none).
    pub async fn client_credentials(
        &self,
        http: &reqwest::Client,
        scopes: &str,
    ) -> Result<TokenResponse, AuthError> {
        let scopes = crate::authorize::normalize_scopes(scopes);
        let mut params = vec![("grant_type", "client_credentials")];
        if !scopes.is_empty() {
            params.push(("scope", &scopes));
        }
        self.token_request(http, params, &[]).await
    }

    /// Client credentials authenticated by a signed JWT (RFC 7523 §2.2, SMART Backend
    /// Services): `client_assertion_type` and `client_assertion` in the body, neither a client
    /// secret nor Basic authentication, no `client_id` (the assertion's `sub` names the
    /// client). `scope` only when `scopes` is not blank. Each assertion is used once.
    pub async fn client_credentials_with_assertion(
        &self,
        http: &reqwest::Client,
        scopes: &str,
        assertion: &SecretString,
    ) -> Result<TokenResponse, AuthError> {
        let scopes = crate::authorize::normalize_scopes(scopes);
        let assertion = assertion.expose_secret();
        let mut params = vec![("grant_type", "client_credentials")];
        if !scopes.is_empty() {
            params.push(("scope", &scopes));
        }
        params.push((
            "client_assertion_type",
            crate::signing::CLIENT_ASSERTION_TYPE,
        ));
        params.push(("client_assertion", assertion));
        let (body, _) = self.build_form_with(params, true, false)?;
        let answer = post_form(http, &self.token_url, body, None).await?;
        if !answer.is_success() {
            let err = classify_error(&answer, &self.sent_secrets(&[assertion]));
            tracing::debug!(status = answer.status, error = %err, "token endpoint refused the assertion");
            return Err(err);
        }
        match &answer.body {
            Some(body) => parse_token_response(body),
            None => Err(AuthError::Protocol(format!(
                "token response larger than {MAX_RESPONSE_BYTES} bytes"
            ))),
        }
    }

    /// RFC 7009 revocation, authenticated like the token requests. Any 2xx is success (the
    /// server answers 200 for unknown or already invalid tokens too).
    pub async fn revoke(
        &self,
        http: &reqwest::Client,
        revocation_url: &Url,
        token: &SecretString,
        hint: TokenTypeHint,
    ) -> Result<(), AuthError> {
        let token = token.expose_secret();
        let params = vec![("token", token), ("token_type_hint", hint.as_str())];
        let (body, basic) = self.build_form(params, false)?;
        let answer = post_form(http, revocation_url, body, basic).await?;
        if answer.is_success() {
            return Ok(());
        }
        Err(classify_error(&answer, &self.sent_secrets(&[token])))
    }

    async fn token_request(
        &self,
        http: &reqwest::Client,
        params: Vec<(&str, &str)>,
        request_secrets: &[&str],
    ) -> Result<TokenResponse, AuthError> {
        let (body, basic) = self.build_form(params, true)?;
        let answer = post_form(http, &self.token_url, body, basic).await?;
        if !answer.is_success() {
            let err = classify_error(&answer, &self.sent_secrets(request_secrets));
            tracing::debug!(status = answer.status, error = %err, "token endpoint refused");
            return Err(err);
        }
        match &answer.body {
            Some(body) => parse_token_response(body),
            None => Err(AuthError::Protocol(format!(
                "token response larger than {MAX_RESPONSE_BYTES} bytes"
            ))),
        }
    }

    fn sent_secrets<'a>(&'a self, request_secrets: &[&'a str]) -> Vec<&'a str> {
        let mut all = request_secrets.to_vec();
        if let Some(secret) = &self.client_secret {
            all.push(secret.expose_secret());
        }
        all
    }

    /// The form body (protocol params, client auth, extras) and the Basic header, if any.
    fn build_form<'a>(
        &'a self,
        params: Vec<(&'a str, &'a str)>,
        with_extras: bool,
    ) -> Result<(String, Option<HeaderValue>), AuthError> {
        self.build_form_with(params, with_extras, true)
    }

    /// [`Self::build_form`]; `client_auth = false` when `params` authenticate the client
    /// themselves (a client assertion).
    fn build_form_with<'a>(
        &'a self,
        mut params: Vec<(&'a str, &'a str)>,
        with_extras: bool,
        client_auth: bool,
    ) -> Result<(String, Option<HeaderValue>), AuthError> {
        if self.client_id.is_empty() {
            return Err(AuthError::Misconfigured("client_id is empty".into()));
        }
        let secret = self
            .client_secret
            .as_ref()
            .map(|s| s.expose_secret())
            .filter(|s| !s.is_empty());
        let mut basic = None;
        match self.client_auth {
            _ if !client_auth => {}
            ClientAuth::ClientSecretBasic => {
                let secret = secret.ok_or_else(|| {
                    AuthError::Misconfigured("client_secret_basic needs a client secret".into())
                })?;
                basic = Some(basic_authorization(&self.client_id, secret)?);
            }
            ClientAuth::ClientSecretPost => {
                let secret = secret.ok_or_else(|| {
                    AuthError::Misconfigured("client_secret_post needs a client secret".into())
                })?;
                params.push(("client_id", &self.client_id));
                params.push(("client_secret", secret));
            }
            ClientAuth::None => params.push(("client_id", &self.client_id)),
        }

        if with_extras {
            let set = params.len();
            for (name, value) in &self.extra_params {
                let name = name.as_str();
                let taken = params[..set].iter().any(|(n, _)| *n == name)
                    || matches!(
                        name,
                        "grant_type"
                            | "client_id"
                            | "client_secret"
                            | "client_assertion"
                            | "client_assertion_type"
                    );
                if taken {
                    if params[..set].contains(&(name, value.as_str())) {
                        continue;
                    }
                    return Err(AuthError::Misconfigured(format!(
                        "extra token parameter `{name}` would override a protocol parameter"
                    )));
                }
                params.push((name, value));
            }
        }

        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        Ok((body, basic))
    }
}

/// RFC 6749 §2.3.1: id and secret are application/x-www-form-urlencoded BEFORE base64, so
/// `a/b:c` becomes `a%2Fb%3Ac` (a raw `:` in the id would otherwise split the pair).
fn basic_authorization(client_id: &str, secret: &str) -> Result<HeaderValue, AuthError> {
    let id: String = form_urlencoded::byte_serialize(client_id.as_bytes()).collect();
    let secret: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let mut value = HeaderValue::from_str(&format!(
        "Basic {}",
        STANDARD.encode(format!("{id}:{secret}"))
    ))
    .map_err(|_| AuthError::Misconfigured("client credentials are not encodable".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// What came back: the status and the body (None when it exceeded [`MAX_RESPONSE_BYTES`] or
/// could not be read after a non-2xx status).
struct Answer {
    status: u16,
    body: Option<Vec<u8>>,
}

impl Answer {
    fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

async fn post_form(
    http: &reqwest::Client,
    url: &Url,
    body: String,
    basic: Option<HeaderValue>,
) -> Result<Answer, AuthError> {
    let mut request = http
        .post(url.clone())
        .header(ACCEPT, "application/json")
        .header(CONTENT_TYPE, FORM)
        .body(body);
    if let Some(basic) = basic {
        request = request.header(AUTHORIZATION, basic);
    }
    let response = request.send().await.map_err(transport_error)?;
    let status = response.status().as_u16();
    if (300..400).contains(&status) {
        return Err(AuthError::Protocol(format!(
            "authorization server answered with a redirect (HTTP {status}); redirects are not followed"
        )));
    }
    let body = match read_capped(response).await {
        Ok(body) => body,
        // A broken 2xx body: the server may have issued tokens we never saw; retrying is all
        // we can do. For an error status the status alone classifies it.
        Err(e) if (200..300).contains(&status) => return Err(transport_error(e)),
        Err(_) => None,
    };
    Ok(Answer { status, body })
}

async fn read_capped(mut response: reqwest::Response) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|len| len > MAX_RESPONSE_BYTES as u64)
    {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// Connect failures, timeouts and broken connections are transient; so are unclassified
/// send errors (a TLS failure is better retried and reported than taken as a dead grant).
/// The message is reqwest's chain without the URL (no query strings in errors).
fn transport_error(e: reqwest::Error) -> AuthError {
    if e.is_builder() {
        return AuthError::Misconfigured("the token request could not be built".into());
    }
    if e.is_redirect() {
        return AuthError::Protocol("redirect from the authorization server".into());
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut reason = kind.to_owned();
    let mut source = e.source();
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    AuthError::Transient {
        status: None,
        reason,
    }
}

/// Maps a non-2xx answer (RFC 6749 §5.2). The status decides first: 5xx, 429 and 408 are
/// transient whatever the body says (a proxy's 502 page and a 400 page must not look alike).
/// Then the JSON `error`: `invalid_grant`, `invalid_client`, the transient codes
/// `temporarily_unavailable`/`server_error`, anything else as [`AuthError::OAuth`]; a 4xx
/// without a JSON `error` is `http_<status>`. Only `error` and a scrubbed `error_description`
/// are kept; `sent_secrets` are redacted from the description.
fn classify_error(answer: &Answer, sent_secrets: &[&str]) -> AuthError {
    let status = answer.status;
    let (error, description) = answer
        .body
        .as_deref()
        .and_then(|body| serde_json::from_slice::<Value>(body).ok())
        .and_then(|v| {
            let error = v.get("error")?.as_str().and_then(scrub_error_code)?;
            let description = v
                .get("error_description")
                .and_then(Value::as_str)
                .and_then(|d| scrub_description(d, sent_secrets));
            Some((error, description))
        })
        .unzip();

    if status >= 500 || status == 429 || status == 408 {
        let reason = match &error {
            Some(code) => format!("HTTP {status} ({code})"),
            None => format!("HTTP {status}"),
        };
        return AuthError::Transient {
            status: Some(status),
            reason,
        };
    }
    let description = description.flatten();
    match error.as_deref() {
        Some("invalid_grant") => AuthError::InvalidGrant { description },
        Some("invalid_client") => AuthError::InvalidClient { description },
        Some(code @ ("temporarily_unavailable" | "server_error")) => AuthError::Transient {
            status: Some(status),
            reason: format!("HTTP {status} ({code})"),
        },
        Some(code) => AuthError::OAuth {
            error: code.to_owned(),
            description,
            status,
        },
        None => AuthError::OAuth {
            error: format!("http_{status}"),
            description: None,
            status,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(auth: ClientAuth) -> TokenClient {
        TokenClient {
            token_url: Url::parse("https://as.example/token").unwrap(),
            client_id: "a/b:c".into(),
            client_secret: Some(SecretString::from("s p+cret/7")),
            client_auth: auth,
            extra_params: vec![],
        }
    }

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: Some(body.as_bytes().to_vec()),
        }
    }

    #[test]
    fn basic_header_form_encodes_before_base64() {
        let v = basic_authorization("a/b:c", "s p+cret/7").unwrap();
        let expected = format!("Basic {}", STANDARD.encode("a%2Fb%3Ac:s+p%2Bcret%2F7"));
        assert_eq!(v.to_str().unwrap(), expected);
        assert!(v.is_sensitive());
    }

    #[test]
    fn missing_secret_is_a_configuration_error() {
        for auth in [ClientAuth::ClientSecretBasic, ClientAuth::ClientSecretPost] {
            let mut c = client(auth);
            c.client_secret = None;
            assert!(matches!(
                c.build_form(vec![], true),
                Err(AuthError::Misconfigured(_))
            ));
            c.client_secret = Some(SecretString::from(""));
            assert!(c.build_form(vec![], true).is_err());
        }
        let mut c = client(ClientAuth::None);
        c.client_secret = None;
        assert!(c.build_form(vec![], true).is_ok());
        c.client_id = String::new();
        assert!(c.build_form(vec![], true).is_err());
    }

    #[test]
    fn extras_cannot_override() {
        let mut c = client(ClientAuth::ClientSecretBasic);
        for name in ["grant_type", "client_id", "client_secret", "code"] {
            c.extra_params = vec![(name.into(), "x".into())];
            let err = c
                .build_form(
                    vec![("grant_type", "authorization_code"), ("code", "c0de")],
                    true,
                )
                .unwrap_err();
            assert!(matches!(err, AuthError::Misconfigured(_)), "{name}");
        }
        // Same value: dropped, not duplicated.
        c.extra_params = vec![("redirect_uri".into(), "https://x/cb".into())];
        let (body, _) = c
            .build_form(vec![("redirect_uri", "https://x/cb")], true)
            .unwrap();
        assert_eq!(body, "redirect_uri=https%3A%2F%2Fx%2Fcb");
        // Revocation does not take extras.
        c.extra_params = vec![("aud".into(), "y".into())];
        let (body, _) = c.build_form(vec![("token", "t")], false).unwrap();
        assert_eq!(body, "token=t");
    }

    #[test]
    fn status_wins_over_body() {
        let secrets: &[&str] = &[];
        for status in [500, 502, 503, 504, 429, 408] {
            let e = classify_error(&answer(status, r#"{"error":"invalid_grant"}"#), secrets);
            assert!(e.is_transient(), "{status}");
            assert_eq!(e.status(), Some(status));
        }
        let e = classify_error(&answer(503, "<html>down</html>"), secrets);
        assert!(matches!(
            e,
            AuthError::Transient {
                status: Some(503),
                ..
            }
        ));
        assert!(!e.to_string().contains("down"));
    }

    #[test]
    fn rfc6749_error_mapping() {
        let s: &[&str] = &[];
        assert!(matches!(
            classify_error(&answer(400, r#"{"error":"invalid_grant","error_description":"expired"}"#), s),
            AuthError::InvalidGrant { description: Some(d) } if d == "expired"
        ));
        for status in [400, 401] {
            assert!(matches!(
                classify_error(&answer(status, r#"{"error":"invalid_client"}"#), s),
                AuthError::InvalidClient { description: None }
            ));
        }
        assert!(matches!(
            classify_error(&answer(400, r#"{"error":"invalid_scope"}"#), s),
            AuthError::OAuth { error, status: 400, .. } if error == "invalid_scope"
        ));
        assert!(
            classify_error(&answer(400, r#"{"error":"temporarily_unavailable"}"#), s)
                .is_transient()
        );
        for (status, body) in [
            (400, "<html>no</html>"),
            (401, ""),
            (403, r#"{"message":"x"}"#),
            (404, r#"{"error":7}"#),
        ] {
            let e = classify_error(&answer(status, body), s);
            assert!(
                matches!(&e, AuthError::OAuth { error, status: st, description: None } if *error == format!("http_{status}") && *st == status),
                "{e:?}"
            );
        }
        let e = classify_error(
            &Answer {
                status: 400,
                body: None,
            },
            s,
        );
        assert!(matches!(e, AuthError::OAuth { ref error, .. } if error == "http_400"));
    }

    #[test]
    fn echoed_secrets_are_redacted() {
        let e = classify_error(
            &answer(
                400,
                r#"{"error":"invalid_grant","error_description":"refresh token RT-123456 was revoked"}"#,
            ),
            &["RT-123456"],
        );
        assert_eq!(
            e.to_string(),
            "the authorization server rejected the grant (invalid_grant): refresh token [REDACTED] was revoked"
        );
    }

    #[test]
    fn debug_redacts() {
        let mut c = client(ClientAuth::ClientSecretPost);
        c.extra_params = vec![("client_assertion".into(), "JWT-SECRET".into())];
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("s p+cret/7") && !dbg.contains("JWT-SECRET"),
            "{dbg}"
        );
        assert!(dbg.contains("client_assertion") && dbg.contains("[REDACTED]"));
    }
}
