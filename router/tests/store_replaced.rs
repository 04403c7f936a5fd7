//! The router against a store that changes under it: etcd replaced by an empty one on the same
//! address, and a listing of more routes than fit one page.

mod common;

use std::time::Duration;

use common::{Harness, Router};
use flynn_store::{Keys, Store};
use flynn_testkit::backend::Backend;
use flynn_testkit::Etcd;
use serde_json::json;

/// Retries a put until the store answers (etcd is starting).
async fn put_when_up(store: &dyn Store, key: &str, value: String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match store.put(key, value.clone().into_bytes(), None).await {
            Ok(_) => return,
            Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("etcd did not come back: {e}"),
        }
    }
}

fn route(id: &str, domain: &str, service: &str) -> String {
    route_at(id, domain, "/", service)
}

fn route_at(id: &str, domain: &str, path: &str, service: &str) -> String {
    json!({"id": id, "type": "http", "domain": domain, "path": path, "service": service})
        .to_string()
}

fn instance(id: &str, backend: &Backend) -> String {
    json!({"id": id, "addr": backend.addr.to_string()}).to_string()
}

/// etcd is killed and an empty etcd (a new data dir) starts on the same client port: the router
/// notices that the store went back, lists it, drops the old routes and serves the new ones.
#[tokio::test]
async fn an_empty_etcd_in_place_of_the_old_one_replaces_the_table() {
    let mut h = Harness::start(&[]).await;
    let web = Backend::start("old").await;
    h.instance("web", "i1", web.addr).await;
    h.route("http-old", "old.test", "/", "web").await;
    // Enough writes that the old store's revision is well ahead of the new one's.
    for i in 0..10 {
        h.route(
            &format!("http-extra-{i}"),
            &format!("x{i}.test"),
            "/",
            "web",
        )
        .await;
    }
    h.wait_status("old.test", "/", 200).await;
    h.router
        .wait_metric("flynn_router_store_connected", |v| v == 1.0)
        .await;

    h.etcd.stop().await;
    h.router
        .wait_metric("flynn_router_store_connected", |v| v == 0.0)
        .await;
    std::fs::remove_dir_all(h.etcd.data_dir().join("etcd")).expect("wipe etcd's data");
    h.etcd.restart().await;

    let store = flynn_store::open(&h.etcd.url()).await.expect("reopen etcd");
    h.store = store;
    let fresh = Backend::start("new").await;
    let keys = Keys::default();
    put_when_up(
        h.store.as_ref(),
        &keys.instance("fresh", "i1"),
        instance("i1", &fresh),
    )
    .await;
    put_when_up(
        h.store.as_ref(),
        &keys.route("http-new"),
        route("http-new", "new.test", "fresh"),
    )
    .await;

    // The new store's truth, within a few seconds: the new route served, the old one gone.
    h.wait_status("new.test", "/", 200).await;
    h.wait_status("old.test", "/", 404).await;
    h.router
        .wait_metric("flynn_router_routes", |v| v == 1.0)
        .await;
    h.router
        .wait_metric("flynn_router_instances", |v| v == 1.0)
        .await;
    h.router
        .wait_metric("flynn_router_store_connected", |v| v == 1.0)
        .await;
    assert!(h.router.metric("flynn_router_store_relists_total").await >= 1.0);

    // And it follows the new store live.
    h.route("http-new-2", "new2.test", "/", "fresh").await;
    h.wait_status("new2.test", "/", 200).await;
}

/// The router lists its routes in pages (a page size of 7 here): every route of a listing of
/// many pages is served, and a route written while the router lists comes through too. Among
/// them, a domain with three paths, a wildcard and the catch-all (a first listing builds the
/// table's sets at its end: each must come out as if added one by one).
#[tokio::test]
async fn routes_are_listed_in_pages() {
    let etcd = Etcd::start().await;
    let store = flynn_store::open(&etcd.url()).await.expect("open etcd");
    let keys = Keys::default();
    let web = Backend::start("paged").await;
    store
        .put(
            &keys.instance("web", "i1"),
            instance("i1", &web).into_bytes(),
            None,
        )
        .await
        .expect("put");
    let count: u32 = 100;
    for i in 0..count {
        let id = format!("http-{i:03}");
        store
            .put(
                &keys.route(&id),
                route(&id, &format!("r{i}.paged.test"), "web").into_bytes(),
                None,
            )
            .await
            .expect("put");
    }
    let mut backends = Vec::new();
    let special = [
        ("http-z-root", "multi.paged.test", "/", "root"),
        ("http-z-api", "MULTI.paged.test", "/api", "api"),
        ("http-z-v2", "multi.paged.test", "/api/v2/", "v2"),
        ("http-z-wild", "*.wild.paged.test", "/", "wild"),
        ("http-z-any", "*", "/", "any"),
    ];
    for (id, domain, path, service) in special {
        let backend = Backend::start(service).await;
        let value = route_at(id, domain, path, service);
        store
            .put(&keys.route(id), value.into_bytes(), None)
            .await
            .expect("put");
        store
            .put(
                &keys.instance(service, "i1"),
                instance("i1", &backend).into_bytes(),
                None,
            )
            .await
            .expect("put");
        backends.push(backend);
    }
    // Read by the router's mirrors at start-up (the child inherits the environment).
    std::env::set_var("FLYNN_STORE_PAGE_SIZE", "7");
    let router = Router::spawn(&etcd.url(), &[]);
    let late = "http-late";
    store
        .put(
            &keys.route(late),
            route(late, "late.paged.test", "web").into_bytes(),
            None,
        )
        .await
        .expect("put");
    router.wait_healthy().await;
    router
        .wait_metric("flynn_router_routes", |v| {
            v == f64::from(count) + special.len() as f64 + 1.0
        })
        .await;
    let http = router.http.to_string();
    for (host, path, backend) in [
        ("multi.paged.test", "/", "root"),
        ("multi.paged.test", "/api/x", "api"),
        ("multi.paged.test", "/api/v2/x", "v2"),
        ("a.b.wild.paged.test", "/", "wild"),
        ("wild.paged.test", "/", "any"),
        ("elsewhere.test", "/api", "any"),
    ] {
        let response = flynn_testkit::client::get(&http, path, host)
            .await
            .expect("request");
        assert_eq!(response.status, 200, "{host}{path}");
        assert_eq!(common::backend_of(&response), backend, "{host}{path}");
    }
    for i in 0..count {
        let host = format!("r{i}.paged.test");
        let response = flynn_testkit::client::get(&http, "/", &host)
            .await
            .expect("request");
        assert_eq!(response.status, 200, "{host}");
    }
    let response = flynn_testkit::client::get(&http, "/", "late.paged.test")
        .await
        .expect("request");
    assert_eq!(response.status, 200);
    assert_eq!(router.metric("flynn_router_store_relists_total").await, 0.0);
}
