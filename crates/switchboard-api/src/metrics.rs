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
