//! What becomes of a request, decided once for both HTTP engines: the router's own answer, a
//! service to forward it to, or (the fast path only) pingora's proxy for the rest of the
//! connection. Both engines call [`plan`] with what they parsed of the request and the current
//! table snapshot, so a request is routed, refused or answered the same whichever engine has it.

use std::sync::Arc;

use flynn_store::types::BackendProtocol;

use crate::backend::Service;
use crate::table::{RouteEntry, Table};

/// Which engine asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The router's HTTP/1.1 loop (`proxy::h1`): it can hand a request over to pingora.
    FastPath,
    /// pingora's proxy: it serves everything it is given.
    Pingora,
}

/// What the engine parsed of a request that the plan depends on.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'r> {
    /// The authority of an absolute-form target, else the Host header as sent (may be empty).
    pub host: &'r [u8],
    /// The request target's path and query as sent.
    pub path: &'r [u8],
    /// A body follows the head (a Content-Length above 0, or chunked).
    pub body: bool,
}

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
    /// The fast path gives the connection to pingora's proxy, which plans it again: routes to
    /// HTTP/2 backends, and answers to requests with a body to read past first.
    HandOver,
}

/// The plan for a request with `facts` by `table`, for `engine`.
pub fn plan(table: &Table, facts: &Facts, engine: Engine) -> Plan {
    let decided = match table.lookup(facts.host, facts.path) {
        None => Plan::Answer(404),
        Some(route) => match table.service(&route.service).filter(|s| !s.is_empty()) {
            None => Plan::Answer(503),
            Some(service) => Plan::Forward {
                route: route.clone(),
                service: service.clone(),
            },
        },
    };
    if engine == Engine::Pingora {
        return decided;
    }
    match decided {
        // The fast path sends HTTP/1 only; it would have to read past a body it does not
        // forward, which pingora does.
        Plan::Forward { ref route, .. } if route.backend_protocol != BackendProtocol::Http1 => {
            Plan::HandOver
        }
        Plan::Answer(_) if facts.body => Plan::HandOver,
        decided => decided,
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

    fn facts<'r>(host: &'r str, body: bool) -> Facts<'r> {
        Facts {
            host: host.as_bytes(),
            path: b"/x",
            body,
        }
    }

    #[test]
    fn both_engines_route_and_answer_alike() {
        let table = table();
        for engine in [Engine::FastPath, Engine::Pingora] {
            let plan = |host, body| plan(&table, &facts(host, body), engine);
            assert!(
                matches!(plan("a.test", false), Plan::Forward { ref service, .. }
                if service.backends().len() == 1)
            );
            assert!(matches!(plan("A.TEST:8080", true), Plan::Forward { .. }));
            assert!(matches!(plan("nowhere.test", false), Plan::Answer(404)));
            assert!(matches!(plan("", false), Plan::Answer(404)));
            assert!(matches!(plan("empty.test", false), Plan::Answer(503)));
        }
    }

    #[test]
    fn only_the_fast_path_hands_over() {
        let table = table();
        let fast = |host, body| plan(&table, &facts(host, body), Engine::FastPath);
        assert!(matches!(fast("grpc.test", false), Plan::HandOver));
        assert!(matches!(fast("nowhere.test", true), Plan::HandOver));
        assert!(matches!(fast("empty.test", true), Plan::HandOver));
        let pingora = |host| plan(&table, &facts(host, true), Engine::Pingora);
        assert!(matches!(pingora("grpc.test"), Plan::Forward { .. }));
        assert!(matches!(pingora("nowhere.test"), Plan::Answer(404)));
    }
}
