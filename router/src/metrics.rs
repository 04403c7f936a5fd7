//! The router's Prometheus metrics, in a registry of its own (so several routers can live in
//! one process, as in tests and the all-in-one server).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use pingora::services::listening::ConnectionLimit;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::proxy::h1::Side;

/// Every metric the router exports. Counters for the hot path are resolved once, here.
pub struct Metrics {
    registry: Registry,
    /// `flynn_router_requests_total{class="1xx".."5xx"}`, indexed by `status / 100 - 1`.
    requests_by_class: [IntCounter; 5],
    pub request_duration: Histogram,
    pub upstream_connect_errors: IntCounter,
    pub routes: IntGauge,
    pub instances: IntGauge,
    pub store_connected: IntGauge,
    pub store_revision: IntGauge,
    store_sync_age: Gauge,
    pub store_invalid_entries: IntCounter,
    pub store_relists: IntCounter,
    pub certificates: IntGauge,
    pub tls_no_certificate: IntCounter,
    pub tcp_listeners: IntGauge,
    pub tcp_connections: IntCounter,
    pub proxy_header_refused: IntCounter,
    pub h1_handed_over: IntCounter,
    pub h2_fast_streams: IntCounter,
    pub h2_handed_over: IntCounter,
    /// `flynn_router_h1_relay_errors_total{side}`, indexed by [`Side`].
    h1_relay_errors: [IntCounter; Side::ALL.len()],
    /// Read off the connection limit at each scrape.
    client_connections: IntGauge,
    client_connections_max: IntGauge,
    accept_paused: IntCounter,
    limit: std::sync::OnceLock<Arc<ConnectionLimit>>,
    connected: AtomicBool,
    synced_once: AtomicBool,
    last_contact_ms: AtomicU64,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "flynn_router_requests_total",
                "HTTP requests answered, by status class",
            ),
            &["class"],
        )
        .expect("valid metric");
        let requests_by_class =
            ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| requests.with_label_values(&[c]));
        let request_duration = Histogram::with_opts(
            HistogramOpts::new(
                "flynn_router_request_duration_seconds",
                "Time from request to the end of the response",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
        )
        .expect("valid metric");
        let relay_errors = IntCounterVec::new(
            Opts::new(
                "flynn_router_h1_relay_errors_total",
                "Response bodies the HTTP/1.1 fast path could not pass on whole, by the side that \
                 failed (client, backend, timeout, malformed)",
            ),
            &["side"],
        )
        .expect("valid metric");
        let h1_relay_errors = Side::ALL.map(|side| relay_errors.with_label_values(&[side.label()]));
        let int_counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid");
        let int_gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid");
        let metrics = Metrics {
            h1_relay_errors,
            requests_by_class,
            request_duration,
            upstream_connect_errors: int_counter(
                "flynn_router_upstream_connect_errors_total",
                "Failed connection attempts to backends",
            ),
            routes: int_gauge("flynn_router_routes", "Routes (HTTP and TCP) in the table"),
            instances: int_gauge("flynn_router_instances", "Service instances in the table"),
            store_connected: int_gauge(
                "flynn_router_store_connected",
                "1 while the store watch is established",
            ),
            store_revision: int_gauge(
                "flynn_router_store_revision",
                "Last store revision applied to the table",
            ),
            store_sync_age: Gauge::new(
                "flynn_router_store_last_sync_age_seconds",
                "Seconds since the table was last known to match the store (0 while connected)",
            )
            .expect("valid"),
            store_invalid_entries: int_counter(
                "flynn_router_store_invalid_entries_total",
                "Store keys or values that could not be parsed and were skipped",
            ),
            store_relists: int_counter(
                "flynn_router_store_relists_total",
                "Listings of a store prefix after the first: its history compacted away, or the \
                 store replaced or gone back in time",
            ),
            certificates: int_gauge(
                "flynn_router_certificates",
                "TLS certificates loaded from the store",
            ),
            tls_no_certificate: int_counter(
                "flynn_router_tls_no_certificate_total",
                "TLS handshakes refused because no certificate matched the server name",
            ),
            tcp_listeners: int_gauge(
                "flynn_router_tcp_listeners",
                "Listeners open for TCP routes",
            ),
            tcp_connections: int_counter(
                "flynn_router_tcp_connections_total",
                "Connections accepted on TCP route listeners",
            ),
            proxy_header_refused: int_counter(
                "flynn_router_proxy_header_refused_total",
                "Connections from trusted proxies closed for a missing or malformed PROXY header",
            ),
            h1_handed_over: int_counter(
                "flynn_router_h1_handed_over_total",
                "Client connections the HTTP/1.1 fast path handed to pingora's proxy \
                 (upgrades, chunked or large uploads, HTTP/2 backends, HTTP/1.0, unusual requests)",
            ),
            h2_fast_streams: int_counter(
                "flynn_router_h2_fast_streams_total",
                "HTTP/2 streams served by the router's own request path (plain requests to \
                 HTTP/1 backends)",
            ),
            h2_handed_over: int_counter(
                "flynn_router_h2_handed_over_total",
                "HTTP/2 streams the fast path gave to pingora's proxy (CONNECT, bodies of no \
                 declared or a large length, HTTP/2 backends, unusual requests)",
            ),
            client_connections: int_gauge(
                "flynn_router_client_connections",
                "Client connections open (HTTP, HTTPS and TCP route listeners)",
            ),
            client_connections_max: int_gauge(
                "flynn_router_client_connections_max",
                "The most client connections open at once (--max-connections)",
            ),
            accept_paused: int_counter(
                "flynn_router_accept_paused_total",
                "Times accepting paused because --max-connections were open",
            ),
            limit: std::sync::OnceLock::new(),
            connected: AtomicBool::new(false),
            synced_once: AtomicBool::new(false),
            last_contact_ms: AtomicU64::new(now_ms()),
            registry,
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 22] = [
            Box::new(relay_errors),
            Box::new(metrics.client_connections.clone()),
            Box::new(metrics.client_connections_max.clone()),
            Box::new(metrics.accept_paused.clone()),
            Box::new(requests),
            Box::new(metrics.request_duration.clone()),
            Box::new(metrics.upstream_connect_errors.clone()),
            Box::new(metrics.routes.clone()),
            Box::new(metrics.instances.clone()),
            Box::new(metrics.store_connected.clone()),
            Box::new(metrics.store_revision.clone()),
            Box::new(metrics.store_sync_age.clone()),
            Box::new(metrics.store_invalid_entries.clone()),
            Box::new(metrics.store_relists.clone()),
            Box::new(metrics.certificates.clone()),
            Box::new(metrics.tls_no_certificate.clone()),
            Box::new(metrics.tcp_listeners.clone()),
            Box::new(metrics.tcp_connections.clone()),
            Box::new(metrics.proxy_header_refused.clone()),
            Box::new(metrics.h1_handed_over.clone()),
            Box::new(metrics.h2_fast_streams.clone()),
            Box::new(metrics.h2_handed_over.clone()),
        ];
        for c in collectors {
            metrics
                .registry
                .register(c)
                .expect("metric registered once");
        }
        metrics
    }

    /// Records one answered request: its status (0: nothing was sent) and how long it took.
    pub fn record_request(&self, status: u16, start: std::time::Instant) {
        self.count_status(status);
        self.request_duration.observe(start.elapsed().as_secs_f64());
    }

    /// Counts a response body the fast path could not pass on whole, by the side that failed.
    pub fn relay_failed(&self, side: Side) {
        self.h1_relay_errors[side as usize].inc();
    }

    /// Counts one answered request by its status (0: nothing was sent).
    fn count_status(&self, status: u16) {
        if let Some(counter) = (status / 100)
            .checked_sub(1)
            .and_then(|i| self.requests_by_class.get(i as usize))
        {
            counter.inc();
        }
    }

    /// The store watch is up and the table reflects it.
    /// While connected the table is in sync now; once disconnected, it was last in sync when
    /// the contact was lost, and the age grows from there.
    pub fn store_contact(&self, connected: bool) {
        let was_connected = self.connected.swap(connected, Ordering::Relaxed);
        if connected || was_connected {
            self.last_contact_ms.store(now_ms(), Ordering::Relaxed);
        }
        self.store_connected.set(i64::from(connected));
    }

    /// The whole table has been loaded from the store.
    pub fn mark_synced(&self) {
        self.synced_once.store(true, Ordering::Relaxed);
    }

    /// Whether the table has been loaded from the store at least once.
    pub fn synced_once(&self) -> bool {
        self.synced_once.load(Ordering::Relaxed)
    }

    /// Reports the client connections `limit` counts.
    pub fn watch_connections(&self, limit: Arc<ConnectionLimit>) {
        self.client_connections_max.set(limit.max() as i64);
        let _ = self.limit.set(limit);
    }

    /// Adds a metric of a part that exists only when configured (the access log's).
    pub fn register(&self, metric: Box<dyn prometheus::core::Collector>) {
        if let Err(e) = self.registry.register(metric) {
            tracing::warn!(error = %e, "a metric could not be registered");
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        if let Some(limit) = self.limit.get() {
            self.client_connections.set(limit.open() as i64);
            let paused = limit.paused();
            self.accept_paused
                .inc_by(paused.saturating_sub(self.accept_paused.get()));
        }
        let age = if self.connected.load(Ordering::Relaxed) {
            0.0
        } else {
            let last = self.last_contact_ms.load(Ordering::Relaxed);
            now_ms().saturating_sub(last) as f64 / 1000.0
        };
        self.store_sync_age.set(age);
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
