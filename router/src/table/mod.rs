//! The route table: an immutable snapshot that requests read without locks, and the
//! incremental edits that build the next snapshot.
//!
//! Cloning a table is O(1) and an edit copies only what it changes, so one route change costs
//! microseconds even with a million routes: routes live in sharded copy-on-write sets
//! ([`shards`]) of pointers to one shared [`RouteEntry`] each (by id, and by domain), the other
//! maps are persistent (`imbl`). A route's service, path and certificate id are shared
//! [`Name`]s. About 250 bytes per route in all.
//!
//! Matching: the host (lower-cased, port stripped) is looked up exactly, then as a wildcard from
//! the most specific parent domain up (`*.b.example.com` before `*.example.com`), then the
//! catch-all `*`. Within a domain the longest path prefix on a `/` boundary wins.

mod bulk;
pub mod host;
mod id;
mod names;
mod shards;
pub mod snapshot;

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use flynn_store::types::{BackendProtocol, HttpRoute, HttpRouteRef, Instance, TcpRoute};
use flynn_store::Revision;
use imbl::HashMap;
use rustls::sign::CertifiedKey;

use crate::backend::{Backend, Service};
pub use bulk::Bulk;
use host::{parent_domains, HostBuf};
pub use id::RouteId;
use names::Interner;
pub use names::Name;
use shards::Shards;

