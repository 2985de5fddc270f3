//! Token-endpoint and revocation calls against a local mock authorization server (127.0.0.1).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use std::time::Duration;
use switchboard_auth::{AuthError, ClientAuth, TokenClient, TokenTypeHint};
use url::Url;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const CLIENT_ID: &str = "a/b:c";
const SECRET: &str = "s p+cret/7";
const CODE: &str = "CODE-5f2a9c";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const REDIRECT: &str = "https://sb.example/connector/callback?x=1&y=a b";
const ACCESS: &str = "AT-eyJhbGciOi.secret";
const REFRESH: &str = "RT-0b6f1e.secret";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_millis(800))
        .build()
        .unwrap()
}

fn client(server: &MockServer, auth: ClientAuth) -> TokenClient {
    TokenClient {
        token_url: Url::parse(&format!("{}/oauth2/token", server.uri())).unwrap(),
        client_id: CLIENT_ID.into(),
        client_secret: Some(SecretString::from(SECRET)),
        client_auth: auth,
        extra_params: vec![],
    }
}

fn ok_body() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "access_token": ACCESS, "token_type": "Bearer", "expires_in": 3600,
        "refresh_token": REFRESH, "scope": "openid patient/Patient.read"
    }))
}

async fn mount(server: &MockServer, response: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path("/oauth2/token"))
        .respond_with(response)
        .mount(server)
        .await;
}

async fn only_request(server: &MockServer) -> Request {
    let mut requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    requests.pop().unwrap()
}

fn form(req: &Request) -> Vec<(String, String)> {
    url::form_urlencoded::parse(&req.body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers.get(name).map(|v| v.to_str().unwrap())
}

fn assert_form_headers(req: &Request) {
    assert_eq!(req.method.as_str(), "POST");
    assert_eq!(header(req, "accept"), Some("application/json"));
    assert_eq!(
        header(req, "content-type"),
        Some("application/x-www-form-urlencoded")
    );
}

/// Nothing the client sent or the server answered may show up in an error.
fn assert_clean(err: &AuthError, extra: &[&str]) {
    let text = format!("{err} {err:?}");
    for s in [SECRET, CODE, VERIFIER, ACCESS, REFRESH]
        .iter()
        .chain(extra)
    {
        assert!(!text.contains(s), "{s:?} leaked into {text}");
    }
}

#[tokio::test]
async fn exchange_code_with_client_secret_basic() {
    let server = MockServer::start().await;
    mount(&server, ok_body()).await;
    let r = client(&server, ClientAuth::ClientSecretBasic)
        .exchange_code(&http(), CODE, REDIRECT, &SecretString::from(VERIFIER))
        .await
        .unwrap();
    assert_eq!(r.access_token.expose_secret(), ACCESS);
    assert_eq!(r.refresh_token.unwrap().expose_secret(), REFRESH);
    assert_eq!(r.expires_in, Some(3600));

    let req = only_request(&server).await;
    assert_form_headers(&req);
    // RFC 6749 §2.3.1: form-urlencode id and secret, then base64.
    let expected = format!("Basic {}", STANDARD.encode("a%2Fb%3Ac:s+p%2Bcret%2F7"));
    assert_eq!(header(&req, "authorization"), Some(expected.as_str()));
    // No client_id in the body (Epic), redirect_uri byte-identical to the authorize one.
    assert_eq!(
        form(&req),
        pairs(&[
            ("grant_type", "authorization_code"),
            ("code", CODE),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ])
    );
}

#[tokio::test]
async fn exchange_code_with_client_secret_post_and_extras() {
    let server = MockServer::start().await;
    mount(&server, ok_body()).await;
    let mut c = client(&server, ClientAuth::ClientSecretPost);
    // The connector passes redirect_uri for refresh (Canvas); on exchange it is not doubled.
    c.extra_params = vec![
        ("redirect_uri".into(), REDIRECT.into()),
        ("aud".into(), "https://fhir.example/R4/".into()),
    ];
    c.exchange_code(&http(), CODE, REDIRECT, &SecretString::from(VERIFIER))
        .await
        .unwrap();
    let req = only_request(&server).await;
    assert_form_headers(&req);
    assert_eq!(header(&req, "authorization"), None);
    assert_eq!(
        form(&req),
        pairs(&[
            ("grant_type", "authorization_code"),
            ("code", CODE),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("aud", "https://fhir.example/R4/"),
        ])
    );
}

#[tokio::test]
async fn public_client_sends_no_secret_anywhere() {
    let server = MockServer::start().await;
    mount(&server, ok_body()).await;
    // A secret is configured but client_auth = none: it must not be sent.
    client(&server, ClientAuth::None)
        .exchange_code(&http(), CODE, REDIRECT, &SecretString::from(VERIFIER))
        .await
        .unwrap();
    let req = only_request(&server).await;
    assert_eq!(header(&req, "authorization"), None);
    assert_eq!(
        form(&req),
        pairs(&[
            ("grant_type", "authorization_code"),
            ("code", CODE),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("client_id", CLIENT_ID),
        ])
    );
    let raw = String::from_utf8_lossy(&req.body);
    assert!(!raw.contains("cret"), "{raw}");
}

#[tokio::test]
async fn refresh_canvas_style_rotating() {
    let server = MockServer::start().await;
    mount(
        &server,
        ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "AT-new", "token_type": "Bearer", "expires_in": "36000",
            "refresh_token": "RT-new", "scope": "user/Patient.read"
        })),
    )
    .await;
    let mut c = client(&server, ClientAuth::ClientSecretPost);
    c.extra_params = vec![("redirect_uri".into(), REDIRECT.into())];
    let r = c
        .refresh(&http(), &SecretString::from(REFRESH))
        .await
        .unwrap();
    assert_eq!(r.access_token.expose_secret(), "AT-new");
    assert_eq!(r.refresh_token.unwrap().expose_secret(), "RT-new");
    assert_eq!(r.expires_in, Some(36000));
    let req = only_request(&server).await;
    assert_form_headers(&req);
    assert_eq!(
        form(&req),
        pairs(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", REFRESH),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("redirect_uri", REDIRECT),
        ])
    );
}

