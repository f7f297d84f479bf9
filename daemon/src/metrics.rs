//! The daemon's Prometheus metrics, one registry, served at `/metrics`.
//!
//! Names follow `kiroku_<noun>_<unit>`; labels are bounded sets (API
//! actions, error codes from `api::error::codes`, task states, leave
//! reasons). The catalogue is in `docs/operations.md`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub api_requests: IntCounterVec,
    pub api_request_duration: HistogramVec,
    pub api_relayed: IntCounterVec,
    pub tasks: IntGaugeVec,
    pub tasks_started: IntCounter,
    pub tasks_stopped: IntCounterVec,
    pub tasks_refused: IntCounterVec,
    pub callbacks_queued: IntCounter,
    pub callbacks_delivered: IntCounter,
    pub callbacks_retried: IntCounter,
    pub callbacks_given_up: IntCounter,
    pub callbacks_pending: IntGauge,
    pub store_errors: IntCounter,
    pub replays_refused: IntCounter,
    pub commit_retries: IntCounter,
    pub tasks_fenced: IntCounter,
}

/// A counter registered in `r` (metric definitions are constants: a
/// failure is a programming error, caught by the unit tests).
pub(crate) fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

pub(crate) fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

pub(crate) fn float_counter(r: &Registry, name: &str, help: &str) -> prometheus::Counter {
    let c = prometheus::Counter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

pub(crate) fn float_counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::CounterVec {
    let c = prometheus::CounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

pub(crate) fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

pub(crate) fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    /// Builds the registry. Metric definitions are constants, so a failure
    /// here is a programming error caught by the unit test below.
    pub fn new() -> Self {
        let r = Registry::new();
        let api_requests = counter_vec(
            &r,
            "kiroku_api_requests_total",
            "REST API requests by action and result code (\"Success\" or the error code)",
            &["action", "code"],
        );
        let api_request_duration = HistogramVec::new(
            HistogramOpts::new(
                "kiroku_api_request_duration_seconds",
                "REST API request latency, from the first byte read to the response",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 6.0,
            ]),
            &["action"],
        )
        .expect("valid metric");
        r.register(Box::new(api_request_duration.clone()))
            .expect("unique metric");
        let api_relayed = counter_vec(
            &r,
            "kiroku_api_relayed_total",
            "Fleet mode: API requests relayed to the box that runs their task or room, by action",
            &["action"],
        );
        let tasks = IntGaugeVec::new(
            Opts::new(
                "kiroku_tasks",
                "Recording tasks by state (idle, in_progress, exited)",
            ),
            &["state"],
        )
        .expect("valid metric");
        r.register(Box::new(tasks.clone())).expect("unique metric");
        for s in ["idle", "in_progress", "exited"] {
            tasks.with_label_values(&[s]).set(0);
        }
        let pending = IntGauge::new(
            "kiroku_callbacks_pending",
            "Callbacks in the durable outbox, not yet delivered",
        )
        .expect("valid metric");
        r.register(Box::new(pending.clone()))
            .expect("unique metric");
        let build = IntGaugeVec::new(
            Opts::new(
                "kiroku_build_info",
                "Always 1; the version label tells the build",
            ),
            &["version"],
        )
        .expect("valid metric");
        r.register(Box::new(build.clone())).expect("unique metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Self {
            api_requests,
            api_request_duration,
            api_relayed,
            tasks,
            tasks_started: counter(&r, "kiroku_tasks_started_total", "Recording tasks created"),
            tasks_stopped: counter_vec(
                &r,
                "kiroku_tasks_stopped_total",
                "Recording tasks stopped, by reason (LeaveCode)",
                &["reason"],
            ),
            tasks_refused: counter_vec(
                &r,
                "kiroku_tasks_refused_total",
                "CreateCloudRecording refusals that are capacity, not caller, errors",
                &["reason"],
            ),
            callbacks_queued: counter(
                &r,
                "kiroku_callbacks_queued_total",
                "Callbacks written to the outbox",
            ),
            callbacks_delivered: counter(
                &r,
                "kiroku_callbacks_delivered_total",
                "Callbacks answered with HTTP 2xx",
            ),
            callbacks_retried: counter(
                &r,
                "kiroku_callbacks_retried_total",
                "Callback attempts that failed and were rescheduled",
            ),
            callbacks_given_up: counter(
                &r,
                "kiroku_callbacks_given_up_total",
                "Callbacks dropped after failing for callbacks.retry_for_seconds",
            ),
            callbacks_pending: pending,
            store_errors: counter(
                &r,
                "kiroku_store_errors_total",
                "Failed state-store operations",
            ),
            commit_retries: counter(
                &r,
                "kiroku_store_commit_retries_total",
                "A task's change and its callback retried after the state store refused the commit (nothing is dropped)",
            ),
            tasks_fenced: counter(
                &r,
                "kiroku_fleet_tasks_fenced_total",
                "Tasks this box let go because another box of the fleet took them over",
            ),
            replays_refused: counter(
                &r,
                "kiroku_api_replays_refused_total",
                "Signed API requests refused: the signature was already used for another action from another address",
            ),
            registry: r,
        }
    }

    /// The registry, for subsystems that register their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_builds_and_renders() {
        let m = Metrics::new();
        m.api_requests
            .with_label_values(&["DescribeCloudRecording", "Success"])
            .inc();
        let text = m.render();
        assert!(text.contains(
            "kiroku_api_requests_total{action=\"DescribeCloudRecording\",code=\"Success\"} 1"
        ));
        assert!(text.contains("kiroku_tasks{state=\"idle\"} 0"));
        assert!(text.contains("kiroku_build_info"));
    }
}
