use std::net::SocketAddr;

use super::*;

fn route(id: &str, domain: &str, path: &str, service: &str) -> RouteEntry {
    RouteEntry::from_stored(id, HttpRoute::new(id, domain, path, service)).unwrap()
}

fn table(routes: &[(&str, &str, &str)]) -> Table {
    let mut t = Table::default();
    for (i, (domain, path, service)) in routes.iter().enumerate() {
        t.upsert_route(route(&format!("r{i}"), domain, path, service));
    }
    t
}

fn hit(t: &Table, host: &str, path: &str) -> Option<String> {
    t.lookup(host.as_bytes(), path.as_bytes())
        .map(|r| r.service.to_string())
}

#[test]
fn exact_beats_wildcard_beats_catch_all() {
    let t = table(&[
        ("*", "/", "any"),
        ("*.example.com", "/", "wild"),
        ("*.b.example.com", "/", "deeper"),
        ("a.example.com", "/", "exact"),
    ]);
    assert_eq!(hit(&t, "a.example.com", "/").as_deref(), Some("exact"));
    assert_eq!(hit(&t, "x.example.com", "/").as_deref(), Some("wild"));
    assert_eq!(hit(&t, "x.y.example.com", "/").as_deref(), Some("wild"));
    assert_eq!(hit(&t, "x.b.example.com", "/").as_deref(), Some("deeper"));
    assert_eq!(hit(&t, "example.com", "/").as_deref(), Some("any"));
    assert_eq!(hit(&t, "other.org", "/").as_deref(), Some("any"));
}

#[test]
fn wildcard_does_not_match_its_own_domain() {
    let t = table(&[("*.foo.bar", "/", "wild")]);
    assert_eq!(hit(&t, "foo.bar", "/"), None);
    assert_eq!(hit(&t, "a.foo.bar", "/").as_deref(), Some("wild"));
    assert_eq!(hit(&t, "a.b.foo.bar", "/").as_deref(), Some("wild"));
}

#[test]
fn host_is_case_insensitive_and_ignores_port() {
    let t = table(&[("Example.com", "/", "web")]);
    assert_eq!(hit(&t, "EXAMPLE.COM:8080", "/").as_deref(), Some("web"));
    assert_eq!(hit(&t, "example.com.", "/x").as_deref(), Some("web"));
}

#[test]
fn longest_path_prefix_on_slash_boundaries() {
    let t = table(&[
        ("example.com", "/", "root"),
        ("example.com", "/api", "api"),
        ("example.com", "/api/v2/", "v2"),
    ]);
    assert_eq!(hit(&t, "example.com", "/api").as_deref(), Some("api"));
    assert_eq!(hit(&t, "example.com", "/api/").as_deref(), Some("api"));
    assert_eq!(
        hit(&t, "example.com", "/api/users?x=1").as_deref(),
        Some("api")
    );
    assert_eq!(hit(&t, "example.com", "/api/v2").as_deref(), Some("v2"));
    assert_eq!(hit(&t, "example.com", "/api/v2/x").as_deref(), Some("v2"));
    assert_eq!(hit(&t, "example.com", "/apis").as_deref(), Some("root"));
    assert_eq!(
        hit(&t, "example.com", "/api?q=/api/v2/").as_deref(),
        Some("api")
    );
    assert_eq!(hit(&t, "example.com", "/").as_deref(), Some("root"));
}

#[test]
fn no_route_is_none() {
    let t = table(&[("example.com", "/api/", "api")]);
    assert_eq!(hit(&t, "example.com", "/other"), None);
    assert_eq!(hit(&t, "nope.com", "/"), None);
    assert_eq!(hit(&Table::default(), "example.com", "/"), None);
}

#[test]
fn updates_and_removals_are_incremental_and_leave_old_snapshots_alone() {
    let mut t = table(&[("example.com", "/", "one")]);
    let before = t.clone();
    t.upsert_route(route("r0", "example.com", "/", "two"));
    assert_eq!(hit(&t, "example.com", "/").as_deref(), Some("two"));
    assert_eq!(hit(&before, "example.com", "/").as_deref(), Some("one"));
    // Moving a route to another domain leaves nothing behind.
    t.upsert_route(route("r0", "moved.com", "/", "two"));
    assert_eq!(hit(&t, "example.com", "/"), None);
    assert_eq!(hit(&t, "moved.com", "/").as_deref(), Some("two"));
    assert!(t.remove_route("r0"));
    assert!(!t.remove_route("r0"));
    assert_eq!(t.route_count(), 0);
    assert_eq!(hit(&t, "moved.com", "/"), None);
}

#[test]
fn invalid_routes_are_refused() {
    let stored = |domain: &str, path: &str, service: &str| {
        RouteEntry::from_stored("x", HttpRoute::new("x", domain, path, service))
    };
    assert_eq!(stored("", "/", "s"), Err(InvalidRoute::EmptyDomain));
    assert!(matches!(
        stored("a.*.com", "/", "s"),
        Err(InvalidRoute::BadWildcard(_))
    ));
    assert!(matches!(
        stored("*.*.a.com", "/", "s"),
        Err(InvalidRoute::BadWildcard(_))
    ));
    assert!(matches!(
        stored("a.com", "api", "s"),
        Err(InvalidRoute::BadPath(_))
    ));
    assert_eq!(stored("a.com", "/", ""), Err(InvalidRoute::EmptyService));
    for bad in ["a.com:8080", "a b.com", "a/b.com", &"a".repeat(254)] {
        assert!(
            matches!(stored(bad, "/", "s"), Err(InvalidRoute::BadDomain(_))),
            "{bad}"
        );
    }
    assert!(stored(&"a".repeat(253), "/", "s").is_ok());
    assert!(stored("_acme.xn--bcher-kva.example", "/", "s").is_ok());
    assert_eq!(stored("A.com", "/api", "s").unwrap().path, "/api/");
}

#[test]
fn instances_join_and_leave_services() {
    let mut t = Table::default();
    let addr = |p: u16| Instance {
        id: format!("i{p}"),
        addr: SocketAddr::from(([127, 0, 0, 1], p)),
        meta: Default::default(),
    };
    t.upsert_instance("web", "a", &addr(1), 5);
    t.upsert_instance("web", "b", &addr(2), 3);
    t.upsert_instance("web", "b", &addr(2), 3); // no-op
    assert_eq!(t.instance_count(), 2);
    let web = t.service("web").unwrap();
    assert_eq!(web.backends()[0].id, "b", "oldest registration first");
    t.upsert_instance("web", "a", &addr(9), 5);
    assert_eq!(t.instance_count(), 2);
    assert!(t.remove_instance("web", "a"));
    assert!(!t.remove_instance("web", "a"));
    assert!(t.remove_instance("web", "b"));
    assert!(t.service("web").is_none());
    assert_eq!(t.instance_count(), 0);
}
