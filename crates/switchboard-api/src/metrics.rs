//! Prometheus metrics of one application, on the `metrics` facade and
//! `metrics-exporter-prometheus`: a recorder per [`Metrics`] (not the process-global one, so
//! several applications in one process, as in the test suite, keep their own series), rendered
//! by our `/metrics` handler. Work done while serving a request records into it because the
//! request's future is polled with it as the thread's local recorder ([`Metrics::in_scope`]).
//! Names and label rules: `switchboard_metrics`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    token: Option<String>,
    dedicated_listener: bool,
}

impl Metrics {
    /// A fresh registry. `token`: the bearer token scrapes must present (`metrics.token`);
    /// `dedicated_listener`: `/metrics` is served on its own listener (`metrics.bind`) and the
    /// main listener answers 404 for it.
    pub fn new(token: Option<&str>, dedicated_listener: bool) -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(switchboard_metrics::DURATION_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        let metrics = Self {
            inner: Arc::new(Inner {
                recorder,
                handle,
                token: token.map(str::to_owned),
                dedicated_listener,
            }),
        };
        metrics.with(switchboard_metrics::describe);
        metrics
    }

    /// Runs `f` with this registry as the thread's recorder.
    pub fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&self.inner.recorder, f)
    }

    /// `fut`, polled with this registry as the thread's recorder: everything it records (the
    /// engine's upstream latencies, the services' counters) lands here.
    pub fn in_scope<F: Future>(&self, fut: F) -> InScope<F> {
        InScope {
            metrics: self.clone(),
            fut: Box::pin(fut),
        }
    }

    /// Folds recent histogram samples into their buckets; called periodically so a registry
    /// nobody scrapes does not grow.
    pub fn upkeep(&self) {
        self.inner.handle.run_upkeep();
    }

    /// The Prometheus text exposition of everything recorded.
    pub fn render(&self) -> String {
        self.inner.handle.render()
    }

    pub(crate) fn token(&self) -> Option<&str> {
        self.inner.token.as_deref()
    }

    pub(crate) fn on_dedicated_listener(&self) -> bool {
        self.inner.dedicated_listener
    }
}

/// See [`Metrics::in_scope`].
pub struct InScope<F> {
    metrics: Metrics,
    fut: Pin<Box<F>>,
}

impl<F: Future> Future for InScope<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let fut = this.fut.as_mut();
        metrics::with_local_recorder(&this.metrics.inner.recorder, move || fut.poll(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;
    use std::time::Duration;
    use switchboard_metrics::{Cache, LeaseWaitOutcome, RefreshOutcome};

    #[test]
    fn the_service_side_metrics_render_under_their_names() {
        let m = Metrics::new(None, false);
        m.with(|| {
            switchboard_metrics::token_refresh(RefreshOutcome::InvalidGrant);
            switchboard_metrics::lease_wait(LeaseWaitOutcome::Timeout, Duration::from_millis(20));
            switchboard_metrics::cache_lookup(Cache::Install, true);
            switchboard_metrics::cache_lookup(Cache::Install, false);
            switchboard_metrics::cache_lookup(Cache::ApiKey, true);
        });
        let text = m.render();
        for line in [
            "switchboard_token_refreshes_total{outcome=\"invalid_grant\"} 1",
            "switchboard_token_lease_wait_seconds_bucket{outcome=\"timeout\",le=\"0.01\"} 0",
            "switchboard_token_lease_wait_seconds_bucket{outcome=\"timeout\",le=\"0.025\"} 1",
            "switchboard_token_lease_wait_seconds_count{outcome=\"timeout\"} 1",
            "switchboard_cache_lookups_total{cache=\"install\",result=\"hit\"} 1",
            "switchboard_cache_lookups_total{cache=\"install\",result=\"miss\"} 1",
            "switchboard_cache_lookups_total{cache=\"api_key\",result=\"hit\"} 1",
            "# HELP switchboard_token_refreshes_total OAuth token refreshes by outcome",
        ] {
            assert!(text.contains(line), "missing `{line}` in\n{text}");
        }
    }

    #[test]
    fn http_statuses_render_whether_static_or_formatted() {
        // 200 and 404 are static label strings, 418 is formatted: the series look the same.
        let m = Metrics::new(None, false);
        m.with(|| {
            for status in [200, 404, 418, 200] {
                switchboard_metrics::http_request(
                    "POST",
                    "/v1/accounts/{account}/installs/{install}/methods/{method}",
                    status,
                    Duration::from_millis(1),
                );
            }
        });
        let text = m.render();
        for (status, n) in [("200", 2), ("404", 1), ("418", 1)] {
            let line = format!(
                "switchboard_http_requests_total{{route=\"/v1/accounts/{{account}}/installs/{{install}}/methods/{{method}}\",method=\"POST\",status=\"{status}\"}} {n}"
            );
            assert!(text.contains(&line), "missing `{line}` in\n{text}");
        }
    }

    #[test]
    fn futures_record_into_the_registry_they_run_in() {
        let (a, b) = (Metrics::new(None, false), Metrics::new(None, false));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(a.in_scope(async {
            switchboard_metrics::token_refresh(RefreshOutcome::Refreshed);
        }));
        // Outside any scope nothing lands in either.
        switchboard_metrics::token_refresh(RefreshOutcome::Refreshed);
        let line = "switchboard_token_refreshes_total{outcome=\"refreshed\"} 1";
        assert!(a.render().contains(line), "{}", a.render());
        assert!(
            !b.render().contains("outcome=\"refreshed\""),
            "{}",
            b.render()
        );
    }
}
