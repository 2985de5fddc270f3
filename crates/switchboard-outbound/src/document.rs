//! A bounded GET of one small document (a discovery document, a CapabilityStatement) on a
//! client of [`crate::Outbound::client_for`]: the body of a successful answer, read under a
//! size limit. Parsing is the caller's.

use url::Url;

/// Why [`get_document`] read no document. The messages are reasons callers put in their own
/// errors next to the URL: a status or a cause, never the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// The server answered with a status outside 2xx.
    #[error("answered HTTP {0}")]
    Status(u16),
    /// The server could not be reached, or the body was cut short.
    #[error("{0}")]
    Unreachable(&'static str),
    /// The body is larger than the caller's limit (it is never truncated).
    #[error("the document is too large")]
    TooLarge,
}

/// GETs `url` with `Accept: accept` and the extra `headers` through `http` (a client of
/// [`crate::Outbound::client_for`], whose resolver enforces the address policy; the caller has
/// checked `url`), once, without retries. Returns the body of a 2xx answer without a leading
/// UTF-8 byte-order mark, refusing one above `max_bytes`.
pub async fn get_document(
    http: &reqwest::Client,
    url: Url,
    accept: &'static str,
    headers: &[(String, String)],
    max_bytes: usize,
) -> Result<Vec<u8>, DocumentError> {
    let mut req = http.get(url).header(reqwest::header::ACCEPT, accept);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let mut resp = req.send().await.map_err(|e| {
        DocumentError::Unreachable(if e.is_timeout() {
            "timed out"
        } else {
            "connection failed"
        })
    })?;
    let status = resp.status();
    if !status.is_success() {
        return Err(DocumentError::Status(status.as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|_| DocumentError::Unreachable("the response was cut short"))?
    {
        if body.len() + chunk.len() > max_bytes {
            return Err(DocumentError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    if body.starts_with(b"\xEF\xBB\xBF") {
        body.drain(..3);
    }
    Ok(body)
}
