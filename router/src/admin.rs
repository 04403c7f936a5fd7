//! The admin listener (loopback by default): `/metrics` for Prometheus and `/health` for load
//! balancers (200 once the table has been loaded from the store, 503 before).

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::metrics::Metrics;

pub struct Admin {
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let (status, content_type, body) = match session.req_header().uri.path() {
            "/metrics" => (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render(),
            ),
            "/health" if self.metrics.synced_once() => {
                (StatusCode::OK, "text/plain", b"ok\n".to_vec())
            }
            "/health" => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                b"routes not loaded from the store yet\n".to_vec(),
            ),
            _ => (StatusCode::NOT_FOUND, "text/plain", b"Not Found\n".to_vec()),
        };
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("content-length", body.len())
            .body(body)
            .unwrap_or_default()
    }
}
