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
/// uuid's first two hex digits, with TCP routes (and any other id) in parts of their own.
/// etcd 3.4 walks every key of a request's range (to count them), however few it returns:
/// with a million routes each part is about a page, read in one request that walks only the
/// keys it returns (16 parts walked 3.1 keys per key listed). A smaller store merges parts
/// (`mirror`: as many as the first part says make a page).
pub const ROUTE_SPLITS: &[&str] = &[
    "http-01", "http-02", "http-03", "http-04", "http-05", "http-06", "http-07", "http-08",
    "http-09", "http-0a", "http-0b", "http-0c", "http-0d", "http-0e", "http-0f", "http-10",
    "http-11", "http-12", "http-13", "http-14", "http-15", "http-16", "http-17", "http-18",
    "http-19", "http-1a", "http-1b", "http-1c", "http-1d", "http-1e", "http-1f", "http-20",
    "http-21", "http-22", "http-23", "http-24", "http-25", "http-26", "http-27", "http-28",
    "http-29", "http-2a", "http-2b", "http-2c", "http-2d", "http-2e", "http-2f", "http-30",
    "http-31", "http-32", "http-33", "http-34", "http-35", "http-36", "http-37", "http-38",
    "http-39", "http-3a", "http-3b", "http-3c", "http-3d", "http-3e", "http-3f", "http-40",
    "http-41", "http-42", "http-43", "http-44", "http-45", "http-46", "http-47", "http-48",
    "http-49", "http-4a", "http-4b", "http-4c", "http-4d", "http-4e", "http-4f", "http-50",
    "http-51", "http-52", "http-53", "http-54", "http-55", "http-56", "http-57", "http-58",
    "http-59", "http-5a", "http-5b", "http-5c", "http-5d", "http-5e", "http-5f", "http-60",
    "http-61", "http-62", "http-63", "http-64", "http-65", "http-66", "http-67", "http-68",
    "http-69", "http-6a", "http-6b", "http-6c", "http-6d", "http-6e", "http-6f", "http-70",
    "http-71", "http-72", "http-73", "http-74", "http-75", "http-76", "http-77", "http-78",
    "http-79", "http-7a", "http-7b", "http-7c", "http-7d", "http-7e", "http-7f", "http-80",
    "http-81", "http-82", "http-83", "http-84", "http-85", "http-86", "http-87", "http-88",
    "http-89", "http-8a", "http-8b", "http-8c", "http-8d", "http-8e", "http-8f", "http-90",
    "http-91", "http-92", "http-93", "http-94", "http-95", "http-96", "http-97", "http-98",
    "http-99", "http-9a", "http-9b", "http-9c", "http-9d", "http-9e", "http-9f", "http-a0",
    "http-a1", "http-a2", "http-a3", "http-a4", "http-a5", "http-a6", "http-a7", "http-a8",
    "http-a9", "http-aa", "http-ab", "http-ac", "http-ad", "http-ae", "http-af", "http-b0",
    "http-b1", "http-b2", "http-b3", "http-b4", "http-b5", "http-b6", "http-b7", "http-b8",
    "http-b9", "http-ba", "http-bb", "http-bc", "http-bd", "http-be", "http-bf", "http-c0",
    "http-c1", "http-c2", "http-c3", "http-c4", "http-c5", "http-c6", "http-c7", "http-c8",
    "http-c9", "http-ca", "http-cb", "http-cc", "http-cd", "http-ce", "http-cf", "http-d0",
    "http-d1", "http-d2", "http-d3", "http-d4", "http-d5", "http-d6", "http-d7", "http-d8",
    "http-d9", "http-da", "http-db", "http-dc", "http-dd", "http-de", "http-df", "http-e0",
    "http-e1", "http-e2", "http-e3", "http-e4", "http-e5", "http-e6", "http-e7", "http-e8",
    "http-e9", "http-ea", "http-eb", "http-ec", "http-ed", "http-ee", "http-ef", "http-f0",
    "http-f1", "http-f2", "http-f3", "http-f4", "http-f5", "http-f6", "http-f7", "http-f8",
    "http-f9", "http-fa", "http-fb", "http-fc", "http-fd", "http-fe", "http-ff", "tcp-",
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
