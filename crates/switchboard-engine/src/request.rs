//! Turning validated parameters (and the compiled method they were validated against) into an
//! HTTP request.
//!
//! The path is the compiled method's [`PathTemplate`](switchboard_connector::PathTemplate)
//! rendered with the path values, appended to the FHIR base by string concatenation (never
//! `Url::join`, whose `..`/absolute-path semantics could leave the base). Every parameter value
//! is percent-encoded as exactly one path segment or one query component: everything outside
//! the RFC 3986 unreserved set is encoded, so `/`, `?`, `#`, `%` in a value cannot change the
//! path or the query.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use switchboard_connector::{
    is_reserved_header, Connector, HttpVerb, ParamLocation, TemplateContext,
};
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

/// The connector's static headers for one install, as wire headers: rendered by
/// [`Connector::render_headers`] (the one rendering of connector headers), then checked as HTTP
/// names and values. Done once per prepared install, not per call. Errors name headers, never
/// values.
pub fn static_headers(
    connector: &Connector,
    ctx: &TemplateContext,
) -> Result<Vec<(HeaderName, HeaderValue)>, EngineError> {
    let rendered = connector
        .render_headers(ctx)
        .map_err(|e| EngineError::Definition(format!("static headers: {e}")))?;
    rendered
        .into_iter()
        .map(|(declared, value)| {
            let name = HeaderName::from_bytes(declared.as_bytes()).map_err(|_| {
                EngineError::Definition(format!("header {declared} has an invalid name"))
            })?;
            if is_reserved_header(name.as_str()) {
                return Err(EngineError::Definition(format!(
                    "header {declared} is set by the engine"
                )));
            }
            let value = HeaderValue::from_str(&value).map_err(|_| {
                EngineError::Definition(format!("header {declared} renders an invalid value"))
            })?;
            Ok((name, value))
        })
        .collect()
}

/// Builds the upstream request for the method `params` were validated against: path and query
/// under `fhir_base`, static connector headers, header parameters, a JSON body of the body
/// parameters (POST/PUT/PATCH), `Accept: application/fhir+json` (unless the connector sets its
/// own Accept) and `Authorization: Bearer <bearer>` (marked sensitive).
pub fn build_request(
    fhir_base: &Url,
    params: &ValidParams<'_>,
    static_headers: &[(HeaderName, HeaderValue)],
    bearer: &str,
) -> Result<reqwest::Request, EngineError> {
    let method = params.method();
    let url = build_url(fhir_base, params)?;
    let verb = match method.verb() {
        HttpVerb::Get => reqwest::Method::GET,
        HttpVerb::Post => reqwest::Method::POST,
        HttpVerb::Put => reqwest::Method::PUT,
        HttpVerb::Patch => reqwest::Method::PATCH,
        HttpVerb::Delete => reqwest::Method::DELETE,
    };
    let mut req = reqwest::Request::new(verb, url);
    let headers = req.headers_mut();
    for (name, value) in static_headers {
        if is_reserved_header(name.as_str()) {
            return Err(EngineError::Definition(format!(
                "header {name} is set by the engine"
            )));
        }
        headers.append(name.clone(), value.clone());
    }

    let mut body: Option<serde_json::Map<String, serde_json::Value>> = None;
    for p in &params.items {
        let param = p.param;
        match (param.location(), &p.value) {
            (ParamLocation::Header, ValidValue::Text(values)) => {
                let name = HeaderName::from_bytes(param.wire_name().as_bytes()).map_err(|_| {
                    EngineError::Definition(format!(
                        "parameter {} has an invalid header name",
                        param.name()
                    ))
                })?;
                if is_reserved_header(name.as_str()) {
                    return Err(EngineError::Definition(format!(
                        "parameter {} sets header {name}, which the engine owns",
                        param.name()
                    )));
                }
                for v in values {
                    let value = HeaderValue::from_str(v).map_err(|_| {
                        EngineError::Definition(format!(
                            "parameter {} is not a valid header value",
                            param.name()
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
                    .insert(param.wire_name().to_owned(), json);
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
            method.verb(),
            HttpVerb::Post | HttpVerb::Put | HttpVerb::Patch
        ) {
            return Err(EngineError::Definition(format!(
                "method {} has body parameters but verb {}",
                method.id(),
                method.verb().as_str()
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

fn build_url(fhir_base: &Url, params: &ValidParams<'_>) -> Result<Url, EngineError> {
    let method = params.method();
    if fhir_base.query().is_some() || fhir_base.fragment().is_some() || fhir_base.cannot_be_a_base()
    {
        return Err(EngineError::Definition(
            "the FHIR base URL must not have a query or fragment".into(),
        ));
    }
    let base = fhir_base.as_str();
    let path = method
        .render_path(|name| params.path_value(name))
        .map_err(|e| EngineError::Definition(format!("method {} path: {e}", method.id())))?;
    let mut s = String::with_capacity(base.len() + path.len() + 64);
    s.push_str(base);
    if !s.ends_with('/') {
        s.push('/');
    }
    let base_len = s.len();
    s.push_str(&path);

    let mut first = true;
    for p in &params.items {
        if p.param.location() != ParamLocation::Query {
            continue;
        }
        let ValidValue::Text(values) = &p.value else {
            continue;
        };
        for v in values {
            s.push(if first { '?' } else { '&' });
            first = false;
            s.extend(percent_encoding::utf8_percent_encode(
                p.param.wire_name(),
                NAME,
            ));
            s.push('=');
            s.extend(percent_encoding::utf8_percent_encode(v, COMPONENT));
        }
    }

    let url = Url::parse(&s).map_err(|_| {
        EngineError::Definition(format!("method {} renders an invalid URL", method.id()))
    })?;
    // Belt and braces: the rendered path must still sit under the base path.
    if !url.as_str().starts_with(&s[..base_len]) {
        return Err(EngineError::Definition(format!(
            "method {} renders a URL outside the FHIR base",
            method.id()
        )));
    }
    Ok(url)
}

/// Headers reused for next-page requests: everything the first request carried except the
/// body's.
pub(crate) fn paging_headers(first: &HeaderMap) -> HeaderMap {
    let mut h = first.clone();
    h.remove(header::CONTENT_TYPE);
    h.remove(header::CONTENT_LENGTH);
    h
}
