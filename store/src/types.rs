//! The JSON values stored under the [`crate::schema`] keys. Unknown fields are ignored so that a
//! newer controller never breaks an older router.

use std::borrow::Cow;
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

impl HttpRoute {
    /// A route to `service` for `domain` and `path`, every other field as a stored route that
    /// leaves it out reads (what `flynn route add` writes with no options).
    pub fn new(id: &str, domain: &str, path: &str, service: &str) -> HttpRoute {
        HttpRoute {
            id: id.to_owned(),
            domain: domain.to_owned(),
            path: path.to_owned(),
            service: service.to_owned(),
            certificate_id: None,
            sticky: false,
            leader: false,
            drain_backends: default_true(),
            disable_keep_alives: false,
            backend_protocol: BackendProtocol::default(),
            app_id: None,
        }
    }
}

/// An HTTP route read without copying its strings where the JSON has no escapes: the fields,
/// defaults and errors of [`HttpRoute`], for the router's listing of many routes.
/// [`HttpRouteRef::parse`] takes a value only when it is an HTTP route that [`Route`] reads
/// the same way; anything else (a TCP route, an error) is for [`Route`] to read.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct HttpRouteRef<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(borrow)]
    pub domain: Cow<'a, str>,
    #[serde(default = "default_path_ref", borrow)]
    pub path: Cow<'a, str>,
    #[serde(borrow)]
    pub service: Cow<'a, str>,
    #[serde(default, borrow)]
    pub certificate_id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub sticky: bool,
    #[serde(default)]
    pub leader: bool,
    #[serde(default = "default_true")]
    pub drain_backends: bool,
    #[serde(default)]
    pub disable_keep_alives: bool,
    #[serde(default)]
    pub backend_protocol: BackendProtocol,
    #[serde(default, borrow)]
    pub app_id: Option<Cow<'a, str>>,
}

fn default_path_ref() -> Cow<'static, str> {
    Cow::Borrowed("/")
}

impl<'a> HttpRouteRef<'a> {
    /// The HTTP route in `json`; None when it is not one (or not valid).
    pub fn parse(json: &'a [u8]) -> Option<HttpRouteRef<'a>> {
        serde_json::from_slice::<HttpRouteRef<'a>>(json)
            .ok()
            .filter(|r| r.kind == "http")
    }
}

impl<'a> From<&'a HttpRoute> for HttpRouteRef<'a> {
    /// The same route, borrowed.
    fn from(route: &'a HttpRoute) -> Self {
        HttpRouteRef {
            kind: Cow::Borrowed("http"),
            id: Cow::Borrowed(&route.id),
            domain: Cow::Borrowed(&route.domain),
            path: Cow::Borrowed(&route.path),
            service: Cow::Borrowed(&route.service),
            certificate_id: route.certificate_id.as_deref().map(Cow::Borrowed),
            sticky: route.sticky,
            leader: route.leader,
            drain_backends: route.drain_backends,
            disable_keep_alives: route.disable_keep_alives,
            backend_protocol: route.backend_protocol,
            app_id: route.app_id.as_deref().map(Cow::Borrowed),
        }
    }
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
        // HttpRoute::new gives the fields it is not told what a stored route leaves out gets.
        assert_eq!(r, HttpRoute::new("http-1", "example.com", "/", "web"));
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
    fn http_route_ref_reads_what_route_reads() {
        let cases = [
            r#"{"id":"http-1","type":"http","domain":"example.com","service":"web"}"#,
            r#"{"id":"http-1","type":"http","domain":"a.com","path":"/x","service":"w","certificate_id":"c","sticky":true,"leader":true,"drain_backends":false,"disable_keep_alives":true,"backend_protocol":"h2c","app_id":"a","port":"not a port"}"#,
            r#"{"id":"h","type":"http","domain":"\u0061.com","service":"w\n","certificate_id":null,"app_id":null}"#,
            r#"{"service":"w","domain":"a.com","type":"http","id":"x","future":{"a":[1]}}"#,
            r#"{"id":"tcp-1","type":"tcp","port":3000,"service":"db"}"#,
            r#"{"id":"http-1","type":"http","domain":"a.com"}"#,
            r#"{"id":"http-1","type":"http","domain":"a.com","service":"w","sticky":"yes"}"#,
            r#"{"id":"http-1","type":"http","domain":"a.com","service":"w","app_id":5}"#,
            r#"{"id":"http-1","type":"http","domain":"a.com","service":"w","backend_protocol":"h3"}"#,
            r#"{"id":"http-1","type":"http","type":"http","domain":"a.com","service":"w"}"#,
            r#"{"id":"http-1","type":"HTTP","domain":"a.com","service":"w"}"#,
            r#"{"id":1,"type":"http","domain":"a.com","service":"w"}"#,
            r#"{"type":"http","domain":"a.com","service":"w"}"#,
            r#"["http"]"#,
            r#"{"id":"http-1","type":"http","domain":"a.com","service":"w"} trailing"#,
        ];
        for (i, json) in cases.into_iter().enumerate() {
            let slow = match serde_json::from_str::<Route>(json) {
                Ok(Route::Http(r)) => Some(r),
                _ => None,
            };
            let fast = HttpRouteRef::parse(json.as_bytes());
            // The fast reader may leave a value to the full one, never read it differently
            // (every field compared, `type` and `id` included).
            if fast.is_some() || i < 4 {
                assert_eq!(fast, slow.as_ref().map(HttpRouteRef::from), "{json}");
            }
        }
        let plain = r#"{"id":"http-1","type":"http","domain":"example.com","service":"web"}"#;
        let borrowed = HttpRouteRef::parse(plain.as_bytes()).expect("an http route");
        assert!(matches!(borrowed.domain, Cow::Borrowed(_)));
        assert_eq!(borrowed.path, "/");
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
