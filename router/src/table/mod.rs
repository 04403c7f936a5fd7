//! The route table: an immutable snapshot that requests read without locks, and the
//! incremental edits that build the next snapshot.
//!
//! Maps are persistent (`imbl`): cloning a table is O(1) and an edit copies only the path to the
//! changed entry, so one route change costs microseconds even with 100k routes.
//!
//! Matching: the host (lower-cased, port stripped) is looked up exactly, then as a wildcard from
//! the most specific parent domain up (`*.b.example.com` before `*.example.com`), then the
//! catch-all `*`. Within a domain the longest path prefix on a `/` boundary wins.

pub mod host;

use std::sync::Arc;

use flynn_store::types::{BackendProtocol, HttpRoute, Instance, TcpRoute};
use flynn_store::Revision;
use imbl::HashMap;
use rustls::sign::CertifiedKey;

use crate::backend::{Backend, Service};
use host::{parent_domains, HostBuf};

/// An HTTP route as the router uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub id: String,
    /// Lower-cased; `*.example.com` for wildcards, `*` for the catch-all.
    pub domain: String,
    /// Starts and ends with `/`.
    pub path: String,
    pub service: String,
    /// The certificate served for this route's domain over TLS (by SNI).
    pub certificate_id: Option<String>,
    pub sticky: bool,
    pub leader: bool,
    pub drain_backends: bool,
    pub disable_keep_alives: bool,
    pub backend_protocol: BackendProtocol,
}

/// Why a route from the store was not taken into the table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidRoute {
    #[error("empty domain")]
    EmptyDomain,
    #[error("domain {0:?} is not a host name (letters, digits, `-`, `_`, `.`; 253 characters at most; no port)")]
    BadDomain(String),
    #[error("domain {0:?} has a wildcard that is not a leading `*.`")]
    BadWildcard(String),
    #[error("path {0:?} does not start with `/`")]
    BadPath(String),
    #[error("empty service")]
    EmptyService,
}

impl RouteEntry {
    /// Validates and normalises a stored route (`id` is the one in its key).
    pub fn from_stored(id: &str, route: HttpRoute) -> Result<RouteEntry, InvalidRoute> {
        let domain = route
            .domain
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if domain.is_empty() {
            return Err(InvalidRoute::EmptyDomain);
        }
        // A port or any other character a Host header's name part cannot hold would never match.
        let host_chars =
            |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*');
        if domain.len() > 253 || !domain.bytes().all(host_chars) {
            return Err(InvalidRoute::BadDomain(domain));
        }
        // One leading `*.` at most: `*.*.example.com` is refused, not keyed by `*.example.com`.
        if domain != "*" && domain.strip_prefix("*.").unwrap_or(&domain).contains('*') {
            return Err(InvalidRoute::BadWildcard(domain));
        }
        if !route.path.starts_with('/') {
            return Err(InvalidRoute::BadPath(route.path));
        }
        let mut path = route.path;
        if !path.ends_with('/') {
            path.push('/');
        }
        if route.service.is_empty() {
            return Err(InvalidRoute::EmptyService);
        }
        Ok(RouteEntry {
            id: id.to_owned(),
            domain,
            path,
            service: route.service,
            certificate_id: route.certificate_id.filter(|c| !c.is_empty()),
            sticky: route.sticky,
            leader: route.leader,
            drain_backends: route.drain_backends,
            disable_keep_alives: route.disable_keep_alives,
            backend_protocol: route.backend_protocol,
        })
    }

    /// Whether the request path (without the query) falls under this route's prefix.
    fn matches_path(&self, path: &[u8]) -> bool {
        let prefix = self.path.as_bytes();
        // `/api/` also takes `/api` itself.
        path.starts_with(prefix) || (path.len() + 1 == prefix.len() && prefix.starts_with(path))
    }
}

/// The routes of one domain, longest path first.
type DomainRoutes = Arc<Vec<Arc<RouteEntry>>>;

/// Where a domain's routes are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DomainKind<'d> {
    Exact(&'d str),
    /// Keyed by the parent domain: `*.example.com` → `example.com`.
    Wildcard(&'d str),
    CatchAll,
}

fn kind(domain: &str) -> DomainKind<'_> {
    if domain == "*" {
        DomainKind::CatchAll
    } else if let Some(parent) = domain.strip_prefix("*.") {
        DomainKind::Wildcard(parent)
    } else {
        DomainKind::Exact(domain)
    }
}

/// One immutable version of everything the HTTP data path needs.
#[derive(Debug, Clone, Default)]
pub struct Table {
    exact: HashMap<String, DomainRoutes>,
    wildcard: HashMap<String, DomainRoutes>,
    catch_all: DomainRoutes,
    routes: HashMap<String, Arc<RouteEntry>>,
    services: HashMap<String, Arc<Service>>,
    instance_count: usize,
    /// Certificates by id, parsed and checked (`crate::tls::certs`).
    certs: HashMap<String, Arc<CertifiedKey>>,
    /// TCP routes by id; `crate::tcp` opens a listener for each.
    tcp_routes: HashMap<String, Arc<TcpRoute>>,
}

impl Table {
    /// The route for a request's Host header and path (raw bytes as received).
    pub fn lookup(&self, host: &[u8], path: &[u8]) -> Option<&Arc<RouteEntry>> {
        let host = HostBuf::new(host)?;
        let host = host.as_str();
        let path = path_only(path);
        if let Some(found) = self.exact.get(host).and_then(|r| longest(r, path)) {
            return Some(found);
        }
        for parent in parent_domains(host) {
            if let Some(found) = self.wildcard.get(parent).and_then(|r| longest(r, path)) {
                return Some(found);
            }
        }
        longest(&self.catch_all, path)
    }

