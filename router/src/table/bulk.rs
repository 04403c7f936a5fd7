//! Routes added all at once to a table that holds none: the first listing of the store at
//! start-up (a million routes). Each route is checked and its names interned as it comes, as
//! [`Table::upsert_stored`] does, and kept by shard; [`Table::add_bulk`] then builds every
//! shard's set sized once, on a thread per CPU. Inserting them one at a time instead costs,
//! per route, a lookup by id, a copy of its domain's routes, four hashed inserts and the
//! rehashes of sets that keep growing: most of the router's CPU in such a start, taken while
//! the store is still busy sending the rest.

use std::sync::Arc;

use flynn_store::types::HttpRouteRef;

use super::shards::{self, shard_of, HashSet, Shards, SHARDS};
use super::{
    domain_key, kind, sort_routes, ByDomain, ById, DomainKind, InvalidRoute, RouteEntry, RouteId,
    Table,
};

/// Routes checked and waiting to be added by [`Table::add_bulk`].
#[derive(Debug)]
pub struct Bulk {
    /// By the shard of their id.
    by_id: Vec<Vec<Arc<RouteEntry>>>,
    /// By the shard of their domain (wildcards: of their parent domain).
    exact: Vec<Vec<Arc<RouteEntry>>>,
    wildcard: Vec<Vec<Arc<RouteEntry>>>,
    catch_all: Vec<Arc<RouteEntry>>,
}

impl Default for Bulk {
    fn default() -> Self {
        let empty = || (0..SHARDS).map(|_| Vec::new()).collect();
        Bulk {
            by_id: empty(),
            exact: empty(),
            wildcard: empty(),
            catch_all: Vec::new(),
        }
    }
}

impl Bulk {
    pub fn len(&self) -> usize {
        self.by_id.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.iter().all(Vec::is_empty)
    }

    fn push(&mut self, route: RouteEntry) {
        let route = Arc::new(route);
        let domains = match kind(&route.domain) {
            DomainKind::CatchAll => None,
            DomainKind::Exact(key) => Some((&mut self.exact, shard_of(key))),
            DomainKind::Wildcard(key) => Some((&mut self.wildcard, shard_of(key))),
        };
        match domains {
            Some((sets, i)) => sets[i].push(route.clone()),
            None => self.catch_all.push(route.clone()),
        }
        let i = shard_of(&route.id);
        self.by_id[i].push(route);
    }
}

impl Table {
    /// Checks a route read from the store (`id`: the one in its key) and keeps it in `bulk`,
    /// its names interned; the table is unchanged until [`Table::add_bulk`].
    pub fn stage(
        &self,
        bulk: &mut Bulk,
        id: RouteId,
        route: &HttpRouteRef<'_>,
    ) -> Result<(), InvalidRoute> {
        let names = &self.names;
        bulk.push(RouteEntry::from_ref(id, route, |text| {
            names.intern_str(text)
        })?);
        Ok(())
    }

    /// Adds the routes of `bulk` (each id once at most, as in a listing). Into a table with no
    /// HTTP routes every set is built at once, side by side on `threads` threads; otherwise
    /// they are upserts, one at a time.
    pub fn add_bulk(&mut self, bulk: Bulk, threads: usize) {
        if bulk.is_empty() {
            return;
        }
        // Every HTTP route is in `routes`: none there, none by domain either.
        if self.routes.len() != 0 {
            return self.add_one_by_one(bulk);
        }
        let Bulk {
            by_id,
            exact,
            wildcard,
            mut catch_all,
        } = bulk;
        let shards: Vec<_> = by_id.into_iter().zip(exact).zip(wildcard).collect();
        let built = in_parallel(shards, threads, |((ids, exact), wildcard)| {
            let mut set = shards::new_set(ids.len());
            set.extend(ids.into_iter().map(ById));
            (set, domain_set(exact), domain_set(wildcard))
        });
        let (mut ids, mut exact, mut wildcard) = (Vec::new(), Vec::new(), Vec::new());
        for (i, e, w) in built {
            ids.push(i);
            exact.push(e);
            wildcard.push(w);
        }
        let sets = (
            Shards::from_sets(ids),
            Shards::from_sets(exact),
            Shards::from_sets(wildcard),
        );
        let (Some(routes), Some(exact), Some(wildcard)) = sets else {
            unreachable!("one set per shard");
        };
        // An HTTP route replaces a TCP route with its id (as `insert_new` does).
        if !self.tcp_routes.is_empty() {
            self.tcp_routes
                .retain(|id, _| routes.get(&RouteId::new(id)).is_none());
        }
        sort_routes(&mut catch_all);
        self.routes = routes;
        self.exact = exact;
        self.wildcard = wildcard;
        self.catch_all = Arc::new(catch_all);
    }

    /// The routes of `bulk`, each as an upsert (those with one id in the order staged).
    fn add_one_by_one(&mut self, bulk: Bulk) {
        let Bulk {
            by_id,
            exact,
            wildcard,
            catch_all,
        } = bulk;
        // Each route is then held once: taken out of its `Arc`, not copied.
        drop((exact, wildcard, catch_all));
        for route in by_id.into_iter().flatten() {
            self.upsert_route(Arc::unwrap_or_clone(route));
        }
    }
}

/// The set of one domain shard: each domain with its routes, longest path first.
fn domain_set(routes: Vec<Arc<RouteEntry>>) -> HashSet<ByDomain> {
    let mut set = shards::new_set(routes.len());
    for route in routes {
        // Most domains have one route: one insert. The others are merged as they come.
        if set.insert(ByDomain::One(route.clone())) {
            continue;
        }
        let key = domain_key(&route.domain);
        let mut routes = set.take(key).map_or_else(Vec::new, |d| d.routes().to_vec());
        routes.push(route);
        sort_routes(&mut routes);
        if let Some(merged) = ByDomain::from_routes(routes) {
            set.insert(merged);
        }
    }
    set
}

