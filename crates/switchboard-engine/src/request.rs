//! Turning a method definition plus validated parameters into an HTTP request.
//!
//! The path is built by string concatenation under the FHIR base (never `Url::join`, whose
//! `..`/absolute-path semantics could leave the base) and every parameter value is
//! percent-encoded as exactly one path segment or one query component: everything outside
//! the RFC 3986 unreserved set is encoded, so `/`, `?`, `#`, `%` in a value cannot change
//! the path or the query.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use switchboard_connector::{HttpVerb, MethodDef, ParamLocation};
use url::Url;

use crate::params::{ValidParams, ValidValue};
use crate::EngineError;

/// Everything but RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Parameter names come from the connector file; keep `:` readable for FHIR modifiers
/// (`name:exact`).
const NAME: &AsciiSet = &COMPONENT.remove(b':');

pub(crate) const FHIR_JSON: &str = "application/fhir+json";

/// Headers a connector or a parameter may never set: the engine owns them.
const RESERVED_HEADERS: [HeaderName; 6] = [
    header::AUTHORIZATION,
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::COOKIE,
];

/// Builds the upstream request for `method`: path and query under `fhir_base`, static
/// connector headers, header parameters, a JSON body of the body parameters (POST/PUT/PATCH),
/// `Accept: application/fhir+json` (unless the connector sets its own Accept) and
/// `Authorization: Bearer <bearer>` (marked sensitive).
pub fn build_request(
    fhir_base: &Url,
    method: &MethodDef,
    params: &ValidParams,
    static_headers: &[(HeaderName, HeaderValue)],
    bearer: &str,
) -> Result<reqwest::Request, EngineError> {
    let url = build_url(fhir_base, method, params)?;
    let verb = match method.verb {
        HttpVerb::Get => reqwest::Method::GET,
        HttpVerb::Post => reqwest::Method::POST,
        HttpVerb::Put => reqwest::Method::PUT,
        HttpVerb::Patch => reqwest::Method::PATCH,
        HttpVerb::Delete => reqwest::Method::DELETE,
    };
    let mut req = reqwest::Request::new(verb, url);
    let headers = req.headers_mut();
    for (name, value) in static_headers {
        if RESERVED_HEADERS.contains(name) {
            return Err(EngineError::Definition(format!(
                "header {name} is set by the engine"
            )));
        }
        headers.append(name.clone(), value.clone());
    }

    let mut body: Option<serde_json::Map<String, serde_json::Value>> = None;
    for p in &params.items {
        match (p.location, &p.value) {
            (ParamLocation::Header, ValidValue::Text(values)) => {
                let name = HeaderName::from_bytes(p.wire.as_bytes()).map_err(|_| {
                    EngineError::Definition(format!(
                        "parameter {} has an invalid header name",
                        p.name
                    ))
                })?;
                if RESERVED_HEADERS.contains(&name) {
                    return Err(EngineError::Definition(format!(
                        "parameter {} sets header {name}, which the engine owns",
                        p.name
                    )));
                }
                for v in values {
                    let value = HeaderValue::from_str(v).map_err(|_| {
                        EngineError::Definition(format!(
                            "parameter {} is not a valid header value",
                            p.name
                        ))
                    })?;
                    headers.append(name.clone(), value);
                }
            }
            (ParamLocation::Body, value) => {
                let json = match value {
                    ValidValue::Json(v) => v.clone(),
                    ValidValue::Text(t) => serde_json::Value::from(t.clone()),
                };
                body.get_or_insert_with(Default::default)
                    .insert(p.wire.clone(), json);
            }
            _ => {}
        }
    }

    if !headers.contains_key(header::ACCEPT) {
        headers.insert(header::ACCEPT, HeaderValue::from_static(FHIR_JSON));
    }
    let mut auth = HeaderValue::try_from(format!("Bearer {bearer}"))
        .map_err(|_| EngineError::InvalidBearer)?;
    auth.set_sensitive(true);
    headers.insert(header::AUTHORIZATION, auth);

    if let Some(body) = body {
        if !matches!(
            method.verb,
            HttpVerb::Post | HttpVerb::Put | HttpVerb::Patch
        ) {
            return Err(EngineError::Definition(format!(
                "method {} has body parameters but verb {}",
                method.id,
                method.verb.as_str()
            )));
        }
        let bytes = serde_json::to_vec(&body)
            .map_err(|_| EngineError::Definition("body is not serialisable".into()))?;
        req.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        *req.body_mut() = Some(bytes.into());
    }
    Ok(req)
}

fn build_url(
    fhir_base: &Url,
    method: &MethodDef,
    params: &ValidParams,
) -> Result<Url, EngineError> {
    if fhir_base.query().is_some() || fhir_base.fragment().is_some() || fhir_base.cannot_be_a_base()
    {
        return Err(EngineError::Definition(
            "the FHIR base URL must not have a query or fragment".into(),
        ));
    }
    let base = fhir_base.as_str();
    let mut s = String::with_capacity(base.len() + method.path.len() + 64);
    s.push_str(base);
    if !s.ends_with('/') {
        s.push('/');
    }
    let base_len = s.len();
    push_path(&mut s, method, params)?;

    let mut first = true;
    for p in &params.items {
        if p.location != ParamLocation::Query {
            continue;
        }
        let ValidValue::Text(values) = &p.value else {
            continue;
        };
        for v in values {
            s.push(if first { '?' } else { '&' });
            first = false;
            s.extend(percent_encoding::utf8_percent_encode(&p.wire, NAME));
            s.push('=');
            s.extend(percent_encoding::utf8_percent_encode(v, COMPONENT));
        }
    }

    let url = Url::parse(&s).map_err(|_| {
        EngineError::Definition(format!("method {} renders an invalid URL", method.id))
    })?;
    // Belt and braces: the rendered path must still sit under the base path.
    if !url.as_str().starts_with(&s[..base_len]) {
        return Err(EngineError::Definition(format!(
            "method {} renders a URL outside the FHIR base",
            method.id
        )));
    }
    Ok(url)
}

/// Appends the method path with each `{param}` replaced by its encoded value.
fn push_path(s: &mut String, method: &MethodDef, params: &ValidParams) -> Result<(), EngineError> {
    let template = method.path.trim_start_matches('/');
    let bad = |why: &str| EngineError::Definition(format!("method {} path {why}", method.id));
    if template.contains(['?', '#', '\\']) {
        return Err(bad("must not contain ?, # or \\"));
    }
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let literal = &rest[..open];
        if literal.contains('}') {
            return Err(bad("has an unbalanced }"));
        }
        s.push_str(literal);
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| bad("has an unclosed {"))?;
        let name = &after[..close];
        let value = match params.find(name, ParamLocation::Path).map(|p| &p.value) {
            Some(ValidValue::Text(values)) if values.len() == 1 => &values[0],
            _ => {
                return Err(bad(&format!(
                    "placeholder {{{name}}} has no single path value"
                )))
            }
        };
        if value.is_empty() || value == "." || value == ".." {
            return Err(bad(&format!(
                "placeholder {{{name}}} has an unusable value"
            )));
        }
        s.extend(percent_encoding::utf8_percent_encode(value, COMPONENT));
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(bad("has an unbalanced }"));
    }
    s.push_str(rest);
    if template.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(bad("must not contain . or .. segments"));
    }
    Ok(())
}

/// Headers reused for next-page requests: everything the first request carried except the
/// body's.
pub(crate) fn paging_headers(first: &HeaderMap) -> HeaderMap {
    let mut h = first.clone();
    h.remove(header::CONTENT_TYPE);
    h.remove(header::CONTENT_LENGTH);
    h
}