    /// The certificate for a TLS server name: that of a route on the exact domain, then on the
    /// most specific wildcard domain; None when no route there names a loaded certificate.
    pub fn certificate_for(&self, server_name: &str) -> Option<&Arc<CertifiedKey>> {
        let host = HostBuf::new(server_name.as_bytes())?;
        let host = host.as_str();
        let with_cert = |routes: &DomainRoutes| {
            routes
                .iter()
                .filter_map(|r| r.certificate_id.as_deref())
                .find_map(|id| self.certs.get(id))
        };
        if let Some(cert) = self.exact.get(host).and_then(with_cert) {
            return Some(cert);
        }
        let found = parent_domains(host).find_map(|p| self.wildcard.get(p).and_then(with_cert));
        found
    }

    pub fn certificate(&self, id: &str) -> Option<&Arc<CertifiedKey>> {
        self.certs.get(id)
    }

    pub fn certificate_ids(&self) -> impl Iterator<Item = &String> {
        self.certs.keys()
    }

    pub fn certificate_count(&self) -> usize {
        self.certs.len()
    }

    /// Adds or replaces a certificate.
    pub fn upsert_certificate(&mut self, id: &str, cert: Arc<CertifiedKey>) {
        self.certs.insert(id.to_owned(), cert);
    }

    pub fn remove_certificate(&mut self, id: &str) -> bool {
        self.certs.remove(id).is_some()
    }

    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.get(name)
    }

    pub fn route(&self, id: &str) -> Option<&Arc<RouteEntry>> {
        self.routes.get(id)
    }

    pub fn route_count(&self) -> usize {
        self.routes.len() + self.tcp_routes.len()
    }

    pub fn instance_count(&self) -> usize {
        self.instance_count
    }

    /// The ids of every route, HTTP and TCP.
    pub fn route_ids(&self) -> impl Iterator<Item = &String> {
        self.routes.keys().chain(self.tcp_routes.keys())
    }

    pub fn service_names(&self) -> impl Iterator<Item = &String> {
        self.services.keys()
    }

    pub fn tcp_routes(&self) -> impl Iterator<Item = &Arc<TcpRoute>> {
        self.tcp_routes.values()
    }

    /// Adds or replaces a TCP route (and drops an HTTP route that had the same id).
    pub fn upsert_tcp_route(&mut self, route: TcpRoute) {
        self.remove_route(&route.id);
        self.tcp_routes.insert(route.id.clone(), Arc::new(route));
    }

    /// Adds a route, or replaces the route with the same id.
    pub fn upsert_route(&mut self, route: RouteEntry) {
        if self.routes.get(&route.id).map(|r| r.as_ref()) == Some(&route) {
            return;
        }
        self.remove_route(&route.id);
        let route = Arc::new(route);
        self.routes.insert(route.id.clone(), route.clone());
        self.edit_domain(&route.domain.clone(), |routes| {
            routes.push(route);
            // Longest path first; ties broken by id so the order is stable.
            routes.sort_by(|a, b| b.path.len().cmp(&a.path.len()).then(a.id.cmp(&b.id)));
        });
    }

    /// Removes the route with that id; false when there was none.
    pub fn remove_route(&mut self, id: &str) -> bool {
        if self.tcp_routes.remove(id).is_some() {
            return true;
        }
        let Some(old) = self.routes.remove(id) else {
            return false;
        };
        self.edit_domain(&old.domain, |routes| routes.retain(|r| r.id != id));
        true
    }

    /// Adds an instance to its service, or replaces the one with the same id.
    pub fn upsert_instance(
        &mut self,
        service: &str,
        id: &str,
        instance: &Instance,
        create_revision: Revision,
    ) {
        let current = self.services.get(service).cloned().unwrap_or_default();
        if let Some(same) = current.backends().iter().find(|b| b.id == id) {
            if same.addr == instance.addr && same.create_revision == create_revision {
                return;
            }
        } else {
            self.instance_count += 1;
        }
        let backend = Arc::new(Backend::new(id.to_owned(), instance.addr, create_revision));
        self.services
            .insert(service.to_owned(), Arc::new(current.with(backend)));
    }

    /// Removes an instance; false when there was none.
    pub fn remove_instance(&mut self, service: &str, id: &str) -> bool {
        let Some(current) = self.services.get(service).cloned() else {
            return false;
        };
        if !current.backends().iter().any(|b| b.id == id) {
            return false;
        }
        self.instance_count -= 1;
        let remaining = current.without(id);
        if remaining.is_empty() {
            self.services.remove(service);
        } else {
            self.services
                .insert(service.to_owned(), Arc::new(remaining));
        }
        true
    }

    fn edit_domain(&mut self, domain: &str, edit: impl FnOnce(&mut Vec<Arc<RouteEntry>>)) {
        let (map, key) = match kind(domain) {
            DomainKind::CatchAll => {
                edit(Arc::make_mut(&mut self.catch_all));
                return;
            }
            DomainKind::Exact(d) => (&mut self.exact, d),
            DomainKind::Wildcard(d) => (&mut self.wildcard, d),
        };
        let mut routes: Vec<_> = map.get(key).map(|r| r.to_vec()).unwrap_or_default();
        edit(&mut routes);
        if routes.is_empty() {
            map.remove(key);
        } else {
            map.insert(key.to_owned(), Arc::new(routes));
        }
    }
}

/// The request target up to the query string.
fn path_only(target: &[u8]) -> &[u8] {
    match target.iter().position(|&b| b == b'?' || b == b'#') {
        Some(end) => &target[..end],
        None => target,
    }
}

fn longest<'t>(routes: &'t [Arc<RouteEntry>], path: &[u8]) -> Option<&'t Arc<RouteEntry>> {
    routes.iter().find(|r| r.matches_path(path))
}

#[cfg(test)]
mod tests;
