//! Running one method: send, check, and (for FHIR searchsets) follow `next` links.
//!
//! Single page (the hot path): the upstream body is validated as JSON without building a
//! tree (`RawValue`) and handed on as the same bytes; the API response is built around it by
//! concatenation ([`MethodOutput::to_response_body`]).

use std::fmt;
use std::marker::PhantomData;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use switchboard_connector::{CompiledMethod, Paging};
use switchboard_metrics::UpstreamOutcome;
use switchboard_outbound::{Outbound, OutboundError, OutboundResponse, RetryPolicy};
use url::Url;

use crate::error::status_error;
use crate::params::ValidParams;
use crate::request::{build_request, paging_headers};
use crate::EngineError;
use crate::WriteBody;

/// One method call: the method is the compiled one `params` were validated against
/// ([`ValidParams::method`]). Deliberately not `Debug` (it holds the bearer token).
#[derive(Clone, Copy)]
pub struct MethodCall<'a> {
    /// The install's FHIR base (ends with `/`; one is assumed when missing).
    pub fhir_base: &'a Url,
    pub params: &'a ValidParams<'a>,
    /// The connector's static headers, rendered ([`crate::static_headers`]).
    pub headers: &'a [(HeaderName, HeaderValue)],
    pub bearer: &'a str,
    /// Most pages to fetch (already capped by configuration); 0 counts as 1.
    pub max_pages: u32,
    /// The connector's `search_params`, rendered: appended to the first request of a search
    /// (`paging = "fhir_bundle"`); next links are followed as the server wrote them.
    pub search_params: &'a [(String, String)],
    /// The resource of a write method ([`crate::validate_body`]), sent as the request body
    /// (with `If-None-Exist` for a conditional create).
    pub body: Option<&'a WriteBody>,
}

/// The upstream's answer: its 2xx status, its JSON body (raw, or the merged Bundle when pages
/// were followed) and how many pages were fetched. `Debug` shows the body's length only.
#[derive(Clone)]
pub struct MethodOutput {
    pub status: u16,
    pub body: Bytes,
    pub pages: u32,
}

impl fmt::Debug for MethodOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MethodOutput")
            .field("status", &self.status)
            .field("body_bytes", &self.body.len())
            .field("pages", &self.pages)
            .finish()
    }
}

impl MethodOutput {
    /// `{"status":<status>,"data":<body>,"pages":<pages>}`, by concatenation.
    pub fn to_response_body(&self) -> Bytes {
        let [head, body, tail] = self.response_parts();
        let mut out = BytesMut::with_capacity(head.len() + body.len() + tail.len());
        out.put_slice(&head);
        out.put_slice(&body);
        out.put_slice(&tail);
        out.freeze()
    }

    /// The response body as three pieces (head, upstream body, tail) for writers that can
    /// send them without copying the upstream body.
    pub fn response_parts(&self) -> [Bytes; 3] {
        [
            Bytes::from(format!("{{\"status\":{},\"data\":", self.status)),
            self.body.clone(),
            Bytes::from(format!(",\"pages\":{}}}", self.pages)),
        ]
    }
}

/// Runs `call`: builds the request, sends it (429/503 retried for idempotent verbs), maps
/// errors, and for `paging = "fhir_bundle"` with `max_pages > 1` follows the Bundle's `next`
/// links (same origin and under the FHIR base only) merging `entry` arrays into the first
/// page.
pub async fn execute(
    outbound: &Outbound,
    call: MethodCall<'_>,
) -> Result<MethodOutput, EngineError> {
    let method = call.params.method();
    let mut req = build_request(call.fhir_base, call.params, call.headers, call.bearer)?;
    if method.paging() == Paging::FhirBundle && !call.search_params.is_empty() {
        let mut pairs = req.url_mut().query_pairs_mut();
        for (k, v) in call.search_params {
            pairs.append_pair(k, v);
        }
    }
    if let Some(body) = call.body {
        attach_body(&mut req, body)?;
    }
    let page_headers = (method.paging() == Paging::FhirBundle && call.max_pages > 1)
        .then(|| paging_headers(req.headers()));
    let retry = if method.verb().idempotent() {
        RetryPolicy::OnThrottle
    } else {
        RetryPolicy::Never
    };
    // A resource write that is not idempotent (a create): its failures after sending are
    // reported as of unknown outcome (operations such as `$match` keep the plain mapping).
    let writes = method.body().is_some() && !method.verb().idempotent();
    let resp = send_timed(outbound, method, req, retry)
        .await
        .map_err(|e| outcome_unknown(writes, e.into()))?;
    let (status, body) = success_body(resp).map_err(|e| outcome_unknown(writes, e))?;
    let out = match page_headers {
        Some(headers) => follow_pages(outbound, &call, status, body, headers).await?,
        None => single_page(status, body)?,
    };
    tracing::debug!(
        method = %method.id(),
        status = out.status,
        pages = out.pages,
        bytes = out.body.len(),
        "method executed"
    );
    Ok(out)
}