#[tokio::test]
async fn refresh_epic_style_keeps_no_new_refresh_token() {
    let server = MockServer::start().await;
    mount(
        &server,
        ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "AT-2", "token_type": "bearer", "expires_in": 3240,
            "scope": "Patient.read Patient.search"
        })),
    )
    .await;
    let r = client(&server, ClientAuth::ClientSecretBasic)
        .refresh(&http(), &SecretString::from(REFRESH))
        .await
        .unwrap();
    assert!(r.refresh_token.is_none());
    let req = only_request(&server).await;
    assert!(header(&req, "authorization").unwrap().starts_with("Basic "));
    assert_eq!(
        form(&req),
        pairs(&[("grant_type", "refresh_token"), ("refresh_token", REFRESH)])
    );
}

#[tokio::test]
async fn client_credentials_scope_only_when_given() {
    let server = MockServer::start().await;
    mount(&server, ok_body()).await;
    let c = client(&server, ClientAuth::ClientSecretPost);
    c.client_credentials(&http(), " system/Patient.read\n system/Observation.read ")
        .await
        .unwrap();
    c.client_credentials(&http(), "").await.unwrap();
    let requests = server.received_requests().await.unwrap();
    assert_eq!(
        form(&requests[0]),
        pairs(&[
            ("grant_type", "client_credentials"),
            ("scope", "system/Patient.read system/Observation.read"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
        ])
    );
    assert_eq!(
        form(&requests[1]),
        pairs(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
        ])
    );
}

