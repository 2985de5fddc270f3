//! Prometheus metrics: request counts and latency by route pattern (never by concrete path, so
//! no id or parameter value becomes a label) and status.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Series {
    count: u64,
    seconds: f64,
}

/// (route pattern, method, status)
type SeriesKey = (String, &'static str, u16);

#[derive(Clone, Default)]
pub struct Metrics {
    series: Arc<Mutex<BTreeMap<SeriesKey, Series>>>,
}

impl Metrics {
    pub fn record(&self, method: &'static str, route: &str, status: u16, elapsed: Duration) {
        let mut map = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.entry((route.to_owned(), method, status)).or_default();
        s.count += 1;
        s.seconds += elapsed.as_secs_f64();
    }

    pub fn render(&self) -> String {
        let map = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::from(
            "# HELP switchboard_http_requests_total HTTP requests by route pattern, method and status.\n# TYPE switchboard_http_requests_total counter\n",
        );
        for ((route, method, status), s) in map.iter() {
            out.push_str(&format!(
                "switchboard_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {}\n",
                s.count
            ));
        }
        out.push_str("# HELP switchboard_http_request_duration_seconds_sum Total time spent serving requests.\n# TYPE switchboard_http_request_duration_seconds_sum counter\n");
        for ((route, method, status), s) in map.iter() {
            out.push_str(&format!(
                "switchboard_http_request_duration_seconds_sum{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {:.6}\n",
                s.seconds
            ));
        }
        out
    }
}
