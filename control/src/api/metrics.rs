//! The controller's Prometheus metrics, in a registry of its own, served at `GET /metrics`
//! (with the controller key, as every endpoint but `/ping`).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use prometheus::{Encoder, IntCounter, IntGauge, Registry, TextEncoder};

use super::ApiState;

pub struct Metrics {
    registry: Registry,
    /// Live `/events` streams: each one's task and buffers.
    pub event_subscribers: IntGauge,
    /// Streams ended because their client stopped reading.
    pub event_subscribers_dropped: IntCounter,
    /// Events retained in the store, as the controller's index of them counts.
    pub events_retained: IntGauge,
    /// The bytes of the retained events' stored values.
    pub events_retained_bytes: IntGauge,
    /// Events deleted for being over a retention limit.
    pub events_pruned: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let gauge = IntGauge::new(name, help).expect("a valid metric");
            registry
                .register(Box::new(gauge.clone()))
                .expect("a metric registered once");
            gauge
        };
        let counter = |name: &str, help: &str| {
            let counter = IntCounter::new(name, help).expect("a valid metric");
            registry
                .register(Box::new(counter.clone()))
                .expect("a metric registered once");
            counter
        };
        Metrics {
            event_subscribers: gauge("flynn_controller_event_subscribers", "Live /events streams"),
            event_subscribers_dropped: counter(
                "flynn_controller_event_subscribers_dropped_total",
                "/events streams ended because the client stopped reading",
            ),
            events_retained: gauge(
                "flynn_controller_events_retained",
                "Events retained in the store",
            ),
            events_retained_bytes: gauge(
                "flynn_controller_events_retained_bytes",
                "Bytes of the events retained in the store",
            ),
            events_pruned: counter(
                "flynn_controller_events_pruned_total",
                "Events deleted for being over a retention limit (count, bytes or age)",
            ),
            registry,
        }
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// `GET /metrics`.
pub async fn get(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
