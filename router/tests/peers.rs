//! `--join-peers` (on by default): a router that starts with no table of its own takes the
//! table of a live router (from its admin listener's `/snapshot`) instead of listing every
//! route from the store, then follows the store from that table's revision. Real etcd, real
//! router binaries.

mod common;

use std::net::SocketAddr;

use common::{Harness, Router};
use flynn_testkit::backend::Backend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUTES: usize = 300;

/// A harness whose router serves `ROUTES` routes (`r<i>.test`) of one instance.
async fn with_routes() -> (Harness, Backend) {
    let h = Harness::start(&[]).await;
    let web = Backend::start("web").await;
    h.instance("web", "i1", web.addr).await;
    for i in 0..ROUTES {
        h.route(&format!("http-r{i}"), &format!("r{i}.test"), "/", "web")
            .await;
    }
    h.router
        .wait_metric("flynn_router_routes", |v| v == ROUTES as f64)
        .await;
    (h, web)
}

/// A GET through `router` on a fresh connection: its status.
async fn status_via(router: &Router, host: &str) -> u16 {
    flynn_testkit::client::get(&router.http.to_string(), "/", host)
        .await
        .map(|r| r.status)
        .unwrap_or(0)
}

async fn wait_status_via(router: &Router, host: &str, status: u16) {
    let waited = flynn_testkit::eventually(common::APPLY, host, || async {
        status_via(router, host).await == status
    })
    .await;
    if let Err(e) = waited {
        panic!("{e}\nrouter log:\n{}", router.log());
    }
}

#[tokio::test]
async fn a_new_router_takes_the_table_of_a_live_one_then_follows_the_store() {
    let (h, _web) = with_routes().await;

    let b = Router::start(&h.etcd.url(), &[]).await;
    let log = b.log();
    assert!(
        log.contains("took the table of a live router")
            && log.contains(&format!("routes={ROUTES}")),
        "{log}"
    );
    assert_eq!(b.metric("flynn_router_routes").await, ROUTES as f64);
    assert_eq!(b.metric("flynn_router_instances").await, 1.0);
    assert_eq!(status_via(&b, "r0.test").await, 200);
    assert_eq!(status_via(&b, &format!("r{}.test", ROUTES - 1)).await, 200);

    // From the table's revision on, it follows the store like any router.
    h.route("http-new", "new.test", "/", "web").await;
    h.remove_route("http-r0").await;
    wait_status_via(&b, "new.test", 200).await;
    wait_status_via(&b, "r0.test", 404).await;
    assert_eq!(b.metric("flynn_router_store_relists_total").await, 0.0);

    // And it serves its own table to the routers after it.
    let answer = flynn_testkit::client::get(&b.admin.to_string(), "/snapshot", "admin")
        .await
        .expect("GET /snapshot");
    assert_eq!(answer.status, 200);
    assert!(answer.body.starts_with(b"FLYNNTBL"), "not a table snapshot");
}

/// Registrations of routers that are gone (nothing listens at their address any more; their
/// leases not expired yet) do not hide the live router, however many there are. (Counting them
/// among the 3 peers asked, the new router found the live one only when the shuffle put it
/// first 3 of 41: this fails then 38 times in 41.)
#[tokio::test]
async fn registrations_of_routers_gone_do_not_hide_the_live_one() {
    let (h, _web) = with_routes().await;
    for id in 0..40 {
        let gone = SocketAddr::from(([127, 0, 0, 1], flynn_testkit::free_port()));
        let value = serde_json::json!({"id": format!("gone-{id}"), "admin": gone.to_string()});
        h.put_raw(
            &format!("{}/routers/router-gone-{id}", h.keys.prefix()),
            value.to_string(),
        )
        .await;
    }
    let b = Router::start(&h.etcd.url(), &[]).await;
    let log = b.log();
    assert!(log.contains("took the table of a live router"), "{log}");
    assert_eq!(b.metric("flynn_router_routes").await, ROUTES as f64);
}

#[tokio::test]
async fn join_peers_false_lists_the_store() {
    let (h, _web) = with_routes().await;
    let b = Router::start(&h.etcd.url(), &["--join-peers", "false"]).await;
    b.wait_metric("flynn_router_routes", |v| v == ROUTES as f64)
        .await;
    let log = b.log();
    assert!(!log.contains("took the table"), "{log}");
    assert_eq!(status_via(&b, "r7.test").await, 200);
}

/// Registered routers that cannot give a table (nothing listening; something that answers
/// garbage; one that has no complete table yet; one that accepts and says nothing) are
/// skipped: the new router lists the store.
#[tokio::test]
async fn peers_that_give_no_usable_table_are_skipped_and_the_store_is_listed() {
    let (mut h, _web) = with_routes().await;
    // The real router is gone (its registration with it), leaving only bad peers.
    h.router.signal("KILL");
    h.router
        .exited_within(std::time::Duration::from_secs(10))
        .await;
    forget_routers(&h).await;
    let closed = SocketAddr::from(([127, 0, 0, 1], flynn_testkit::free_port()));
    let garbage = serve_once_each(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").await;
    let not_ready =
        serve_once_each(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").await;
    for (id, addr) in [
        ("closed", closed),
        ("garbage", garbage),
        ("busy", not_ready),
    ] {
        let value = serde_json::json!({"id": id, "admin": addr.to_string()}).to_string();
        h.put_raw(&format!("{}/routers/router-{id}", h.keys.prefix()), value)
            .await;
    }

    let b = Router::start(&h.etcd.url(), &[]).await;
    b.wait_metric("flynn_router_routes", |v| v == ROUTES as f64)
        .await;
    let log = b.log();
    assert!(!log.contains("took the table"), "{log}");
    assert!(log.contains("that router's table is unreadable"), "{log}");
    assert!(log.contains("answered 503"), "{log}");
    assert!(log.contains("no table from this router"), "{log}");
    assert_eq!(status_via(&b, "r9.test").await, 200);
    drop(b);

    // A peer that accepts and never answers is given up on within seconds.
    forget_routers(&h).await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let value = serde_json::json!({"id": "silent", "admin": silent.local_addr().expect("addr").to_string()});
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    h.put_raw(
        &format!("{}/routers/router-silent", h.keys.prefix()),
        value.to_string(),
    )
    .await;
    let c = Router::start(&h.etcd.url(), &[]).await;
    c.wait_metric("flynn_router_routes", |v| v == ROUTES as f64)
        .await;
    let log = c.log();
    assert!(log.contains("no table from this router"), "{log}");
    assert!(!log.contains("took the table"), "{log}");
}

/// Deletes every router's registration.
async fn forget_routers(h: &Harness) {
    let routers = h
        .store
        .range(&format!("{}/routers/", h.keys.prefix()))
        .await
        .expect("list routers");
    for kv in routers.kvs {
        h.store.delete(&kv.key).await.expect("delete registration");
    }
}

/// A TCP server on loopback that reads a request head and answers `answer` to every
/// connection.
async fn serve_once_each(answer: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let _ = conn.write_all(answer).await;
            });
        }
    });
    addr
}
