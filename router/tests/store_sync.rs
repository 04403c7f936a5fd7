//! The router and its store: bad entries, outages, health and metrics.

mod common;

use std::time::Duration;

use common::{backend_of, Harness, Router, APPLY};
use flynn_testkit::backend::Backend;
use flynn_testkit::{eventually, Etcd};

#[tokio::test]
async fn malformed_entries_are_skipped_counted_and_the_last_good_one_kept() {
    let h = Harness::start(&[]).await;
    let b = Backend::start("good").await;
    h.instance("web", "i1", b.addr).await;
    h.route("http-good", "good.test", "/", "web").await;
    h.wait_status("good.test", "/", 200).await;
    assert_eq!(
        h.router
            .metric("flynn_router_store_invalid_entries_total")
            .await,
        0.0
    );

    let bad_entries: [(String, &str); 6] = [
        (h.keys.route("http-garbage"), "{not json"),
        (
            h.keys.route("http-nodomain"),
            r#"{"id":"x","type":"http","domain":"","service":"web"}"#,
        ),
        (
            h.keys.route("http-badwild"),
            r#"{"id":"x","type":"http","domain":"a.*.com","service":"web"}"#,
        ),
        (
            h.keys.route("http-badpath"),
            r#"{"id":"x","type":"http","domain":"p.test","path":"api","service":"web"}"#,
        ),
        (
            h.keys.instance("web", "i-bad"),
            r#"{"id":"i-bad","addr":"not-an-address"}"#,
        ),
        (
            format!("{}no-instance-id", h.keys.services()),
            r#"{"id":"x","addr":"127.0.0.1:1"}"#,
        ),
    ];
    for (key, value) in &bad_entries {
        h.put_raw(key, *value).await;
    }
    h.router
        .wait_metric("flynn_router_store_invalid_entries_total", |v| v >= 6.0)
        .await;
    // The router is up and serving as before.
    assert_eq!(backend_of(&h.get("/", "good.test").await), "good");
    assert_eq!(h.router.metric("flynn_router_routes").await, 1.0);
    assert_eq!(h.router.metric("flynn_router_instances").await, 1.0);

    // A good route overwritten with garbage keeps serving its last good version.
    h.put_raw(&h.keys.route("http-good"), "\u{0}garbage").await;
    h.router
        .wait_metric("flynn_router_store_invalid_entries_total", |v| v >= 7.0)
        .await;
    assert_eq!(h.get("/", "good.test").await.status, 200);
    // A good instance overwritten with garbage keeps its last good address too.
    h.put_raw(&h.keys.instance("web", "i1"), "[]").await;
    h.router
        .wait_metric("flynn_router_store_invalid_entries_total", |v| v >= 8.0)
        .await;
    assert_eq!(h.get("/", "good.test").await.status, 200);

    // Fixing the value applies it again; unknown fields are ignored.
    h.put_raw(
        &h.keys.route("http-good"),
        r#"{"id":"http-good","type":"http","domain":"fixed.test","service":"web","future_field":[1,2]}"#,
    )
    .await;
    h.wait_status("fixed.test", "/", 200).await;
    h.wait_status("good.test", "/", 404).await;

    // A restarted router never saw the good instance value: it has no instance for `web` until
    // the value is fixed, and it skips the bad entries it lists.
    h.instance("web", "i1", b.addr).await;
    // A restarted router lists the same bad entries, skips them and serves the good ones
    // (told to list: by default it would take the live router's table instead).
    let again = Router::start(&h.etcd.url(), &["--join-peers", "false"]).await;
    assert!(
        again
            .metric("flynn_router_store_invalid_entries_total")
            .await
            >= 6.0
    );
    let response = flynn_testkit::client::get(&again.http.to_string(), "/", "fixed.test")
        .await
        .expect("request");
    assert_eq!(response.status, 200);
}

