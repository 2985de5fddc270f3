//! Retry decisions for throttled (429) and unavailable (503) answers.

use std::time::{Duration, SystemTime};

use rand::Rng;
use reqwest::header::{HeaderMap, RETRY_AFTER};

/// Whether a 429/503 answer may be retried. Only idempotent requests should use
/// [`RetryPolicy::OnThrottle`] (RFC 9110 §9.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryPolicy {
    /// One attempt; a 429/503 is returned as a normal response.
    Never,
    /// Retry 429 and 503 up to `max_retries` times.
    OnThrottle,
}

impl RetryPolicy {
    /// `OnThrottle` for GET, HEAD, OPTIONS, PUT and DELETE; `Never` otherwise.
    pub fn for_method(method: &reqwest::Method) -> Self {
        use reqwest::Method;
        if [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
        ]
        .contains(method)
        {
            Self::OnThrottle
        } else {
            Self::Never
        }
    }
}

const BACKOFF_BASE: Duration = Duration::from_millis(100);

/// `Retry-After` as delta-seconds or an HTTP-date (a date in the past is zero).
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// How long to wait before retry number `attempt + 1`, or `None` when the upstream asked for
/// longer than `cap` (not worth waiting for in a request/response call).
pub(crate) fn wait_before_retry(
    attempt: u32,
    retry_after: Option<Duration>,
    cap: Duration,
) -> Option<Duration> {
    match retry_after {
        Some(asked) if asked > cap => None,
        Some(asked) => Some(asked),
        None => {
            // Full jitter: uniform in [0, min(cap, base * 2^attempt)].
            let ceiling = BACKOFF_BASE
                .saturating_mul(1u32 << attempt.min(16))
                .min(cap);
            let ms = ceiling.as_millis() as u64;
            Some(Duration::from_millis(rand::rng().random_range(0..=ms)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn parses_seconds_and_dates() {
        assert_eq!(
            parse_retry_after(&headers("7")),
            Some(Duration::from_secs(7))
        );
        assert_eq!(parse_retry_after(&headers(" 0 ")), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(&headers("Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(Duration::ZERO)
        );
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let d = parse_retry_after(&headers(&later)).unwrap();
        assert!(
            d > Duration::from_secs(110) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        assert_eq!(parse_retry_after(&headers("soon")), None);
        assert_eq!(parse_retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let cap = Duration::from_secs(10);
        for attempt in 0..20 {
            let w = wait_before_retry(attempt, None, cap).unwrap();
            let ceiling = (BACKOFF_BASE * 2u32.pow(attempt.min(16))).min(cap);
            assert!(w <= ceiling, "attempt {attempt}: {w:?}");
        }
        assert_eq!(
            wait_before_retry(0, Some(Duration::from_secs(2)), cap),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            wait_before_retry(0, Some(Duration::from_secs(11)), cap),
            None
        );
    }

    #[test]
    fn policy_by_method() {
        assert_eq!(
            RetryPolicy::for_method(&reqwest::Method::GET),
            RetryPolicy::OnThrottle
        );
        assert_eq!(
            RetryPolicy::for_method(&reqwest::Method::PUT),
            RetryPolicy::OnThrottle
        );
        assert_eq!(
            RetryPolicy::for_method(&reqwest::Method::POST),
            RetryPolicy::Never
        );
        assert_eq!(
            RetryPolicy::for_method(&reqwest::Method::PATCH),
            RetryPolicy::Never
        );
    }
}