#[tokio::test]
async fn smart_context_through_http() {
    let server = MockServer::start().await;
    let claims = json!({"fhirUser": "Practitioner/p1", "exp": 1});
    let id_token = format!(
        "{}.{}.sig",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    // JSON served with a wrong content type is still read.
    mount(
        &server,
        ResponseTemplate::new(200).set_body_raw(
            json!({
                "access_token": ACCESS, "token_type": "BEARER", "expires_in": "3240",
                "patient": "erXuFYU", "encounter": "eySnz", "need_patient_banner": true,
                "tenant": "org1", "id_token": id_token, "location": "x", "state": "s"
            })
            .to_string(),
            "text/plain",
        ),
    )
    .await;
    let r = client(&server, ClientAuth::ClientSecretBasic)
        .exchange_code(&http(), CODE, REDIRECT, &SecretString::from(VERIFIER))
        .await
        .unwrap();
    assert_eq!(r.expires_in, Some(3240));
    assert_eq!(
        serde_json::to_value(&r.context).unwrap(),
        json!({"patient": "erXuFYU", "encounter": "eySnz", "fhir_user": "Practitioner/p1",
               "need_patient_banner": true, "tenant": "org1"})
    );
}

type Check = fn(&AuthError) -> bool;

#[tokio::test]
async fn error_statuses_are_classified() {
    let cases: Vec<(ResponseTemplate, Check)> = vec![
        (
            ResponseTemplate::new(400).set_body_json(
                json!({"error": "invalid_grant", "error_description": "code CODE-5f2a9c expired"}),
            ),
            |e| matches!(e, AuthError::InvalidGrant { description: Some(d) } if d == "code [REDACTED] expired"),
        ),
        (
            ResponseTemplate::new(401)
                .insert_header("www-authenticate", "Basic realm=\"x\"")
                .set_body_json(json!({"error": "invalid_client"})),
            |e| matches!(e, AuthError::InvalidClient { .. }),
        ),
        (
            ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_client"})),
            |e| matches!(e, AuthError::InvalidClient { .. }),
        ),
        (
            ResponseTemplate::new(400).set_body_json(json!({"error": "unauthorized_client"})),
            |e| matches!(e, AuthError::OAuth { error, status: 400, .. } if error == "unauthorized_client"),
        ),
        (
            ResponseTemplate::new(503)
                .set_body_raw("<html>AT-eyJhbGciOi.secret down</html>", "text/html"),
            |e| {
                matches!(
                    e,
                    AuthError::Transient {
                        status: Some(503),
                        ..
                    }
                )
            },
        ),
        (
            ResponseTemplate::new(502).set_body_raw("", "text/plain"),
            |e| {
                matches!(
                    e,
                    AuthError::Transient {
                        status: Some(502),
                        ..
                    }
                )
            },
        ),
        (
            ResponseTemplate::new(429)
                .insert_header("retry-after", "30")
                .set_body_json(json!({"error": "slow_down"})),
            |e| {
                matches!(
                    e,
                    AuthError::Transient {
                        status: Some(429),
                        ..
                    }
                )
            },
        ),
        (
            ResponseTemplate::new(500).set_body_json(json!({"error": "invalid_grant"})),
            |e| e.is_transient() && !e.is_invalid_grant(),
        ),
        (
            ResponseTemplate::new(400).set_body_raw("<html>Bad Request</html>", "text/html"),
            |e| matches!(e, AuthError::OAuth { error, status: 400, description: None } if error == "http_400"),
        ),
        (
            ResponseTemplate::new(403),
            |e| matches!(e, AuthError::OAuth { error, status: 403, .. } if error == "http_403"),
        ),
        (
            ResponseTemplate::new(200).set_body_raw("<html>RT-0b6f1e.secret</html>", "text/html"),
            |e| matches!(e, AuthError::Protocol(_)),
        ),
        (
            ResponseTemplate::new(200)
                .set_body_json(json!({"refresh_token": REFRESH, "token_type": "bearer"})),
            |e| matches!(e, AuthError::Protocol(_)),
        ),
        (
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": ACCESS, "token_type": "mac"})),
            |e| matches!(e, AuthError::Protocol(_)),
        ),
        (
            ResponseTemplate::new(200).set_body_raw(
                format!(
                    r#"{{"access_token":"{}","token_type":"bearer"}}"#,
                    "A".repeat(300 * 1024)
                ),
                "application/json",
            ),
            |e| matches!(e, AuthError::Protocol(_)),
        ),
    ];
    for (i, (response, check)) in cases.into_iter().enumerate() {
        let server = MockServer::start().await;
        mount(&server, response).await;
        let err = client(&server, ClientAuth::ClientSecretBasic)
            .exchange_code(&http(), CODE, REDIRECT, &SecretString::from(VERIFIER))
            .await
            .unwrap_err();
        assert!(check(&err), "case {i}: {err:?}");
        assert_clean(&err, &["<html>", "Bad Request"]);
    }
}

#[tokio::test]
async fn timeout_is_transient() {
    let server = MockServer::start().await;
    mount(&server, ok_body().set_delay(Duration::from_secs(3))).await;
    let err = client(&server, ClientAuth::ClientSecretBasic)
        .refresh(&http(), &SecretString::from(REFRESH))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AuthError::Transient { status: None, reason } if reason.starts_with("timed out")),
        "{err:?}"
    );
    assert_clean(&err, &[]);
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let c = TokenClient {
        token_url: Url::parse(&format!("http://127.0.0.1:{port}/oauth2/token?tenant=t")).unwrap(),
        client_id: CLIENT_ID.into(),
        client_secret: Some(SecretString::from(SECRET)),
        client_auth: ClientAuth::ClientSecretBasic,
        extra_params: vec![],
    };
    let err = c
        .refresh(&http(), &SecretString::from(REFRESH))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AuthError::Transient { status: None, reason } if reason.starts_with("connection failed")),
        "{err:?}"
    );
    assert!(!err.to_string().contains("tenant=t"), "no URL in the error");
    assert_clean(&err, &[]);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let server = MockServer::start().await;
    mount(
        &server,
        ResponseTemplate::new(307).insert_header("location", format!("{}/evil", server.uri())),
    )
    .await;
    Mock::given(path("/evil"))
        .respond_with(ok_body())
        .expect(0)
        .mount(&server)
        .await;
    let err = client(&server, ClientAuth::ClientSecretPost)
        .exchange_code(&http(), CODE, REDIRECT, &SecretString::from(VERIFIER))
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Protocol(_)), "{err:?}");
    assert!(!err.is_transient() && !err.is_invalid_grant());
}