/// For a non-idempotent call (POST, PATCH), the errors after which the request may have been
/// applied upstream: a 5xx (other than 501), a timeout, a broken exchange. Never retried.
fn outcome_unknown(writes: bool, e: EngineError) -> EngineError {
    if !writes {
        return e;
    }
    match e {
        EngineError::UpstreamStatus { status, .. } | EngineError::Unavailable { status, .. }
            if status >= 500 && status != 501 =>
        {
            EngineError::WriteOutcomeUnknown { timed_out: false }
        }
        EngineError::Timeout => EngineError::WriteOutcomeUnknown { timed_out: true },
        EngineError::Transport(_) | EngineError::UpstreamNotJson { .. } => {
            EngineError::WriteOutcomeUnknown { timed_out: false }
        }
        other => other,
    }
}

/// Puts a write's resource on the request: the body, `Content-Type: application/fhir+json`,
/// and `If-None-Exist` for a conditional create.
fn attach_body(req: &mut reqwest::Request, body: &WriteBody) -> Result<(), EngineError> {
    if req.body().is_some() {
        return Err(EngineError::Definition(
            "a method with a resource body has body params too".into(),
        ));
    }
    let headers = req.headers_mut();
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json"),
    );
    if let Some(query) = body.if_none_exist() {
        let value = HeaderValue::from_str(query)
            .map_err(|_| EngineError::Definition("If-None-Exist is not a header value".into()))?;
        headers.insert(HeaderName::from_static("if-none-exist"), value);
    }
    *req.body_mut() = Some(body.bytes().clone().into());
    Ok(())
}

/// Sends one upstream request and records its latency and status under the method's
/// connector and id (catalogue ids only: the URL, which may hold a patient id, is no label).
async fn send_timed(
    outbound: &Outbound,
    method: &CompiledMethod,
    req: reqwest::Request,
    retry: RetryPolicy,
) -> Result<OutboundResponse, OutboundError> {
    let started = Instant::now();
    let result = outbound.send(req, retry).await;
    let outcome = match &result {
        Ok(resp) => UpstreamOutcome::Status(resp.status),
        Err(OutboundError::RetriesExhausted { status, .. }) => UpstreamOutcome::Status(*status),
        Err(OutboundError::NotAllowed { .. }) => UpstreamOutcome::Blocked,
        Err(OutboundError::Timeout { .. }) => UpstreamOutcome::Timeout,
        Err(OutboundError::Connect { .. }) => UpstreamOutcome::ConnectError,
        Err(_) => UpstreamOutcome::Error,
    };
    switchboard_metrics::upstream_request(
        method.connector(),
        method.id(),
        outcome,
        started.elapsed(),
    );
    result
}

fn single_page(status: u16, body: Bytes) -> Result<MethodOutput, EngineError> {
    serde_json::from_slice::<&RawValue>(&body)
        .map_err(|_| EngineError::UpstreamNotJson { status })?;
    Ok(MethodOutput {
        status,
        body,
        pages: 1,
    })
}

