//! The JSON values stored under the [`crate::schema`] keys. Unknown fields are ignored so that a
//! newer controller never breaks an older router.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A route: HTTP (by domain and path) or TCP (by port).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Route {
    Http(HttpRoute),
    Tcp(TcpRoute),
}

impl Route {
    pub fn id(&self) -> &str {
        match self {
            Route::Http(r) => &r.id,
            Route::Tcp(r) => &r.id,
        }
    }

    pub fn service(&self) -> &str {
        match self {
            Route::Http(r) => &r.service,
            Route::Tcp(r) => &r.service,
        }
    }
}

fn default_path() -> String {
    "/".to_owned()
}

fn default_true() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRoute {
    pub id: String,
    /// `example.com`, `*.example.com`, or the catch-all `*`.
    pub domain: String,
    /// A prefix on `/` boundaries, stored with a trailing slash.
    #[serde(default = "default_path")]
    pub path: String,
    pub service: String,
    #[serde(default)]
    pub certificate_id: Option<String>,
    #[serde(default)]
    pub sticky: bool,
    #[serde(default)]
    pub leader: bool,
    #[serde(default = "default_true")]
    pub drain_backends: bool,
    #[serde(default)]
    pub disable_keep_alives: bool,
    /// How the router talks to the backends: `http1` (default), or `h2c` for gRPC.
    #[serde(default)]
    pub backend_protocol: BackendProtocol,
    #[serde(default)]
    pub app_id: Option<String>,
}

/// The protocol between the router and an HTTP route's backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendProtocol {
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge, in clear text (gRPC servers inside the platform).
    H2c,
    /// HTTP/2 over TLS (ALPN h2): the backend's certificate must be valid for the request's
    /// host name and signed by a CA the router trusts (`--backend-ca`, else the system's).
    H2,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpRoute {
    pub id: String,
    pub port: u16,
    pub service: String,
    #[serde(default)]
    pub leader: bool,
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocol>,
    #[serde(default)]
    pub app_id: Option<String>,
}

/// The PROXY protocol header a TCP route sends to its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    V1,
    V2,
}

/// A live instance of a service, registered under a lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub addr: SocketAddr,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

/// A TLS certificate chain and its private key, both PEM.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub id: String,
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for Certificate {
    // Never print a private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_route_defaults_and_unknown_fields() {
        let json = r#"{"id":"http-1","type":"http","domain":"example.com","service":"web","future_field":[1,2]}"#;
        let route: Route = serde_json::from_str(json).unwrap();
        let Route::Http(r) = route else {
            panic!("not http")
        };
        assert_eq!(r.path, "/");
        assert!(r.drain_backends);
        assert!(!r.sticky && !r.leader && !r.disable_keep_alives);
    }

    #[test]
    fn tcp_route_round_trips() {
        let json = r#"{"id":"tcp-1","type":"tcp","port":3000,"service":"db","leader":true,"proxy_protocol":"v2"}"#;
        let route: Route = serde_json::from_str(json).unwrap();
        assert_eq!(
            route,
            Route::Tcp(TcpRoute {
                id: "tcp-1".into(),
                port: 3000,
                service: "db".into(),
                leader: true,
                proxy_protocol: Some(ProxyProtocol::V2),
                app_id: None,
            })
        );
        let back: Route = serde_json::from_str(&serde_json::to_string(&route).unwrap()).unwrap();
        assert_eq!(back, route);
    }

    #[test]
    fn malformed_values_are_errors() {
        assert!(serde_json::from_str::<Route>(r#"{"type":"udp","id":"x"}"#).is_err());
        assert!(serde_json::from_str::<Instance>(r#"{"id":"i","addr":"nope"}"#).is_err());
        assert!(serde_json::from_str::<Route>(
            r#"{"type":"tcp","id":"x","port":70000,"service":"s"}"#
        )
        .is_err());
    }

    #[test]
    fn certificate_debug_hides_key() {
        let c = Certificate {
            id: "c".into(),
            cert: "CERT".into(),
            key: "SECRET".into(),
        };
        assert!(!format!("{c:?}").contains("SECRET"));
    }
}
