//! Where things live in the store. Every key is under a prefix (default `/flynn`):
//!
//! ```text
//! <prefix>/routes/<id>                    Route
//! <prefix>/certs/<id>                     Certificate
//! <prefix>/services/<service>/<instance>  Instance (bound to a lease)
//! <prefix>/tls/ticket-keys                the routers' TLS session ticket keys
//! ```

/// The default prefix of every Flynn key.
pub const DEFAULT_PREFIX: &str = "/flynn";

/// Where a listing of the routes splits them into parts read side by side
/// ([`crate::mirror::Options::splits`]): ids are `http-<uuid>` or `tcp-<uuid>`, so by the
/// uuid's first hex digit, with TCP routes (and any other id) in parts of their own.
pub const ROUTE_SPLITS: &[&str] = &[
    "http-1", "http-2", "http-3", "http-4", "http-5", "http-6", "http-7", "http-8", "http-9",
    "http-a", "http-b", "http-c", "http-d", "http-e", "http-f", "tcp-",
];

/// Builds and parses keys under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new(DEFAULT_PREFIX)
    }
}

impl Keys {
    /// `prefix` is used without its trailing slashes: `/flynn/` and `/flynn` are the same.
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key sealing routers' sticky-session cookies (64 hex digits), shared by every router.
    pub fn cookie_key(&self) -> String {
        format!("{}/router/cookie-key", self.prefix)
    }

    /// The keys sealing TLS session tickets, shared (and rotated) by every router: JSON
    /// `{"keys": [{"name", "key", "created"}, ...]}`, newest first (router/src/tls/tickets/).
    pub fn tls_ticket_keys(&self) -> String {
        format!("{}/tls/ticket-keys", self.prefix)
    }

    pub fn routes(&self) -> String {
        format!("{}/routes/", self.prefix)
    }

    pub fn route(&self, id: &str) -> String {
        format!("{}/routes/{id}", self.prefix)
    }

    pub fn certs(&self) -> String {
        format!("{}/certs/", self.prefix)
    }

    pub fn cert(&self, id: &str) -> String {
        format!("{}/certs/{id}", self.prefix)
    }

    pub fn services(&self) -> String {
        format!("{}/services/", self.prefix)
    }

    pub fn service(&self, service: &str) -> String {
        format!("{}/services/{service}/", self.prefix)
    }

    pub fn instance(&self, service: &str, instance: &str) -> String {
        format!("{}/services/{service}/{instance}", self.prefix)
    }

    /// The id in a `<prefix>/routes/<id>` key.
    pub fn parse_route<'k>(&self, key: &'k str) -> Option<&'k str> {
        self.leaf(key, "/routes/")
    }

    /// The id in a `<prefix>/certs/<id>` key.
    pub fn parse_cert<'k>(&self, key: &'k str) -> Option<&'k str> {
        self.leaf(key, "/certs/")
    }

    /// The service and instance id in a `<prefix>/services/<service>/<instance>` key.
    pub fn parse_instance<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("/services/")?;
        let (service, instance) = rest.split_once('/')?;
        if service.is_empty() || instance.is_empty() || instance.contains('/') {
            return None;
        }
        Some((service, instance))
    }

    fn leaf<'k>(&self, key: &'k str, folder: &str) -> Option<&'k str> {
        let id = key.strip_prefix(&self.prefix)?.strip_prefix(folder)?;
        (!id.is_empty() && !id.contains('/')).then_some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_keys() {
        let keys = Keys::new("/flynn/");
        assert_eq!(keys.route("http-1"), "/flynn/routes/http-1");
        assert_eq!(keys.parse_route("/flynn/routes/http-1"), Some("http-1"));
        assert_eq!(keys.parse_route("/flynn/routes/"), None);
        assert_eq!(keys.parse_route("/flynn/routes/a/b"), None);
        assert_eq!(keys.parse_route("/other/routes/a"), None);
        assert_eq!(keys.parse_cert(&keys.cert("c1")), Some("c1"));
        assert_eq!(
            keys.parse_instance(&keys.instance("web", "i-1")),
            Some(("web", "i-1"))
        );
        assert_eq!(keys.parse_instance("/flynn/services/web/"), None);
        assert_eq!(keys.parse_instance("/flynn/services/web"), None);
        assert_eq!(keys.parse_instance("/flynn/services//x"), None);
    }
}