/// A 2xx answer's status and body (empty bodies become `null`); anything else mapped to an
/// error. A declared non-JSON content type is refused here; the JSON itself is checked by the
/// caller.
fn success_body(resp: OutboundResponse) -> Result<(u16, Bytes), EngineError> {
    let status = resp.status;
    if !(200..300).contains(&status) {
        return Err(status_error(status, &resp.headers, &resp.body));
    }
    if resp.body.iter().all(u8::is_ascii_whitespace) {
        return Ok((status, Bytes::from_static(b"null")));
    }
    if let Some(ct) = resp.content_type() {
        if !is_json_type(ct) {
            return Err(EngineError::UpstreamNotJson { status });
        }
    }
    Ok((status, resp.body))
}

fn is_json_type(content_type: &str) -> bool {
    let mime = content_type.split(';').next().unwrap_or("").trim();
    [
        "application/fhir+json",
        "application/json",
        "application/json+fhir",
    ]
    .iter()
    .any(|t| mime.eq_ignore_ascii_case(t))
}

/// Resolves a Bundle `next` link against the FHIR base and accepts it only when it stays on
/// the base's origin (scheme, host, port) and under the base path (compared ignoring ASCII
/// case, as Epic's IIS servers do; the base path without its final `/` also matches, for
/// HAPI-style `{base}?_getpages=` links).
///
/// `/Patient?..` is relative to the origin (Canvas), `Patient?..` relative to the base,
/// anything with a scheme is absolute. The fragment is dropped.
pub fn resolve_next_link(fhir_base: &Url, link: &str) -> Result<Url, EngineError> {
    let mut base = fhir_base.clone();
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    let link = link.trim();
    let mut url = match Url::parse(link) {
        Ok(abs) => abs,
        Err(url::ParseError::RelativeUrlWithoutBase) => {
            base.join(link).map_err(|_| EngineError::ForeignNextLink)?
        }
        Err(_) => return Err(EngineError::ForeignNextLink),
    };
    url.set_fragment(None);
    let same_origin = url.scheme() == base.scheme()
        && url.host() == base.host()
        && url.port_or_known_default() == base.port_or_known_default();
    if !same_origin || !url.username().is_empty() || url.password().is_some() {
        return Err(EngineError::ForeignNextLink);
    }
    let prefix = base.path().trim_end_matches('/').as_bytes();
    let path = url.path().as_bytes();
    let under = path.len() >= prefix.len()
        && path[..prefix.len()].eq_ignore_ascii_case(prefix)
        && (path.len() == prefix.len() || path[prefix.len()] == b'/');
    if !under {
        return Err(EngineError::ForeignNextLink);
    }
    Ok(url)
}

/// A JSON object's members in document order, values left raw.
struct RawObject<'a>(Vec<(String, &'a RawValue)>);

