//! THE table of metric names Switchboard exports, their help text, and one recording function
//! per metric with typed label values. Label values are route templates, connector and method
//! ids from the catalogue, statuses and fixed outcome words: never a tenant, account, install,
//! key or patient id, so the set of series stays bounded and nothing identifying leaves in a
//! scrape. Recording goes through the `metrics` facade; which registry receives it is the
//! caller's business (the API runs each request under its application's recorder).

use std::sync::Arc;
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Label,
    SharedString,
};

/// HTTP requests served, by route template, method and status.
pub const HTTP_REQUESTS: &str = "switchboard_http_requests_total";
/// Latency of HTTP requests served, by route template, method and status.
pub const HTTP_REQUEST_DURATION: &str = "switchboard_http_request_duration_seconds";
/// Latency of upstream (EHR) requests, by connector, method and upstream status.
pub const UPSTREAM_REQUEST_DURATION: &str = "switchboard_upstream_request_duration_seconds";
/// Upstream requests retried after a 429 or 503, by that status.
pub const UPSTREAM_RETRIES: &str = "switchboard_upstream_retries_total";
/// Pooled database connections open (busy + idle).
pub const DB_POOL_CONNECTIONS: &str = "switchboard_db_pool_connections";
/// Pooled database connections idle.
pub const DB_POOL_IDLE: &str = "switchboard_db_pool_idle_connections";
/// The pool's configured maximum.
pub const DB_POOL_MAX: &str = "switchboard_db_pool_max_connections";
/// Token refreshes attempted, by outcome ([`RefreshOutcome`]).
pub const TOKEN_REFRESHES: &str = "switchboard_token_refreshes_total";
/// Time a caller waited for another process's refresh (lease held elsewhere), by outcome.
pub const LEASE_WAIT_DURATION: &str = "switchboard_token_lease_wait_seconds";
/// Look-ups in the hot-path caches, by cache and result (hit or miss).
pub const CACHE_LOOKUPS: &str = "switchboard_cache_lookups_total";

/// Audit records dropped because the writer's buffer was full.
pub const AUDIT_DROPPED: &str = "switchboard_audit_dropped_total";
/// Audit records waiting for the writer.
pub const AUDIT_QUEUE_DEPTH: &str = "switchboard_audit_queue_depth";

/// Webhook deliveries waiting (pending) in the outbox, every tenant.
pub const WEBHOOK_QUEUE_DEPTH: &str = "switchboard_webhook_queue_depth";
/// Webhook delivery attempts, by outcome ([`WebhookOutcome`]).
pub const WEBHOOK_DELIVERIES: &str = "switchboard_webhook_deliveries_total";
/// Latency of webhook delivery requests, by outcome.
pub const WEBHOOK_DELIVERY_DURATION: &str = "switchboard_webhook_delivery_duration_seconds";

/// Bucket bounds (seconds) of every duration histogram: 1 ms to 30 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Registers the help text of every metric with the current recorder.
pub fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests by route pattern, method and status."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time spent serving HTTP requests, by route pattern, method and status."
    );
    describe_histogram!(
        UPSTREAM_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Upstream (EHR) request latency including throttling retries, by connector, method and upstream status (or transport error class)."
    );
    describe_counter!(
        UPSTREAM_RETRIES,
        "Upstream requests retried after a 429 or 503 (honouring Retry-After), by that status."
    );
    describe_gauge!(
        DB_POOL_CONNECTIONS,
        "Database pool connections open (busy and idle), sampled at scrape."
    );
    describe_gauge!(
        DB_POOL_IDLE,
        "Database pool connections idle, sampled at scrape."
    );
    describe_gauge!(DB_POOL_MAX, "Database pool size limit.");
    describe_counter!(
        TOKEN_REFRESHES,
        "OAuth token refreshes by outcome (refreshed, refreshed_elsewhere, invalid_grant, transient_error)."
    );
    describe_histogram!(
        LEASE_WAIT_DURATION,
        metrics::Unit::Seconds,
        "Time spent waiting for another process's token refresh, by outcome (refreshed_elsewhere, timeout)."
    );
    describe_counter!(
        CACHE_LOOKUPS,
        "Hot-path cache look-ups by cache (install, api_key) and result (hit, miss)."
    );
    describe_counter!(
        AUDIT_DROPPED,
        "Audit records dropped (not written) because the audit buffer was full."
    );
    describe_gauge!(
        AUDIT_QUEUE_DEPTH,
        "Audit records waiting to be written, as of the last record queued."
    );
    describe_gauge!(
        WEBHOOK_QUEUE_DEPTH,
        "Webhook deliveries pending in the outbox (all tenants), sampled by the dispatcher."
    );
    describe_counter!(
        WEBHOOK_DELIVERIES,
        "Webhook delivery attempts by outcome (delivered, retrying, failed)."
    );
    describe_histogram!(
        WEBHOOK_DELIVERY_DURATION,
        metrics::Unit::Seconds,
        "Webhook delivery request latency, by outcome (delivered, retrying, failed)."
    );
}

