//! Rate limits with `governor`: the request rate per API key, and the outbound rates a connector
//! declares in its `[limits]` (token requests per setup, method calls per install), each a token
//! bucket per key in this process. Connector limits are shared across replicas by dividing:
//! each replica enforces limit / `limits.replicas` (at least 1). A leaf: depends only on `error`.

use crate::error::ServiceError;
use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard_config::LimitsSettings;
use switchboard_connector::Connector;

/// A token bucket per key (API key id, tenant or install id).
type Limiter = DefaultKeyedRateLimiter<String>;

/// Keys kept per limiter before idle buckets are swept (`retain_recent`).
const SWEEP_ABOVE: usize = 10_000;
/// How often (in checks) a limiter counts its keys for the sweep: counting locks every shard of
/// its map, too dear for every call.
const SWEEP_EVERY: u64 = 1_024;

/// `per_period` events per `period`, with a burst of `burst`; `None` when `per_period` is 0.
fn quota(per_period: u32, period: Duration, burst: u32) -> Option<Quota> {
    let per = NonZeroU32::new(per_period)?;
    let burst = NonZeroU32::new(burst.max(1))?;
    Quota::with_period(period / per.get()).map(|q| q.allow_burst(burst))
}

/// Seconds to announce in `Retry-After` for a wait: rounded up, at least 1.
fn retry_after_secs(wait: Duration) -> u64 {
    let s = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    s.max(1)
}

fn sweep(limiter: &DefaultKeyedRateLimiter<String>, checks: &AtomicU64) {
    if checks
        .fetch_add(1, Ordering::Relaxed)
        .is_multiple_of(SWEEP_EVERY)
        && limiter.len() > SWEEP_ABOVE
    {
        limiter.retain_recent();
    }
}

/// The request rate of each API key (`limits.api_key_requests_per_minute`, `api_key_burst`).
pub struct KeyRateLimit {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    checks: AtomicU64,
}

impl KeyRateLimit {
    pub fn new(cfg: &LimitsSettings) -> Self {
        Self {
            limiter: quota(
                cfg.api_key_requests_per_minute,
                Duration::from_secs(60),
                cfg.api_key_burst,
            )
            .map(RateLimiter::keyed),
            checks: AtomicU64::new(0),
        }
    }

    /// Counts one request of `key_id`: 429 `rate_limited` with the wait when its bucket is empty.
    pub fn check(&self, key_id: &str) -> Result<(), ServiceError> {
        self.check_key(&key_id.to_owned())
    }

    /// [`KeyRateLimit::check`] of an authenticated request's key, with no allocation.
    pub(crate) fn check_ctx(&self, ctx: &crate::tenant::TenantCtx) -> Result<(), ServiceError> {
        self.check_key(&ctx.key_id)
    }

    // governor's keyed limiter looks the key up by `&K`.
    #[allow(clippy::ptr_arg)]
    fn check_key(&self, key_id: &String) -> Result<(), ServiceError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        sweep(limiter, &self.checks);
        limiter.check_key(key_id).map_err(|not_until| {
            let wait = not_until.wait_time_from(limiter.clock().now());
            ServiceError::RateLimited {
                detail: "this API key sends requests faster than limits.api_key_requests_per_minute allows; retry later".into(),
                retry_after_secs: retry_after_secs(wait),
            }
        })
    }
}

/// Which connector-declared outbound limit a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Outgoing {
    /// A token request (code exchange, refresh, client credentials): per setup (tenant).
    Token,
    /// A method call: per install.
    Call,
}

/// The connector-declared outbound limits of this replica: one keyed limiter per connector and
/// kind, created on first use.
pub(crate) struct OutboundLimits {
    checks: AtomicU64,
    replicas: u32,
    max_wait: Duration,
    limiters: Mutex<HashMap<(String, Outgoing), Arc<Limiter>>>,
}

impl OutboundLimits {
    pub(crate) fn new(cfg: &LimitsSettings) -> Self {
        Self {
            checks: AtomicU64::new(0),
            replicas: cfg.replicas.max(1),
            max_wait: Duration::from_millis(cfg.outbound_queue_ms),
            limiters: Mutex::new(HashMap::new()),
        }
    }

    fn limiter(
        &self,
        connector: &Connector,
        kind: Outgoing,
    ) -> Option<Arc<DefaultKeyedRateLimiter<String>>> {
        let declared = connector.def.limits.as_ref()?;
        let (limit, period) = match kind {
            Outgoing::Token => (declared.token_requests_per_minute?, Duration::from_secs(60)),
            Outgoing::Call => (declared.requests_per_second?, Duration::from_secs(1)),
        };
        // This replica's share; the burst is the share too, so N replicas together never
        // exceed the declared limit within one period.
        let share = (limit / self.replicas).max(1);
        let mut map = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map
            .entry((connector.def.id.clone(), kind))
            .or_insert_with(|| {
                Arc::new(RateLimiter::keyed(
                    quota(share, period, share).expect("share is at least 1"),
                ))
            });
        Some(entry.clone())
    }

    /// Takes one request of `kind` for `key` (the tenant for tokens, the install for calls)
    /// under `connector`'s declared limit, waiting up to `limits.outbound_queue_ms`; past that,
    /// 429 `rate_limited` with the remaining wait. A connector without the limit passes at once.
    pub(crate) async fn acquire(
        &self,
        connector: &Connector,
        kind: Outgoing,
        key: &str,
    ) -> Result<(), ServiceError> {
        let Some(limiter) = self.limiter(connector, kind) else {
            return Ok(());
        };
        sweep(&limiter, &self.checks);
        let key = key.to_owned();
        let started = Instant::now();
        loop {
            let wait = match limiter.check_key(&key) {
                Ok(()) => return Ok(()),
                Err(not_until) => not_until.wait_time_from(limiter.clock().now()),
            };
            if started.elapsed() + wait > self.max_wait {
                let what = match kind {
                    Outgoing::Token => "token requests per minute",
                    Outgoing::Call => "requests per second",
                };
                return Err(ServiceError::RateLimited {
                    detail: format!(
                        "the connector '{}' allows only so many {what} (its [limits]); retry later",
                        connector.def.id
                    ),
                    retry_after_secs: retry_after_secs(wait),
                });
            }
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(30)), 30);
    }

    #[test]
    fn a_zero_rate_is_no_limit() {
        assert!(quota(0, Duration::from_secs(60), 5).is_none());
        assert!(quota(50, Duration::from_secs(60), 50).is_some());
    }

    #[test]
    fn key_rate_refuses_past_the_burst_per_key() {
        let cfg = LimitsSettings {
            api_key_requests_per_minute: 1,
            api_key_burst: 2,
            max_accounts_per_tenant: 0,
            max_installs_per_tenant: 0,
            max_api_keys_per_tenant: 0,
            max_pending_oauth_states_per_tenant: 0,
            bad_key_cache_ttl_ms: 0,
            bad_key_cache_size: 0,
            key_lookup_concurrency: 0,
            replicas: 1,
            outbound_queue_ms: 0,
            max_pending_connect_sessions_per_tenant: 0,
        };
        let l = KeyRateLimit::new(&cfg);
        assert!(l.check("key_a").is_ok());
        assert!(l.check("key_a").is_ok());
        match l.check("key_a") {
            Err(ServiceError::RateLimited {
                retry_after_secs, ..
            }) => assert!((1..=60).contains(&retry_after_secs)),
            other => panic!("{other:?}"),
        }
        // Another key has its own bucket.
        assert!(l.check("key_b").is_ok());
    }
}
