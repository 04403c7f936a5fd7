//! The admin listener (loopback by default): `/metrics` for Prometheus, `/health` for load
//! balancers (200 once the table has been loaded from the store, 503 before), and `/backends`
//! for deploys: which instances the current table serves and what is in flight on them;
//! `/snapshot`, the newest complete table for routers that start after this one
//! (`crate::sync::peers`).

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::backend;
use crate::metrics::Metrics;
use crate::sync::peers::Latest;
use crate::table::Table;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub table: Arc<ArcSwap<Table>>,
    /// The newest complete table and where it is from.
    pub latest: Arc<Latest>,
    /// This router's id (as registered under `<prefix>/routers/`).
    pub id: String,
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let uri = &session.req_header().uri;
        let (status, content_type, body) = match uri.path() {
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
            "/backends" => (
                StatusCode::OK,
                "application/json",
                self.backends(uri.query()),
            ),
            "/snapshot" => match self.latest.encode().await {
                Some(Ok(table)) => (StatusCode::OK, "application/octet-stream", table),
                Some(Err(error)) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("cannot encode the table: {error}\n").into_bytes(),
                ),
                None => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    b"no complete table yet (routes or instances still being listed)\n".to_vec(),
                ),
            },
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

impl Admin {
    /// `GET /backends[?service=NAME]`:
    /// ```json
    /// {"id": "<router>", "synced": true,
    ///  "services": {"<service>": [{"id", "addr", "in_flight"}]},
    ///  "in_flight": [{"id", "addr", "in_flight"}]}
    /// ```
    /// `services`: the instances the current table serves (of one service with `?service=`);
    /// `in_flight`: every instance with requests in flight, in the table or no longer (a
    /// removed instance lives on until its last request ends). An instance is drained from
    /// this router once it is in neither.
    fn backends(&self, query: Option<&str>) -> Vec<u8> {
        let only = query.and_then(|q| {
            q.split('&')
                .find_map(|pair| pair.strip_prefix("service="))
                .map(percent_decode)
        });
        let table = self.table.load();
        let view = |b: &backend::Backend| json!({"id": b.id, "addr": b.addr.to_string(), "in_flight": b.in_flight()});
        let mut services = BTreeMap::new();
        let mut add = |name: &str| {
            if let Some(service) = table.service(name) {
                let list: Vec<_> = service.backends().iter().map(|b| view(b)).collect();
                services.insert(name.to_owned(), list);
            }
        };
        match &only {
            Some(name) => add(name),
            None => table.service_names().for_each(|name| add(name)),
        }
        let in_flight: Vec<_> = backend::live()
            .iter()
            .filter(|b| b.in_flight() > 0)
            .map(|b| view(b))
            .collect();
        let body = json!({
            "id": self.id,
            "synced": self.metrics.synced_once(),
            "services": services,
            "in_flight": in_flight,
        });
        let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

/// `%XX` escapes decoded (service names are plain, but a client may escape anyway).
fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_escapes() {
        assert_eq!(super::percent_decode("shop-web"), "shop-web");
        assert_eq!(super::percent_decode("a%2Db%zz"), "a-b%zz");
    }
}
