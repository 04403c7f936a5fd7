//! What becomes of a request, decided once for both HTTP engines: the router's own answer, or
//! a service to forward it to. Both engines call [`plan`] with the host and path they parsed
//! and the current table snapshot, so a request is routed or answered the same whichever engine
//! has it; the fast path may instead give the request to pingora's proxy
//! ([`Plan::hands_over`]), which plans it again.

use std::sync::Arc;

use flynn_store::types::BackendProtocol;

use crate::backend::Service;
use crate::table::{RouteEntry, Table};

/// What to do with a request.
#[derive(Debug)]
pub enum Plan {
    /// The router's own answer with this status (404: no route; 503: no live instance), from
    /// `proxy::responses`.
    Answer(u16),
    /// Forward to an instance of `service` (by [`crate::backend::Attempts`]).
    Forward {
        route: Arc<RouteEntry>,
        service: Arc<Service>,
    },
}

/// The plan by `table` for a request to `host` (the authority of an absolute-form target, else
/// the Host header as sent; may be empty) and `path` (the target's path and query as sent).
pub fn plan(table: &Table, host: &[u8], path: &[u8]) -> Plan {
    match table.lookup(host, path) {
        None => Plan::Answer(404),
        Some(route) => match table.service(&route.service).filter(|s| !s.is_empty()) {
            None => Plan::Answer(503),
            Some(service) => Plan::Forward {
                route: route.clone(),
                service: service.clone(),
            },
        },
    }
}

impl Plan {
    /// Whether the fast path gives the request (and the rest of its connection) to pingora's
    /// proxy rather than carry the plan out itself: it sends HTTP/1 only, and it would have to
    /// read past a `body` it does not forward, which pingora does.
    pub fn hands_over(&self, body: bool) -> bool {
        match self {
            Plan::Forward { route, .. } => route.backend_protocol != BackendProtocol::Http1,
            Plan::Answer(_) => body,
        }
    }
}

#[cfg(test)]
mod tests {
    use flynn_store::types::{HttpRoute, Instance};

    use super::*;

    fn table() -> Table {
        let mut table = Table::default();
        for (id, domain, service, protocol) in [
            ("http-1", "a.test", "web", "http1"),
            ("http-2", "empty.test", "nobody", "http1"),
            ("http-3", "grpc.test", "grpc", "h2c"),
        ] {
            let stored: HttpRoute = serde_json::from_value(serde_json::json!({
                "id": id, "type": "http", "domain": domain, "path": "/", "service": service,
                "backend_protocol": protocol,
            }))
            .expect("a route");
            table.upsert_route(RouteEntry::from_stored(id, stored).expect("valid"));
        }
        for service in ["web", "grpc"] {
            let instance: Instance = serde_json::from_value(serde_json::json!({
                "id": "i1", "addr": "127.0.0.1:1",
            }))
            .expect("an instance");
            table.upsert_instance(service, "i1", &instance, 1);
        }
        table
    }

    #[test]
    fn both_engines_route_and_answer_alike() {
        let table = table();
        // The fast path carries these out itself (it hands none of them over); pingora's proxy
        // gets the same plans.
        for (host, body) in [
            ("a.test", false),
            ("A.TEST:8080", true),
            ("nowhere.test", false),
            ("", false),
            ("empty.test", false),
        ] {
            assert!(
                !plan(&table, host.as_bytes(), b"/x").hands_over(body),
                "{host}"
            );
        }
        let plan = |host: &str| plan(&table, host.as_bytes(), b"/x");
        assert!(matches!(plan("a.test"), Plan::Forward { ref service, .. }
            if service.backends().len() == 1));
        assert!(matches!(plan("A.TEST:8080"), Plan::Forward { .. }));
        assert!(matches!(plan("nowhere.test"), Plan::Answer(404)));
        assert!(matches!(plan(""), Plan::Answer(404)));
        assert!(matches!(plan("empty.test"), Plan::Answer(503)));
    }

    #[test]
    fn only_the_fast_path_hands_over() {
        let table = table();
        let plan = |host: &str| plan(&table, host.as_bytes(), b"/x");
        assert!(plan("grpc.test").hands_over(false));
        assert!(plan("nowhere.test").hands_over(true));
        assert!(plan("empty.test").hands_over(true));
        // pingora's proxy carries out the plans the fast path hands over.
        assert!(matches!(plan("grpc.test"), Plan::Forward { .. }));
        assert!(matches!(plan("nowhere.test"), Plan::Answer(404)));
    }
}
