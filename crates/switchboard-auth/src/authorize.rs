//! The front channel: building the authorization URL and checking the RFC 9207 `iss` of the
//! authorization response.

use crate::pkce::CODE_CHALLENGE_METHOD;
use crate::AuthError;
use std::collections::BTreeMap;
use url::Url;

/// Parameters Switchboard owns in an authorization request; neither the endpoint's own query
/// nor the connector's extra parameters may set them.
const RESERVED: [&str; 7] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
];

/// Inputs of an authorization request (RFC 6749 §4.1.1 + RFC 7636 + SMART).
#[derive(Debug, Clone, Copy)]
pub struct AuthorizeRequest<'a> {
    pub authorize_url: &'a str,
    pub client_id: &'a str,
    /// Sent exactly as given; the token exchange must send the identical string.
    pub redirect_uri: &'a str,
    /// Space-separated; whitespace is normalised to single spaces; omitted when empty.
    pub scopes: &'a str,
    pub state: &'a str,
    pub code_challenge: &'a str,
    /// Connector-specific parameters, e.g. SMART `aud`.
    pub extra: &'a BTreeMap<String, String>,
}

/// Builds the URL the user's browser is sent to.
///
/// Adds `response_type=code`, `client_id`, `redirect_uri`, `scope` (when non-empty), `state`,
/// `code_challenge`, `code_challenge_method=S256`, then `extra` in key order, keeping any query
/// the endpoint already has (RFC 6749 §3.1). Parameters may not appear twice (RFC 6749 §3.1):
/// a protocol parameter in the endpoint's query is an error, and so is an extra parameter that
/// would change one; an extra parameter that repeats a protocol parameter's exact value is
/// dropped.
pub fn authorize_url(req: &AuthorizeRequest<'_>) -> Result<Url, AuthError> {
    let mut url = parse_endpoint(req.authorize_url, "authorize_url")?;
    parse_endpoint(req.redirect_uri, "redirect_uri")?;
    for (name, value) in [
        ("client_id", req.client_id),
        ("state", req.state),
        ("code_challenge", req.code_challenge),
    ] {
        if value.is_empty() {
            return Err(AuthError::Misconfigured(format!("{name} is empty")));
        }
    }
    if let Some((name, _)) = url
        .query_pairs()
        .find(|(name, _)| RESERVED.contains(&name.as_ref()))
    {
        return Err(AuthError::Misconfigured(format!(
            "authorize_url already has a `{name}` parameter"
        )));
    }

    let scopes = normalize_scopes(req.scopes);
    let mut params: Vec<(&str, &str)> = vec![
        ("response_type", "code"),
        ("client_id", req.client_id),
        ("redirect_uri", req.redirect_uri),
    ];
    if !scopes.is_empty() {
        params.push(("scope", &scopes));
    }
    params.extend([
        ("state", req.state),
        ("code_challenge", req.code_challenge),
        ("code_challenge_method", CODE_CHALLENGE_METHOD),
    ]);
    let protocol_len = params.len();
    for (name, value) in req.extra {
        if RESERVED.contains(&name.as_str()) {
            if params[..protocol_len].contains(&(name.as_str(), value.as_str())) {
                continue;
            }
            return Err(AuthError::Misconfigured(format!(
                "extra authorize parameter `{name}` would override a protocol parameter"
            )));
        }
        params.push((name, value));
    }
    url.query_pairs_mut().extend_pairs(params);
    Ok(url)
}

/// RFC 9207 authorization-response issuer check (mix-up defence).
///
/// `received` is the callback's `iss` after the web framework's URL decoding; `expected` is the
/// issuer recorded with the `state`. When `iss` is present it must equal the expected issuer by
/// simple string comparison (no normalisation: a trailing `/` matters). An `iss` where no issuer
/// is expected is also rejected: this install's AS did not announce one, so the response may come
/// from another AS. A missing `iss` passes: none of our vendors sends it yet; a caller that knows
/// the AS advertises `authorization_response_iss_parameter_supported` must reject a missing `iss`
/// itself (RFC 9207 §2.4).
pub fn check_issuer(expected: Option<&str>, received: Option<&str>) -> Result<(), AuthError> {
    match (expected, received) {
        (_, None) => Ok(()),
        (Some(expected), Some(received)) if expected == received => Ok(()),
        (Some(_), Some(_)) => Err(AuthError::IssuerMismatch(
            "`iss` does not match the expected issuer",
        )),
        (None, Some(_)) => Err(AuthError::IssuerMismatch(
            "`iss` present but no issuer is expected for this authorization server",
        )),
    }
}