/// `work` on each of `items` (one per shard), the items split into `threads` runs of
/// neighbours side by side; the results in the items' order. A panic in a thread is resumed
/// here.
fn in_parallel<I: Send, O: Send>(
    items: Vec<I>,
    threads: usize,
    work: impl Fn(I) -> O + Sync,
) -> Vec<O> {
    match super::in_parallel(items, threads, |run| {
        run.into_iter().map(&work).collect::<Vec<_>>()
    }) {
        Ok(runs) => runs.into_iter().flatten().collect(),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[cfg(test)]
mod tests {
    use flynn_store::types::{HttpRoute, TcpRoute};

    use super::*;

    /// Routes of every kind: domains with several paths, wildcards, the catch-all, invalid ones.
    fn routes() -> Vec<HttpRoute> {
        let mut routes = Vec::new();
        for i in 0..2000 {
            let domain = match i % 7 {
                0 => format!("*.w{}.example.com", i % 50),
                1 => "*".to_owned(),
                _ => format!("d{}.example.com", i % 600),
            };
            let path = match i % 3 {
                0 => "/".to_owned(),
                1 => format!("/api{}", i % 4),
                _ => format!("/static/{}/", i % 5),
            };
            routes.push(HttpRoute::new(
                &format!("http-{i}"),
                &domain,
                &path,
                &format!("svc-{i}"),
            ));
        }
        routes.push(HttpRoute::new(
            "http-bad",
            "has space.example.com",
            "/",
            "s",
        ));
        routes
    }

    fn staged(table: &Table, routes: &[HttpRoute]) -> (Bulk, usize) {
        let mut bulk = Bulk::default();
        let mut invalid = 0;
        for route in routes {
            let id = RouteId::new(&route.id);
            if table
                .stage(&mut bulk, id, &HttpRouteRef::from(route))
                .is_err()
            {
                invalid += 1;
            }
        }
        (bulk, invalid)
    }

    fn upserted(table: &mut Table, routes: &[HttpRoute]) {
        for route in routes {
            let id = RouteId::new(&route.id);
            let _ = table.upsert_stored(id, &HttpRouteRef::from(route));
        }
    }

    /// What every lookup of interest answers: the route id, or none.
    fn answers(table: &Table) -> Vec<Option<String>> {
        let mut out = Vec::new();
        for d in 0..620 {
            for host in [
                format!("d{d}.example.com"),
                format!("x.w{}.example.com", d % 60),
            ] {
                for path in ["/", "/api1", "/api1/x", "/static/3/a", "/other"] {
                    let found = table.lookup(host.as_bytes(), path.as_bytes());
                    out.push(found.map(|r| r.id.to_string()));
                }
            }
        }
        out.push(
            table
                .lookup(b"nowhere.test", b"/api2")
                .map(|r| r.id.to_string()),
        );
        out
    }

    #[test]
    fn a_bulk_into_an_empty_table_is_the_same_table_as_upserts() {
        let routes = routes();
        let mut one_by_one = Table::default();
        upserted(&mut one_by_one, &routes);
        for threads in [1, 2, 3] {
            let mut bulk_built = Table::default();
            let (bulk, invalid) = staged(&bulk_built, &routes);
            assert_eq!((bulk.len(), invalid), (routes.len() - 1, 1));
            bulk_built.add_bulk(bulk, threads);
            assert_eq!(bulk_built.route_count(), one_by_one.route_count());
            assert_eq!(
                answers(&bulk_built),
                answers(&one_by_one),
                "{threads} threads"
            );
            for route in &routes[..routes.len() - 1] {
                let (a, b) = (bulk_built.route(&route.id), one_by_one.route(&route.id));
                assert_eq!(a, b, "{}", route.id);
            }
            // Edited afterwards like any table.
            assert!(bulk_built.remove_route("http-2"));
            assert!(!bulk_built.remove_route("http-2"));
            assert_eq!(bulk_built.route_count(), one_by_one.route_count() - 1);
        }
    }

    #[test]
    fn a_bulk_into_a_table_with_routes_upserts_them() {
        let routes = routes();
        let (first, rest) = routes.split_at(700);
        let mut expected = Table::default();
        upserted(&mut expected, &routes);
        let mut table = Table::default();
        upserted(&mut table, first);
        // One of the rest replaces a route the table has, with another domain.
        let mut moved = first[3].clone();
        moved.domain = "moved.example.com".into();
        let mut rest = rest.to_vec();
        rest.push(moved.clone());
        upserted(&mut expected, std::slice::from_ref(&moved));
        let (bulk, _) = staged(&table, &rest);
        table.add_bulk(bulk, 2);
        assert_eq!(table.route_count(), expected.route_count());
        assert_eq!(answers(&table), answers(&expected));
        let found = table.lookup(b"moved.example.com", b"/");
        assert_eq!(found.map(|r| r.id.to_string()), Some(moved.id));
    }

    #[test]
    fn a_bulk_route_replaces_a_tcp_route_with_its_id() {
        let mut table = Table::default();
        table.upsert_tcp_route(TcpRoute {
            id: "tcp-1".into(),
            port: 4000,
            service: "db".into(),
            leader: false,
            proxy_protocol: None,
            app_id: None,
        });
        let routes = [HttpRoute::new("tcp-1", "a.example.com", "/", "web")];
        let (bulk, _) = staged(&table, &routes);
        table.add_bulk(bulk, 2);
        assert_eq!(table.tcp_routes().count(), 0);
        assert_eq!(table.route_count(), 1);
        assert!(table.lookup(b"a.example.com", b"/").is_some());
    }
}
