//! Proves the oidc-provider harness: a real authorization server, driven through its login and
//! consent pages, exchanging codes for every client authentication method, with rotating
//! refresh tokens whose reuse is rejected.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rand::RngCore as _;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use switchboard_testkit::oauth::ClientAuthMethod;
use switchboard_testkit::oidc::{OidcClient, OidcProvider};
use url::Url;

const CALLBACK: &str = "http://127.0.0.1:9/connector/callback";
const SCOPE: &str = "openid fhirUser offline_access launch/patient patient/*.read";

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn random_b64(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

struct Pkce {
    verifier: String,
    challenge: String,
}

fn pkce() -> Pkce {
    let verifier = random_b64(32);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    Pkce {
        verifier,
        challenge,
    }
}

fn authorize_url(op: &OidcProvider, client_id: &str, state: &str, pkce: &Pkce) -> String {
    let mut url = Url::parse(&op.authorize_url()).unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", CALLBACK)
        .append_pair("scope", SCOPE)
        .append_pair("aud", "http://127.0.0.1:9/fhir/R4/")
        .append_pair("state", state)
        .append_pair("code_challenge", &pkce.challenge)
        .append_pair("code_challenge_method", "S256");
    url.to_string()
}

fn param(url: &Url, key: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// POSTs a token-endpoint form authenticating as `client` would.
async fn token_request(
    http: &reqwest::Client,
    url: &str,
    client: &OidcClient,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let mut fields: Vec<(&str, &str)> = form.to_vec();
    let mut req = http.post(url);
    match client.auth_method {
        ClientAuthMethod::ClientSecretBasic => {
            let secret = client.client_secret.as_deref().unwrap();
            let creds = format!("{}:{}", enc(&client.client_id), enc(secret));
            req = req.header("authorization", format!("Basic {}", STANDARD.encode(creds)));
        }
        ClientAuthMethod::ClientSecretPost => {
            fields.push(("client_id", &client.client_id));
            fields.push(("client_secret", client.client_secret.as_deref().unwrap()));
        }
        ClientAuthMethod::None => fields.push(("client_id", &client.client_id)),
    }
    let resp = req.form(&fields).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn clients() -> Vec<OidcClient> {
    vec![
        // Needs RFC 6749 §2.3.1 form-encoding inside the Basic header.
        OidcClient::basic("basic-client", "s3cr/t:a b+%", CALLBACK),
        OidcClient::post("post-client", "post-secret", CALLBACK),
        OidcClient::public("public-client", CALLBACK),
    ]
}

#[tokio::test]
async fn authorization_code_and_rotating_refresh_for_every_client_auth_method() {
    let clients = clients();
    let op = OidcProvider::start(clients.clone()).expect("start oidc-provider");
    let http = OidcProvider::browser_client();

    for client in &clients {
        let pkce = pkce();
        let state = random_b64(16);
        let authorize = authorize_url(&op, &client.client_id, &state, &pkce);
        let callback = op.complete_login(&http, &authorize).await.unwrap();
        let who = &client.client_id;

        assert!(callback.as_str().starts_with(CALLBACK), "{who}: {callback}");
        assert_eq!(param(&callback, "state").as_deref(), Some(state.as_str()));
        assert_eq!(
            param(&callback, "iss").as_deref(),
            Some(op.issuer()),
            "RFC 9207"
        );
        let code = param(&callback, "code").unwrap_or_else(|| panic!("{who}: {callback}"));

        let exchange = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", CALLBACK),
            ("code_verifier", pkce.verifier.as_str()),
        ];
        let (status, tokens) = token_request(&http, &op.token_url(), client, &exchange).await;
        assert_eq!(status, 200, "{who}: {tokens}");
        assert_eq!(tokens["token_type"], "Bearer");
        assert!(tokens["access_token"].is_string());
        assert!(tokens["id_token"].is_string());
        assert_eq!(tokens["patient"], "pat-0001");
        let granted = tokens["scope"].as_str().unwrap_or_default();
        assert!(granted.contains("patient/*.read"), "{who}: scope {granted}");
        let id_claims: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(
                    tokens["id_token"]
                        .as_str()
                        .unwrap()
                        .split('.')
                        .nth(1)
                        .unwrap(),
                )
                .unwrap(),
        )
        .unwrap();
        assert_eq!(id_claims["fhirUser"], "Practitioner/prac-0001");

        // Rotation: each refresh returns a new refresh token and invalidates the one used.
        let rt0 = tokens["refresh_token"]
            .as_str()
            .unwrap_or_else(|| panic!("{who}: no refresh token: {tokens}"))
            .to_owned();
        let mut current = rt0.clone();
        for round in 0..2 {
            let form = [
                ("grant_type", "refresh_token"),
                ("refresh_token", current.as_str()),
            ];
            let (status, refreshed) = token_request(&http, &op.token_url(), client, &form).await;
            assert_eq!(status, 200, "{who} refresh {round}: {refreshed}");
            let next = refreshed["refresh_token"].as_str().unwrap().to_owned();
            assert_ne!(next, current, "{who}: refresh token not rotated");
            current = next;
        }
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", rt0.as_str()),
        ];
        let (status, reused) = token_request(&http, &op.token_url(), client, &form).await;
        assert_eq!(
            (status, reused["error"].as_str()),
            (400, Some("invalid_grant")),
            "{who}: old refresh token accepted"
        );
        // Reuse revoked the whole grant, the newest refresh token included.
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", current.as_str()),
        ];
        let (status, _) = token_request(&http, &op.token_url(), client, &form).await;
        assert_eq!(status, 400, "{who}: grant not revoked after reuse");

        // Codes are single-use.
        let (status, replay) = token_request(&http, &op.token_url(), client, &exchange).await;
        assert_eq!(
            (status, replay["error"].as_str()),
            (400, Some("invalid_grant"))
        );
    }
}