impl<'a> RawObject<'a> {
    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de> Visitor<'de> for V<'de> {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(8);
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(RawObject(members))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

#[derive(Deserialize)]
struct LinkView {
    relation: Option<String>,
    url: Option<String>,
}

fn next_of(link: &RawValue) -> Option<String> {
    let view: LinkView = serde_json::from_str(link.get()).ok()?;
    (view.relation.as_deref() == Some("next"))
        .then_some(view.url)
        .flatten()
        .filter(|u| !u.trim().is_empty())
}

#[derive(Deserialize)]
struct PageView {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    #[serde(default)]
    entry: Vec<Box<RawValue>>,
    #[serde(default)]
    link: Vec<Box<RawValue>>,
}

/// Follows `next` links from the first page. The merged Bundle is the first page with
/// `entry` holding every fetched page's entries, and `link` holding the first page's links
/// with `next` replaced by the last fetched page's `next` (verbatim, as the upstream sent it):
/// present when more pages exist than `max_pages` allowed, absent when the search is complete.
async fn follow_pages(
    outbound: &Outbound,
    call: &MethodCall<'_>,
    status: u16,
    first: Bytes,
    headers: HeaderMap,
) -> Result<MethodOutput, EngineError> {
    let Ok(top) = serde_json::from_slice::<RawObject>(&first) else {
        return single_page(status, first);
    };
    let is_bundle = top
        .get("resourceType")
        .and_then(|r| serde_json::from_str::<&str>(r.get()).ok())
        == Some("Bundle");
    let first_links: Vec<&RawValue> = match top.get("link") {
        Some(raw) => serde_json::from_str(raw.get()).unwrap_or_default(),
        None => Vec::new(),
    };
    let first_entries: Option<Vec<&RawValue>> = match top.get("entry") {
        Some(raw) => serde_json::from_str(raw.get()).ok(),
        None => Some(Vec::new()),
    };
    let next_at = first_links.iter().position(|l| next_of(l).is_some());
    let (Some(next_at), Some(first_entries), true) = (next_at, first_entries, is_bundle) else {
        // Not a Bundle, nothing more, or a shape we do not merge: the first page as it is.
        return single_page(status, first);
    };

    let mut pending: Option<(String, Box<RawValue>)> =
        next_of(first_links[next_at]).map(|url| (url, first_links[next_at].to_owned()));
    let mut extra: Vec<Box<RawValue>> = Vec::new();
    let mut visited: Vec<Url> = Vec::new();
    let mut pages = 1u32;
    while pages < call.max_pages {
        let Some((link, _)) = &pending else { break };
        let url = resolve_next_link(call.fhir_base, link)?;
        if visited.contains(&url) {
            // A server pointing back at a page already fetched: the search is exhausted.
            pending = None;
            break;
        }
        let mut req = reqwest::Request::new(reqwest::Method::GET, url.clone());
        *req.headers_mut() = headers.clone();
        let resp = send_timed(outbound, call.params.method(), req, RetryPolicy::OnThrottle).await?;
        let (page_status, body) = success_body(resp)?;
        let page: PageView =
            serde_json::from_slice(&body).map_err(|_| EngineError::UpstreamNotJson {
                status: page_status,
            })?;
        if page.resource_type.as_deref() != Some("Bundle") {
            return Err(EngineError::UpstreamInvalidPage { page: pages + 1 });
        }
        pages += 1;
        visited.push(url);
        extra.extend(page.entry);
        pending = page
            .link
            .into_iter()
            .find_map(|l| next_of(&l).map(|u| (u, l)));
    }

    let body = merge(
        &top,
        &first_entries,
        &extra,
        &first_links,
        next_at,
        pending.as_ref().map(|(_, raw)| &**raw),
        first.len(),
    );
    Ok(MethodOutput {
        status,
        body,
        pages,
    })
}

/// Writes the merged Bundle (see [`follow_pages`]).
fn merge(
    top: &RawObject<'_>,
    first_entries: &[&RawValue],
    extra: &[Box<RawValue>],
    first_links: &[&RawValue],
    next_at: usize,
    next: Option<&RawValue>,
    first_len: usize,
) -> Bytes {
    let extra_len: usize = extra.iter().map(|e| e.get().len() + 1).sum();
    let mut out = Vec::with_capacity(first_len + extra_len + 16);
    out.push(b'{');
    let mut wrote_entry = false;
    for (i, (key, value)) in top.0.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, key).expect("writing to a Vec");
        out.push(b':');
        match key.as_str() {
            "entry" if !wrote_entry => {
                wrote_entry = true;
                let mut items = first_entries
                    .iter()
                    .map(|e| e.get())
                    .chain(extra.iter().map(|e| e.get()));
                write_array(&mut out, &mut items);
            }
            "link" => {
                let mut items = first_links.iter().enumerate().filter_map(|(j, l)| {
                    if j == next_at {
                        next.map(RawValue::get)
                    } else {
                        Some(l.get())
                    }
                });
                write_array(&mut out, &mut items);
            }
            _ => out.extend_from_slice(value.get().as_bytes()),
        }
    }
    if !wrote_entry && !extra.is_empty() {
        if !top.0.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(b"\"entry\":");
        let mut items = extra.iter().map(|e| e.get());
        write_array(&mut out, &mut items);
    }
    out.push(b'}');
    Bytes::from(out)
}

fn write_array(out: &mut Vec<u8>, items: &mut dyn Iterator<Item = &str>) {
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item.as_bytes());
    }
    out.push(b']');
}