#[tokio::test]
async fn conflicting_extra_params_send_nothing() {
    let server = MockServer::start().await;
    mount(&server, ok_body()).await;
    let mut c = client(&server, ClientAuth::ClientSecretBasic);
    c.extra_params = vec![("grant_type".into(), "password".into())];
    let err = c
        .refresh(&http(), &SecretString::from(REFRESH))
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Misconfigured(_)));
    c.extra_params = vec![("code_verifier".into(), "other".into())];
    let err = c
        .exchange_code(&http(), CODE, REDIRECT, &SecretString::from(VERIFIER))
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Misconfigured(_)));
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn revoke_rfc7009() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/revoke"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let revocation_url = Url::parse(&format!("{}/oauth2/revoke", server.uri())).unwrap();
    let mut c = client(&server, ClientAuth::ClientSecretBasic);
    c.extra_params = vec![("redirect_uri".into(), REDIRECT.into())];
    c.revoke(
        &http(),
        &revocation_url,
        &SecretString::from(REFRESH),
        TokenTypeHint::RefreshToken,
    )
    .await
    .unwrap();
    let req = only_request(&server).await;
    assert_form_headers(&req);
    assert!(header(&req, "authorization").unwrap().starts_with("Basic "));
    // Same client auth as the token endpoint, no token-request extras.
    assert_eq!(
        form(&req),
        pairs(&[("token", REFRESH), ("token_type_hint", "refresh_token")])
    );

    // Public client: client_id in the body.
    let c = client(&server, ClientAuth::None);
    c.revoke(
        &http(),
        &revocation_url,
        &SecretString::from(ACCESS),
        TokenTypeHint::AccessToken,
    )
    .await
    .unwrap();
    let requests = server.received_requests().await.unwrap();
    assert_eq!(
        form(&requests[1]),
        pairs(&[
            ("token", ACCESS),
            ("token_type_hint", "access_token"),
            ("client_id", CLIENT_ID)
        ])
    );
}

#[tokio::test]
async fn revoke_errors() {
    for (response, check) in [
        (
            ResponseTemplate::new(503).insert_header("retry-after", "5"),
            (|e: &AuthError| e.is_transient()) as Check,
        ),
        (
            ResponseTemplate::new(400).set_body_json(json!({"error": "unsupported_token_type"})),
            |e| matches!(e, AuthError::OAuth { error, .. } if error == "unsupported_token_type"),
        ),
        (
            ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})),
            |e| matches!(e, AuthError::InvalidClient { .. }),
        ),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(response)
            .mount(&server)
            .await;
        let url = Url::parse(&format!("{}/revoke", server.uri())).unwrap();
        let err = client(&server, ClientAuth::ClientSecretPost)
            .revoke(
                &http(),
                &url,
                &SecretString::from(REFRESH),
                TokenTypeHint::RefreshToken,
            )
            .await
            .unwrap_err();
        assert!(check(&err), "{err:?}");
        assert_clean(&err, &[]);
    }
}