#[tokio::test]
async fn an_etcd_outage_keeps_the_last_table_and_converges_after() {
    let mut h = Harness::start(&[]).await;
    let first = Backend::start("first").await;
    let second = Backend::start("second").await;
    h.instance("web", "i1", first.addr).await;
    h.route("http-1", "outage.test", "/", "web").await;
    h.wait_status("outage.test", "/", 200).await;
    h.router
        .wait_metric("flynn_router_store_connected", |v| v == 1.0)
        .await;

    h.etcd.stop().await;
    h.router
        .wait_metric("flynn_router_store_connected", |v| v == 0.0)
        .await;
    // Still serving the last table, for a while.
    for _ in 0..20 {
        assert_eq!(backend_of(&h.get("/", "outage.test").await), "first");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        h.router.health().await,
        200,
        "a synced router stays healthy during an outage"
    );
    assert!(
        h.router
            .metric("flynn_router_store_last_sync_age_seconds")
            .await
            >= 1.0
    );

    h.etcd.restart().await;
    // Changes made after the outage reach the router: a new route, an instance swap, a removal.
    let store = flynn_store::open(&h.etcd.url()).await.expect("reopen etcd");
    h.store = store;
    h.route("http-2", "after.test", "/", "web").await;
    h.instance("web", "i2", second.addr).await;
    h.remove_instance("web", "i1").await;
    h.wait_status("after.test", "/", 200).await;
    let addr = h.router.http.to_string();
    eventually(APPLY, "instance swap after the outage", || {
        let addr = addr.clone();
        async move {
            flynn_testkit::client::get(&addr, "/", "outage.test")
                .await
                .ok()
                .and_then(|r| r.json().ok())
                .is_some_and(|j| j["backend"] == "second")
        }
    })
    .await
    .expect("converged");
    h.router
        .wait_metric("flynn_router_store_connected", |v| v == 1.0)
        .await;
    h.router
        .wait_metric("flynn_router_instances", |v| v == 1.0)
        .await;
    h.router
        .wait_metric("flynn_router_routes", |v| v == 2.0)
        .await;
}

#[tokio::test]
async fn a_router_that_never_synced_is_unhealthy_until_the_store_answers() {
    let mut etcd = Etcd::start().await;
    let url = etcd.url();
    etcd.stop().await;
    let router = Router::spawn(&url, &[]);
    let admin = router.admin.to_string();
    eventually(APPLY, "admin listener up", || {
        let admin = admin.clone();
        async move {
            flynn_testkit::client::get(&admin, "/health", "a")
                .await
                .is_ok()
        }
    })
    .await
    .expect("admin answers");
    assert_eq!(router.health().await, 503);
    // Requests get a 404 rather than hanging while there is no table.
    let response = flynn_testkit::client::get(&router.http.to_string(), "/", "x.test")
        .await
        .expect("request");
    assert_eq!(response.status, 404);

    etcd.restart().await;
    router.wait_healthy().await;
    // Healthy means listed; "connected" follows once every watch is up, a moment later.
    router
        .wait_metric("flynn_router_store_connected", |v| v == 1.0)
        .await;
}

#[tokio::test]
async fn metrics_count_requests_and_mirror_the_store() {
    let h = Harness::start(&[]).await;
    let b = Backend::start("b").await;
    h.instance("web", "i1", b.addr).await;
    h.route("http-1", "metrics.test", "/", "web").await;
    h.wait_status("metrics.test", "/", 200).await;
    // Requests are counted once they are finished, a moment after the client has its answer.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let before_2xx = h
        .router
        .metric(r#"flynn_router_requests_total{class="2xx"}"#)
        .await;
    let before_4xx = h
        .router
        .metric(r#"flynn_router_requests_total{class="4xx"}"#)
        .await;
    let before_5xx = h
        .router
        .metric(r#"flynn_router_requests_total{class="5xx"}"#)
        .await;
    let before_count = h
        .router
        .metric("flynn_router_request_duration_seconds_count")
        .await;
    for _ in 0..5 {
        assert_eq!(h.get("/", "metrics.test").await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(h.get("/", "unknown.test").await.status, 404);
    }
    assert_eq!(h.get("/status/503", "metrics.test").await.status, 503);
    let r = &h.router;
    r.wait_metric(r#"flynn_router_requests_total{class="2xx"}"#, |v| {
        v == before_2xx + 5.0
    })
    .await;
    r.wait_metric(r#"flynn_router_requests_total{class="4xx"}"#, |v| {
        v == before_4xx + 3.0
    })
    .await;
    r.wait_metric(r#"flynn_router_requests_total{class="5xx"}"#, |v| {
        v == before_5xx + 1.0
    })
    .await;
    r.wait_metric("flynn_router_request_duration_seconds_count", |v| {
        v == before_count + 9.0
    })
    .await;
    assert_eq!(h.router.metric("flynn_router_routes").await, 1.0);
    assert_eq!(h.router.metric("flynn_router_instances").await, 1.0);

    // The revision the router has seen follows the store's.
    let revision = h
        .store
        .put(
            &h.keys.route("http-2"),
            br#"{"id":"http-2","type":"http","domain":"two.test","service":"web"}"#.to_vec(),
            None,
        )
        .await
        .expect("put");
    h.router
        .wait_metric("flynn_router_store_revision", |v| v == revision as f64)
        .await;
    h.router
        .wait_metric("flynn_router_routes", |v| v == 2.0)
        .await;
    assert!(
        h.router
            .metric("flynn_router_store_last_sync_age_seconds")
            .await
            < 5.0
    );
}