/// [`check_issuer`], and when `iss_required` (the server advertises
/// `authorization_response_iss_parameter_supported`, RFC 9207 §2.4) a missing `iss` is refused
/// too.
pub fn check_issuer_required(
    expected: Option<&str>,
    received: Option<&str>,
    iss_required: bool,
) -> Result<(), AuthError> {
    if iss_required && received.is_none() {
        return Err(AuthError::IssuerMismatch(
            "`iss` missing although the authorization server advertises it",
        ));
    }
    check_issuer(expected, received)
}

/// Collapses any run of whitespace (template newlines, double spaces) into one space (RFC 6749
/// §3.3: scope tokens are separated by single spaces).
pub(crate) fn normalize_scopes(scopes: &str) -> String {
    scopes.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An absolute http(s) URL without a fragment (RFC 6749 §3.1, §3.1.2).
pub(crate) fn parse_endpoint(raw: &str, what: &str) -> Result<Url, AuthError> {
    let url = Url::parse(raw)
        .map_err(|_| AuthError::InvalidUrl(format!("{what} is not an absolute URL")))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(AuthError::InvalidUrl(format!("{what} must be http(s)")));
    }
    if url.fragment().is_some() {
        return Err(AuthError::InvalidUrl(format!(
            "{what} must not have a fragment"
        )));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(
        authorize_url: &'a str,
        extra: &'a BTreeMap<String, String>,
    ) -> AuthorizeRequest<'a> {
        AuthorizeRequest {
            authorize_url,
            client_id: "client/1",
            redirect_uri: "https://sb.example/connector/callback",
            scopes: "openid  fhirUser\n patient/Patient.read",
            state: "st4te",
            code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            extra,
        }
    }

    fn pairs(url: &Url) -> Vec<(String, String)> {
        url.query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    fn p(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }

    #[test]
    fn all_protocol_parameters_then_extras() {
        let extra = BTreeMap::from([(
            "aud".to_owned(),
            "https://fhir.example/api/FHIR/R4/".to_owned(),
        )]);
        let url = authorize_url(&req("https://as.example/oauth2/authorize", &extra)).unwrap();
        assert_eq!(url.path(), "/oauth2/authorize");
        assert_eq!(
            pairs(&url),
            vec![
                p("response_type", "code"),
                p("client_id", "client/1"),
                p("redirect_uri", "https://sb.example/connector/callback"),
                p("scope", "openid fhirUser patient/Patient.read"),
                p("state", "st4te"),
                p(
                    "code_challenge",
                    "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
                ),
                p("code_challenge_method", "S256"),
                p("aud", "https://fhir.example/api/FHIR/R4/"),
            ]
        );
        // form-urlencoded on the wire (RFC 6749 Appendix B).
        assert!(url
            .as_str()
            .contains("redirect_uri=https%3A%2F%2Fsb.example%2Fconnector%2Fcallback"));
        assert!(url.as_str().contains("client_id=client%2F1"));
    }

    #[test]
    fn redirect_uri_is_sent_exactly() {
        let extra = BTreeMap::new();
        let mut r = req("https://as.example/authorize", &extra);
        // Url::parse would add a trailing slash to this; the wire value must not change.
        r.redirect_uri = "https://SB.example";
        let url = authorize_url(&r).unwrap();
        assert!(pairs(&url).contains(&p("redirect_uri", "https://SB.example")));
    }

    #[test]
    fn keeps_the_endpoint_query() {
        let extra = BTreeMap::new();
        let url = authorize_url(&req(
            "https://as.example/authorize?tenant=a%20b&x=1",
            &extra,
        ))
        .unwrap();
        assert!(url
            .as_str()
            .starts_with("https://as.example/authorize?tenant=a%20b&x=1&response_type=code&"));
    }

    #[test]
    fn empty_scope_is_omitted() {
        let extra = BTreeMap::new();
        let mut r = req("https://as.example/authorize", &extra);
        r.scopes = "  ";
        let url = authorize_url(&r).unwrap();
        assert!(!pairs(&url).iter().any(|(k, _)| k == "scope"));
    }

    #[test]
    fn extras_cannot_override_protocol_parameters() {
        for name in RESERVED {
            let extra = BTreeMap::from([(name.to_owned(), "evil".to_owned())]);
            let err = authorize_url(&req("https://as.example/authorize", &extra)).unwrap_err();
            assert!(
                matches!(err, AuthError::Misconfigured(_)),
                "{name}: {err:?}"
            );
        }
        // Repeating the exact value is harmless and not sent twice.
        let extra = BTreeMap::from([(
            "redirect_uri".to_owned(),
            "https://sb.example/connector/callback".to_owned(),
        )]);
        let url = authorize_url(&req("https://as.example/authorize", &extra)).unwrap();
        assert_eq!(
            pairs(&url)
                .iter()
                .filter(|(k, _)| k == "redirect_uri")
                .count(),
            1
        );
    }

    #[test]
    fn endpoint_query_cannot_carry_protocol_parameters() {
        let extra = BTreeMap::new();
        let err = authorize_url(&req(
            "https://as.example/authorize?response_type=token",
            &extra,
        ))
        .unwrap_err();
        assert!(matches!(err, AuthError::Misconfigured(_)));
    }

    #[test]
    fn bad_urls_are_rejected() {
        let extra = BTreeMap::new();
        for bad in [
            "/oauth2/authorize",
            "ftp://as.example/a",
            "https://as.example/a#frag",
            "not a url",
        ] {
            let err = authorize_url(&req(bad, &extra)).unwrap_err();
            assert!(matches!(err, AuthError::InvalidUrl(_)), "{bad}");
        }
        let mut r = req("https://as.example/authorize", &extra);
        r.redirect_uri = "https://sb.example/cb#x";
        assert!(matches!(authorize_url(&r), Err(AuthError::InvalidUrl(_))));
        r.redirect_uri = "/connector/callback";
        assert!(matches!(authorize_url(&r), Err(AuthError::InvalidUrl(_))));
        let mut r = req("https://as.example/authorize", &extra);
        r.state = "";
        assert!(matches!(
            authorize_url(&r),
            Err(AuthError::Misconfigured(_))
        ));
    }

    #[test]
    fn issuer_required_when_advertised() {
        let iss = "https://as.example";
        assert!(check_issuer_required(Some(iss), None, false).is_ok());
        assert!(check_issuer_required(Some(iss), None, true).is_err());
        assert!(check_issuer_required(Some(iss), Some(iss), true).is_ok());
        assert!(check_issuer_required(Some(iss), Some("https://other"), false).is_err());
    }

    #[test]
    fn issuer_check_rfc9207() {
        let iss = "https://fhir.epic.com/interconnect-fhir-oauth/oauth2";
        assert!(check_issuer(Some(iss), Some(iss)).is_ok());
        assert!(check_issuer(Some(iss), None).is_ok());
        assert!(check_issuer(None, None).is_ok());
        // Simple string comparison: no trailing-slash or case normalisation.
        assert!(check_issuer(Some(iss), Some(&format!("{iss}/"))).is_err());
        assert!(check_issuer(Some(iss), Some(&iss.to_uppercase())).is_err());
        assert!(check_issuer(Some(iss), Some("https://evil.example")).is_err());
        // Mix-up: an issuer shows up where none is expected.
        assert!(matches!(
            check_issuer(None, Some(iss)),
            Err(AuthError::IssuerMismatch(_))
        ));
    }
}