/// An HTTP route as the router uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub id: RouteId,
    /// Lower-cased; `*.example.com` for wildcards, `*` for the catch-all.
    pub domain: Box<str>,
    /// Starts and ends with `/`.
    pub path: Name,
    pub service: Name,
    /// The certificate served for this route's domain over TLS (by SNI).
    pub certificate_id: Option<Name>,
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
        RouteEntry::from_ref(RouteId::new(id), &HttpRouteRef::from(&route), Name::new)
    }

    /// The same from a route read without copies ([`HttpRouteRef`]), its names made by `name`
    /// (the table's interner: one copy of each).
    fn from_ref(
        id: RouteId,
        route: &HttpRouteRef<'_>,
        mut name: impl FnMut(&str) -> Name,
    ) -> Result<RouteEntry, InvalidRoute> {
        let trimmed = route.domain.trim().trim_end_matches('.');
        if trimmed.is_empty() {
            return Err(InvalidRoute::EmptyDomain);
        }
        // A port or any other character a Host header's name part cannot hold would never match.
        let host_chars =
            |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*');
        if trimmed.len() > 253 || !trimmed.bytes().all(host_chars) {
            return Err(InvalidRoute::BadDomain(trimmed.to_ascii_lowercase()));
        }
        let domain: Box<str> = trimmed.to_ascii_lowercase().into_boxed_str();
        // One leading `*.` at most: `*.*.example.com` is refused, not keyed by `*.example.com`.
        if &*domain != "*" && domain.strip_prefix("*.").unwrap_or(&domain).contains('*') {
            return Err(InvalidRoute::BadWildcard(domain.into()));
        }
        if !route.path.starts_with('/') {
            return Err(InvalidRoute::BadPath(route.path.clone().into_owned()));
        }
        let path = if route.path.ends_with('/') {
            name(&route.path)
        } else {
            name(&format!("{}/", route.path))
        };
        if route.service.is_empty() {
            return Err(InvalidRoute::EmptyService);
        }
        Ok(RouteEntry {
            id,
            domain,
            path,
            service: name(&route.service),
            certificate_id: route
                .certificate_id
                .as_deref()
                .filter(|c| !c.is_empty())
                .map(&mut name),
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

/// A route in the set by id: keyed by its id.
#[derive(Debug, Clone)]
struct ById(Arc<RouteEntry>);

impl Borrow<RouteId> for ById {
    fn borrow(&self) -> &RouteId {
        &self.0.id
    }
}

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id.hash(state);
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

/// The routes of one domain in a set by domain, keyed by the domain (by the parent domain for
/// wildcards: `*.example.com` under `example.com`). Most domains have one route.
#[derive(Debug, Clone)]
enum ByDomain {
    One(Arc<RouteEntry>),
    /// Two or more, longest path first.
    Many(DomainRoutes),
}

impl ByDomain {
    fn routes(&self) -> &[Arc<RouteEntry>] {
        match self {
            ByDomain::One(route) => std::slice::from_ref(route),
            ByDomain::Many(routes) => routes,
        }
    }

    fn from_routes(mut routes: Vec<Arc<RouteEntry>>) -> Option<ByDomain> {
        match routes.len() {
            0 => None,
            1 => routes.pop().map(ByDomain::One),
            _ => Some(ByDomain::Many(Arc::new(routes))),
        }
    }
}

impl Borrow<str> for ByDomain {
    fn borrow(&self) -> &str {
        domain_key(self.routes().first().map_or("", |r| &*r.domain))
    }
}

/// A domain's key in its set: the domain, or the parent domain of a wildcard.
fn domain_key(domain: &str) -> &str {
    domain.strip_prefix("*.").unwrap_or(domain)
}

impl Hash for ByDomain {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Borrow::<str>::borrow(self).hash(state);
    }
}

impl PartialEq for ByDomain {
    fn eq(&self, other: &Self) -> bool {
        Borrow::<str>::borrow(self) == Borrow::<str>::borrow(other)
    }
}

impl Eq for ByDomain {}

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
    exact: Shards<str, ByDomain>,
    wildcard: Shards<str, ByDomain>,
    catch_all: DomainRoutes,
    routes: Shards<RouteId, ById>,
    /// One copy of each service name, path and certificate id.
    names: Interner,
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
        if let Some(found) = self.exact.get(host).and_then(|r| longest(r.routes(), path)) {
            return Some(found);
        }
        for parent in parent_domains(host) {
            let routes = self.wildcard.get(parent);
            if let Some(found) = routes.and_then(|r| longest(r.routes(), path)) {
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
        let with_cert = |routes: &ByDomain| {
            routes
                .routes()
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
        self.route_by_id(&RouteId::new(id))
    }

    pub fn route_by_id(&self, id: &RouteId) -> Option<&Arc<RouteEntry>> {
        self.routes.get(id).map(|r| &r.0)
    }

    pub fn route_count(&self) -> usize {
        self.routes.len() + self.tcp_routes.len()
    }

    pub fn instance_count(&self) -> usize {
        self.instance_count
    }

    /// The ids of every route, HTTP and TCP.
    pub fn route_ids(&self) -> impl Iterator<Item = RouteId> + '_ {
        self.routes
            .iter()
            .map(|r| r.0.id.clone())
            .chain(self.tcp_routes.keys().map(|id| RouteId::new(id)))
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
    pub fn upsert_route(&mut self, mut route: RouteEntry) {
        if self.route_by_id(&route.id).map(|r| r.as_ref()) == Some(&route) {
            return;
        }
        route.path = self.names.intern(&route.path);
        route.service = self.names.intern(&route.service);
        route.certificate_id = route.certificate_id.map(|c| self.names.intern(&c));
        self.insert_route(route);
    }

    /// Adds or replaces an HTTP route read from the store (`id`: the one in its key), its
    /// names shared without copies.
    pub fn upsert_stored(
        &mut self,
        id: RouteId,
        route: &HttpRouteRef<'_>,
    ) -> Result<(), InvalidRoute> {
        let names = &self.names;
        let route = RouteEntry::from_ref(id, route, |text| names.intern_str(text))?;
        match self.route_by_id(&route.id) {
            Some(old) if **old == route => {}
            Some(_) => self.insert_route(route),
            None => self.insert_new(route),
        }
        Ok(())
    }

    /// Adds `route` (its names interned), replacing the one with its id.
    fn insert_route(&mut self, route: RouteEntry) {
        self.remove_by_id(&route.id);
        self.insert_new(route);
    }

    /// Adds `route` (its names interned), no HTTP route having its id.
    fn insert_new(&mut self, route: RouteEntry) {
        if !self.tcp_routes.is_empty() {
            route.id.with_str(|id| self.tcp_routes.remove(id));
        }
        let route = Arc::new(route);
        self.routes.insert(ById(route.clone()));
        let domain = route.domain.clone();
        self.edit_domain(&domain, |routes| {
            routes.push(route);
            sort_routes(routes);
        });
    }

    /// Removes the route with that id; false when there was none.
    pub fn remove_route(&mut self, id: &str) -> bool {
        if !self.tcp_routes.is_empty() && self.tcp_routes.remove(id).is_some() {
            return true;
        }
        self.remove_by_id(&RouteId::new(id))
    }

    /// Removes the HTTP route with that id; false when there was none.
    fn remove_by_id(&mut self, id: &RouteId) -> bool {
        let Some(ById(old)) = self.routes.remove(id) else {
            return false;
        };
        self.edit_domain(&old.domain, |routes| routes.retain(|r| r.id != *id));
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
        let backend = Backend::tracked(id.to_owned(), instance.addr, create_revision);
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
        let mut routes: Vec<_> = map
            .get(key)
            .map(|r| r.routes().to_vec())
            .unwrap_or_default();
        edit(&mut routes);
        match ByDomain::from_routes(routes) {
            Some(routes) => {
                map.insert(routes);
            }
            None => {
                map.remove(key);
            }
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

/// A domain's routes in the order they are matched: longest path first; ties broken by id so
/// the order is stable.
fn sort_routes(routes: &mut [Arc<RouteEntry>]) {
    routes.sort_by(|a, b| b.path.len().cmp(&a.path.len()).then(a.id.cmp(&b.id)));
}

/// Runs `work` on `items` split into `threads` runs of neighbours, one thread each; the
/// results in the order of the runs, or the panic of a thread that panicked.
fn in_parallel<I: Send, O: Send>(
    items: Vec<I>,
    threads: usize,
    work: impl Fn(Vec<I>) -> O + Sync,
) -> std::thread::Result<Vec<O>> {
    let threads = threads.clamp(1, items.len().max(1));
    let per = items.len().div_ceil(threads).max(1);
    let mut runs = Vec::with_capacity(threads);
    let mut items = items.into_iter();
    loop {
        let run: Vec<I> = items.by_ref().take(per).collect();
        if run.is_empty() {
            break;
        }
        runs.push(run);
    }
    if runs.len() <= 1 {
        return Ok(runs.into_iter().map(&work).collect());
    }
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = runs
            .into_iter()
            .map(|run| scope.spawn(move || work(run)))
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    })
}

fn longest<'t>(routes: &'t [Arc<RouteEntry>], path: &[u8]) -> Option<&'t Arc<RouteEntry>> {
    routes.iter().find(|r| r.matches_path(path))
}

#[cfg(test)]
mod tests;