/// What a webhook delivery attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// It did not; another attempt is scheduled.
    Retrying,
    /// It did not and the retry window is over: the delivery is marked failed.
    Failed,
}

impl WebhookOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookOutcome::Delivered => "delivered",
            WebhookOutcome::Retrying => "retrying",
            WebhookOutcome::Failed => "failed",
        }
    }
}

/// One webhook delivery attempt.
pub fn webhook_delivery(outcome: WebhookOutcome, elapsed: Duration) {
    counter!(WEBHOOK_DELIVERIES, "outcome" => outcome.as_str()).increment(1);
    histogram!(WEBHOOK_DELIVERY_DURATION, "outcome" => outcome.as_str())
        .record(elapsed.as_secs_f64());
}

/// Pending webhook deliveries (all tenants).
pub fn webhook_queue_depth(depth: i64) {
    gauge!(WEBHOOK_QUEUE_DEPTH).set(depth as f64);
}

/// An audit record could not be queued (the buffer was full) and was dropped.
pub fn audit_dropped() {
    counter!(AUDIT_DROPPED).increment(1);
}

/// Audit records waiting for the writer.
pub fn audit_queue_depth(depth: usize) {
    gauge!(AUDIT_QUEUE_DEPTH).set(depth as f64);
}

/// One HTTP request served. `route` is the matched route template (or `unmatched`), never the
/// request's path.
pub fn http_request(method: &'static str, route: &str, status: u16, elapsed: Duration) {
    // Shared strings: the two series' label sets are one allocation each, not two; a common
    // status is a static string (no allocation).
    let route: SharedString = Arc::<str>::from(route).into();
    let labels = vec![
        Label::new("route", route),
        Label::from_static_parts("method", method),
        Label::new("status", status_label(status)),
    ];
    counter!(HTTP_REQUESTS, labels.clone()).increment(1);
    histogram!(HTTP_REQUEST_DURATION, labels).record(elapsed.as_secs_f64());
}

/// What an upstream request ended with: the HTTP status it answered, or why there was none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamOutcome {
    Status(u16),
    /// Refused by the outbound policy before anything was sent.
    Blocked,
    Timeout,
    ConnectError,
    /// Any other transport failure (body too large, request error).
    Error,
}

impl UpstreamOutcome {
    fn label(self) -> SharedString {
        match self {
            UpstreamOutcome::Status(s) => status_label(s),
            UpstreamOutcome::Blocked => SharedString::const_str("blocked"),
            UpstreamOutcome::Timeout => SharedString::const_str("timeout"),
            UpstreamOutcome::ConnectError => SharedString::const_str("connect_error"),
            UpstreamOutcome::Error => SharedString::const_str("error"),
        }
    }
}

/// One upstream request of a connector method (each page of a paged call counts once).
/// `connector` and `method` are catalogue ids.
pub fn upstream_request(
    connector: &str,
    method: &str,
    outcome: UpstreamOutcome,
    elapsed: Duration,
) {
    histogram!(
        UPSTREAM_REQUEST_DURATION,
        "connector" => connector.to_owned(),
        "method" => method.to_owned(),
        "status" => outcome.label()
    )
    .record(elapsed.as_secs_f64());
}