#[tokio::test]
async fn provider_enforces_pkce_secrets_and_supports_denial_and_client_credentials() {
    let clients = clients();
    let op = OidcProvider::start(clients.clone()).expect("start oidc-provider");
    let http = OidcProvider::browser_client();
    let basic = &clients[0];
    let post = &clients[1];

    // Wrong verifier.
    let p = pkce();
    let callback = op
        .complete_login(&http, &authorize_url(&op, "post-client", "s1", &p))
        .await
        .unwrap();
    let code = param(&callback, "code").unwrap();
    let wrong = pkce();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", CALLBACK),
        ("code_verifier", wrong.verifier.as_str()),
    ];
    let (status, body) = token_request(&http, &op.token_url(), post, &form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // The right verifier works once; replaying the code revokes the grant it created.
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", CALLBACK),
        ("code_verifier", p.verifier.as_str()),
    ];
    let (status, tokens) = token_request(&http, &op.token_url(), post, &form).await;
    assert_eq!(status, 200, "{tokens}");
    let (status, _) = token_request(&http, &op.token_url(), post, &form).await;
    assert_eq!(status, 400);
    let rt = tokens["refresh_token"].as_str().unwrap();
    let refresh = [("grant_type", "refresh_token"), ("refresh_token", rt)];
    let (status, body) = token_request(&http, &op.token_url(), post, &refresh).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // Wrong secret.
    let bad = OidcClient::post("post-client", "nope", CALLBACK);
    let form = [("grant_type", "client_credentials")];
    let (status, body) = token_request(&http, &op.token_url(), &bad, &form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );

    // Client credentials + RFC 7009 revocation.
    let (status, cc) = token_request(&http, &op.token_url(), basic, &form).await;
    assert_eq!(status, 200, "{cc}");
    assert!(cc.get("refresh_token").is_none());
    let at = cc["access_token"].as_str().unwrap();
    let (status, _) = token_request(&http, &op.revocation_url(), basic, &[("token", at)]).await;
    assert_eq!(status, 200);

    // A plain challenge method is refused at the authorization endpoint.
    let p = pkce();
    let plain = authorize_url(&op, "post-client", "s2", &p).replace("S256", "plain");
    let refused = op.complete_login(&http, &plain).await;
    let text = match refused {
        Ok(url) => url.to_string(),
        Err(e) => e.to_string(),
    };
    assert!(text.contains("invalid_request"), "{text}");

    // The user says no.
    let p = pkce();
    let denied = op
        .deny_login(&http, &authorize_url(&op, "public-client", "s3", &p))
        .await
        .unwrap();
    assert!(denied.as_str().starts_with(CALLBACK), "{denied}");
    assert_eq!(param(&denied, "error").as_deref(), Some("access_denied"));
    assert_eq!(param(&denied, "state").as_deref(), Some("s3"));
    assert!(param(&denied, "code").is_none());

    // An unregistered redirect_uri is never redirected to.
    let p = pkce();
    let other = authorize_url(&op, "post-client", "s4", &p).replace(
        &enc(CALLBACK),
        &enc("http://127.0.0.1:9/connector/callback/"),
    );
    assert!(op.complete_login(&http, &other).await.is_err());
}
