//! The one outbound HTTP client: IP policy (SSRF defence) enforced on every connection,
//! connect and total timeouts, retries of 429/503 with `Retry-After`, and a hard response size
//! cap. Every call Switchboard makes to an EHR or OAuth server goes through [`Outbound`]
//! (small documents such as discovery through [`get_document`] on its client), which keeps one
//! reqwest client (one connection pool) per thread that sends, all with the same settings.
//!
//! Errors never carry a response body or a query string (both may hold patient identifiers):
//! URLs are reduced to scheme, host, port and path ([`SafeUrl`]).

mod document;
mod policy;
mod retry;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::HeaderMap;
use url::Url;

pub use document::{get_document, DocumentError};
pub use policy::{is_forbidden_ip, PolicyViolation};
pub use retry::{parse_retry_after, RetryPolicy};

/// Settings of the client (from `[outbound]` / `[security]` configuration).
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    pub connect_timeout: Duration,
    /// Whole exchange: connect, send, and read the complete body. Applies per attempt.
    pub request_timeout: Duration,
    /// Largest response body accepted; a bigger one is [`OutboundError::TooLarge`], never
    /// truncated.
    pub max_response_bytes: usize,
    /// `security.allow_insecure_upstreams`: allow `http://` and loopback/private/reserved
    /// addresses. Development and tests only.
    pub allow_insecure: bool,
    /// Retries of a 429/503 answer when the [`RetryPolicy`] allows them (so up to
    /// `max_retries + 1` attempts).
    pub max_retries: u32,
    /// Longest single wait between attempts. A `Retry-After` asking for more than this is not
    /// waited for: the call ends at once with [`OutboundError::RetriesExhausted`] carrying the
    /// upstream's `retry_after`, so the caller can pass it on instead of hammering early.
    pub max_retry_wait: Duration,
    pub user_agent: String,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_response_bytes: 10 * 1024 * 1024,
            allow_insecure: false,
            max_retries: 3,
            max_retry_wait: Duration::from_secs(10),
            user_agent: concat!("switchboard/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

impl OutboundConfig {
    /// Defaults with the address policy switched off (`http://`, loopback, private ranges
    /// allowed). For tests and local development against 127.0.0.1 upstreams only.
    pub fn danger_allow_insecure() -> Self {
        Self {
            allow_insecure: true,
            ..Self::default()
        }
    }
}

/// A URL reduced to what may appear in errors and logs: scheme, host, port and path. No
/// userinfo, query or fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafeUrl(String);

impl SafeUrl {
    pub fn new(url: &Url) -> Self {
        let mut s = String::with_capacity(url.as_str().len());
        s.push_str(url.scheme());
        s.push_str("://");
        if let Some(host) = url.host_str() {
            s.push_str(host);
        }
        if let Some(port) = url.port() {
            s.push(':');
            s.push_str(&port.to_string());
        }
        s.push_str(url.path());
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SafeUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("{url}: {}", reason.as_str())]
    NotAllowed {
        url: SafeUrl,
        reason: PolicyViolation,
    },
    #[error("{url}: timed out")]
    Timeout { url: SafeUrl },
    #[error("{url}: connection failed")]
    Connect {
        url: SafeUrl,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: response body exceeds {limit} bytes")]
    TooLarge { url: SafeUrl, limit: usize },
    #[error("upstream answered {status} after all retries")]
    RetriesExhausted {
        status: u16,
        /// The upstream's last `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    #[error("{url}: request failed")]
    Request {
        url: SafeUrl,
        /// reqwest's error with its URL removed.
        #[source]
        source: reqwest::Error,
    },
    #[error("building the HTTP client failed")]
    Build(#[source] reqwest::Error),
}

/// A complete upstream response (body fully read and within the size cap).
#[derive(Debug, Clone)]
pub struct OutboundResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl OutboundResponse {
    /// The `Content-Type` header, if present and valid UTF-8.
    pub fn content_type(&self) -> Option<&str> {
        self.headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
    }
}

/// The outbound client. Cheap to clone (one `Arc`); build it once per process.
#[derive(Clone)]
pub struct Outbound {
    inner: Arc<Inner>,
}

struct Inner {
    /// One client, so one connection pool, per thread that sends. A pooled HTTP/1 connection
    /// is driven by a task on the runtime (the actix worker) that opened it; a request from
    /// another worker that took it from a shared pool had to hand its exchange to that thread
    /// and wait for it to be woken (two cross-thread wake-ups per call). Per thread, a call's
    /// exchange stays on its own worker.
    clients: thread_local::ThreadLocal<reqwest::Client>,
    cfg: OutboundConfig,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("cfg", &self.inner.cfg)
            .finish()
    }
}

impl Outbound {
    pub fn new(cfg: OutboundConfig) -> Result<Self, OutboundError> {
        // Built once here so a bad configuration fails at start; it serves this thread.
        let client = build_client(&cfg)?;
        let clients = thread_local::ThreadLocal::new();
        clients.get_or(|| client);
        Ok(Self {
            inner: Arc::new(Inner { clients, cfg }),
        })
    }

    /// This thread's client (built on its first request, with the same settings).
    fn client(&self) -> Result<&reqwest::Client, OutboundError> {
        self.inner
            .clients
            .get_or_try(|| build_client(&self.inner.cfg))
    }
}

fn build_client(cfg: &OutboundConfig) -> Result<reqwest::Client, OutboundError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(cfg.connect_timeout)
        .timeout(cfg.request_timeout)
        .user_agent(cfg.user_agent.clone())
        .tcp_nodelay(true)
        .tcp_keepalive(Duration::from_secs(60))
        .pool_idle_timeout(Duration::from_secs(90))
        .https_only(!cfg.allow_insecure);
    if !cfg.allow_insecure {
        builder = builder.dns_resolver(Arc::new(policy::PolicyResolver));
    }
    builder.build().map_err(OutboundError::Build)
}

impl Outbound {
    /// This thread's client for a request to `url`, for callers that need reqwest directly (the
    /// OAuth layer: code exchange, refresh, client credentials, revocation). The only way to
    /// get it: `url` is checked first (scheme, credentials, IP literals in every notation,
    /// `localhost`), and the client's resolver checks what names resolve to on every
    /// connection, so IP literals and names get the same policy. Send only to `url`.
    pub fn client_for(&self, url: &Url) -> Result<&reqwest::Client, OutboundError> {
        self.check_url(url)?;
        self.client()
    }

    pub fn config(&self) -> &OutboundConfig {
        &self.inner.cfg
    }

    /// Checks scheme, embedded credentials and IP-literal/`localhost` hosts against the policy.
    /// Names are additionally checked at connect time by the client's resolver.
    pub fn check_url(&self, url: &Url) -> Result<(), OutboundError> {
        policy::check(url, self.inner.cfg.allow_insecure).map_err(|reason| {
            OutboundError::NotAllowed {
                url: SafeUrl::new(url),
                reason,
            }
        })
    }

    /// Sends `req`, reading the whole body under the size cap. A 429 or 503 answer is retried
    /// when `retry` allows it (exponential backoff with full jitter, or the upstream's
    /// `Retry-After`); when retries are exhausted the result is
    /// [`OutboundError::RetriesExhausted`]. With [`RetryPolicy::Never`] a 429/503 is returned
    /// as a normal response. Any other status is returned as is.
    pub async fn send(
        &self,
        req: reqwest::Request,
        retry: RetryPolicy,
    ) -> Result<OutboundResponse, OutboundError> {
        self.check_url(req.url())?;
        let cfg = &self.inner.cfg;
        let max_retries = match retry {
            RetryPolicy::Never => 0,
            RetryPolicy::OnThrottle => cfg.max_retries,
        };
        let url = SafeUrl::new(req.url());
        let mut pending = Some(req);
        let mut attempt = 0u32;
        loop {
            let req = pending.take().expect("a request for every attempt");
            // Keep a copy for the next attempt (bodies here are bytes, so this always works).
            let spare = if attempt < max_retries {
                req.try_clone()
            } else {
                None
            };
            let resp = self
                .client()?
                .execute(req)
                .await
                .map_err(|e| classify(e, &url))?;
            let status = resp.status().as_u16();
            if status == 429 || status == 503 {
                if let Some(next) = spare {
                    let asked = parse_retry_after(resp.headers());
                    drop(resp);
                    match retry::wait_before_retry(attempt, asked, cfg.max_retry_wait) {
                        Some(wait) => {
                            tracing::debug!(%url, status, attempt, ?wait, "upstream throttled; retrying");
                            switchboard_metrics::upstream_retry(status);
                            tokio::time::sleep(wait).await;
                            attempt += 1;
                            pending = Some(next);
                            continue;
                        }
                        None => {
                            return Err(OutboundError::RetriesExhausted {
                                status,
                                retry_after: asked,
                            })
                        }
                    }
                }
                if max_retries > 0 {
                    return Err(OutboundError::RetriesExhausted {
                        status,
                        retry_after: parse_retry_after(resp.headers()),
                    });
                }
            }
            let headers = resp.headers().clone();
            let body = read_capped(resp, cfg.max_response_bytes, &url).await?;
            return Ok(OutboundResponse {
                status,
                headers,
                body,
            });
        }
    }
}

impl Outbound {
    /// Sends `req` once (no retries) and returns the response with its body unread, for a
    /// caller that streams it on (Bulk Data output files): the URL is checked like
    /// [`Outbound::send`]'s and the resolver checks every connection, but no response-size cap
    /// applies. `deadline` replaces the client's request timeout for this exchange (connect,
    /// headers and the whole body), so a large file is bounded by time, not by size.
    pub async fn open_stream(
        &self,
        mut req: reqwest::Request,
        deadline: Duration,
    ) -> Result<reqwest::Response, OutboundError> {
        self.check_url(req.url())?;
        let url = SafeUrl::new(req.url());
        *req.timeout_mut() = Some(deadline);
        self.client()?
            .execute(req)
            .await
            .map_err(|e| classify(e, &url))
    }
}

/// Reads the body, refusing (never truncating) anything above `limit`: first by the declared
/// `Content-Length`, then by counting what actually arrives.
async fn read_capped(
    mut resp: reqwest::Response,
    limit: usize,
    url: &SafeUrl,
) -> Result<Bytes, OutboundError> {
    let too_large = || OutboundError::TooLarge {
        url: url.clone(),
        limit,
    };
    let declared = resp.content_length();
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    // Common case: the whole body arrives as one chunk, handed on without a copy.
    let first = match resp.chunk().await.map_err(|e| classify(e, url))? {
        None => return Ok(Bytes::new()),
        Some(c) => c,
    };
    if first.len() > limit {
        return Err(too_large());
    }
    let Some(second) = resp.chunk().await.map_err(|e| classify(e, url))? else {
        return Ok(first);
    };
    let capacity = declared.map_or(first.len() + second.len(), |n| n as usize);
    let mut buf = BytesMut::with_capacity(capacity.min(limit));
    buf.extend_from_slice(&first);
    let mut next = Some(second);
    while let Some(chunk) = next {
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
        next = resp.chunk().await.map_err(|e| classify(e, url))?;
    }
    Ok(buf.freeze())
}

/// Maps a reqwest error to an [`OutboundError`] without its URL (also for errors met while
/// streaming a body from [`Outbound::open_stream`]).
pub fn classify(err: reqwest::Error, url: &SafeUrl) -> OutboundError {
    let err = err.without_url();
    let url = url.clone();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if e.is::<policy::BlockedAddress>() {
            return OutboundError::NotAllowed {
                url,
                reason: PolicyViolation::Address,
            };
        }
        source = e.source();
    }
    if err.is_timeout() {
        OutboundError::Timeout { url }
    } else if err.is_connect() {
        OutboundError::Connect { url, source: err }
    } else {
        OutboundError::Request { url, source: err }
    }
}

#[cfg(test)]
mod tests;