/// One retry of an upstream request the upstream throttled (`status`: 429 or 503).
pub fn upstream_retry(status: u16) {
    counter!(UPSTREAM_RETRIES, "status" => status_label(status)).increment(1);
}

/// The database pool's state at one moment.
pub fn db_pool(connections: u32, idle: u32, max: u32) {
    gauge!(DB_POOL_CONNECTIONS).set(connections);
    gauge!(DB_POOL_IDLE).set(idle);
    gauge!(DB_POOL_MAX).set(max);
}

/// How a token refresh ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// This process called the token endpoint and committed new tokens.
    Refreshed,
    /// Another caller or replica refreshed first; its tokens were used.
    RefreshedElsewhere,
    /// The token endpoint refused the refresh token: the install needs re-authorisation.
    InvalidGrant,
    /// 5xx, timeout or network failure: the install stays authorised, backoff applies.
    TransientError,
}

impl RefreshOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshOutcome::Refreshed => "refreshed",
            RefreshOutcome::RefreshedElsewhere => "refreshed_elsewhere",
            RefreshOutcome::InvalidGrant => "invalid_grant",
            RefreshOutcome::TransientError => "transient_error",
        }
    }
}

/// One token refresh, by outcome.
pub fn token_refresh(outcome: RefreshOutcome) {
    counter!(TOKEN_REFRESHES, "outcome" => outcome.as_str()).increment(1);
}

/// How a wait for another process's lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseWaitOutcome {
    /// The token version moved: the other process's tokens were used.
    RefreshedElsewhere,
    /// `tokens.wait_timeout_ms` passed (the caller got a 503).
    Timeout,
}

impl LeaseWaitOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseWaitOutcome::RefreshedElsewhere => "refreshed_elsewhere",
            LeaseWaitOutcome::Timeout => "timeout",
        }
    }
}

/// One wait for a lease held elsewhere, with how long it took.
pub fn lease_wait(outcome: LeaseWaitOutcome, waited: Duration) {
    histogram!(LEASE_WAIT_DURATION, "outcome" => outcome.as_str()).record(waited.as_secs_f64());
}

/// The hot-path caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// Prepared installs (`tokens.install_cache_ttl_ms`).
    Install,
    /// Verified API keys (`api_keys.cache_ttl_ms`).
    ApiKey,
}

impl Cache {
    pub fn as_str(self) -> &'static str {
        match self {
            Cache::Install => "install",
            Cache::ApiKey => "api_key",
        }
    }
}

/// One look-up in `cache`; the hit rate is `hit / (hit + miss)`.
pub fn cache_lookup(cache: Cache, hit: bool) {
    counter!(
        CACHE_LOOKUPS,
        "cache" => cache.as_str(),
        "result" => if hit { "hit" } else { "miss" }
    )
    .increment(1);
}

/// The status as a label value: a static string for the statuses Switchboard and EHRs answer
/// with most (no allocation on the hot path), else formatted.
fn status_label(status: u16) -> SharedString {
    const COMMON: [&str; 20] = [
        "200", "201", "204", "400", "401", "403", "404", "405", "409", "410", "412", "413", "415",
        "422", "429", "500", "501", "502", "503", "504",
    ];
    const CODES: [u16; 20] = [
        200, 201, 204, 400, 401, 403, 404, 405, 409, 410, 412, 413, 415, 422, 429, 500, 501, 502,
        503, 504,
    ];
    match CODES.iter().position(|&c| c == status) {
        Some(i) => SharedString::const_str(COMMON[i]),
        None => SharedString::from_owned(status.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_a_valid_prometheus_name_with_our_prefix() {
        for name in [
            HTTP_REQUESTS,
            HTTP_REQUEST_DURATION,
            UPSTREAM_REQUEST_DURATION,
            UPSTREAM_RETRIES,
            DB_POOL_CONNECTIONS,
            DB_POOL_IDLE,
            DB_POOL_MAX,
            TOKEN_REFRESHES,
            LEASE_WAIT_DURATION,
            CACHE_LOOKUPS,
            AUDIT_DROPPED,
            AUDIT_QUEUE_DEPTH,
        ] {
            assert!(name.starts_with("switchboard_"), "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
        }
        assert!(DURATION_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }
}
