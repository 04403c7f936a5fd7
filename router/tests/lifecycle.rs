//! Drain and upgrade: SIGTERM lets in-flight requests finish (bounded by --drain-timeout),
//! instances removed from the store finish their requests, and a new binary takes the
//! listening sockets over under load with no failed request.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Harness, Router};
use flynn_testkit::backend::Backend;
use flynn_testkit::client;

async fn with_backend(extra: &[&str]) -> (Harness, Backend) {
    let h = Harness::start(extra).await;
    let b = Backend::start("web").await;
    h.instance("web", "i1", b.addr).await;
    h.route("http-1", "life.test", "/", "web").await;
    h.wait_status("life.test", "/", 200).await;
    (h, b)
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_exits() {
    let (mut h, _b) = with_backend(&[]).await;
    let addr = h.router.http.to_string();
    let slow = tokio::spawn({
        let addr = addr.clone();
        async move { client::get(&addr, "/slow/1500", "life.test").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    h.router.signal("TERM");

    // New connections are refused soon after.
    flynn_testkit::eventually(Duration::from_secs(3), "listener closed", || {
        let addr = addr.clone();
        async move { tokio::net::TcpStream::connect(addr).await.is_err() }
    })
    .await
    .expect("stopped accepting");
    let response = slow
        .await
        .expect("task")
        .expect("the in-flight request finished");
    assert_eq!(response.status, 200);
    // And the process ends once drained, well before the 30 s default timeout.
    let status = h
        .router
        .exited_within(Duration::from_secs(10))
        .await
        .expect("exited after draining");
    assert!(status.success(), "{status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "{:?}",
        signalled.elapsed()
    );
}

#[tokio::test]
async fn the_drain_timeout_bounds_the_wait() {
    let (mut h, _b) = with_backend(&["--drain-timeout", "1s"]).await;
    let addr = h.router.http.to_string();
    let stuck = tokio::spawn(async move { client::get(&addr, "/slow/20000", "life.test").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    h.router.signal("TERM");
    h.router
        .exited_within(Duration::from_secs(6))
        .await
        .expect("exited at the drain timeout");
    assert!(signalled.elapsed() < Duration::from_secs(4));
    assert!(
        stuck.await.expect("task").is_err(),
        "the stuck request was cut"
    );
}

#[tokio::test]
async fn a_removed_instance_finishes_its_requests() {
    let (h, _b) = with_backend(&[]).await;
    let addr = h.router.http.to_string();
    let slow = tokio::spawn(async move { client::get(&addr, "/slow/1500", "life.test").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.remove_instance("web", "i1").await;
    h.wait_status("life.test", "/", 503).await;
    let response = slow.await.expect("task").expect("finished");
    assert_eq!(response.status, 200, "drained, not cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_upgrade_under_load_fails_no_request() {
    let sock_dir = tempfile::tempdir().expect("dir");
    let sock = sock_dir.path().join("upgrade.sock");
    let sock_arg = sock.to_str().expect("utf-8 path").to_owned();
    let (mut h, _b) = with_backend(&["--upgrade-sock", &sock_arg]).await;
    let url = format!("http://{}/", h.router.http);

    // wrk in the background for 5 s, Host header set for the route.
    let wrk = std::thread::spawn(move || {
        Command::new("wrk")
            .args(["-t1", "-c16", "-d5s", "-H", "Host: life.test", &url])
            .output()
            .expect("wrk is installed (apt-get install wrk)")
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The successor starts on the same addresses and waits for the sockets; then the old one
    // is told to hand them over.
    let successor = Router::spawn_at(
        &h.etcd.url(),
        [h.router.http, h.router.https, h.router.admin],
        &["--upgrade", "--upgrade-sock", &sock_arg],
    );
    flynn_testkit::eventually(Duration::from_secs(10), "successor waiting", || async {
        sock.exists()
    })
    .await
    .expect("the successor listens on the upgrade socket");
    h.router.signal("QUIT");
    successor.wait_healthy().await;

    let out = wrk.join().expect("wrk thread");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{report}");
    assert!(
        !report.contains("Socket errors"),
        "connections failed:\n{report}"
    );
    assert!(!report.contains("Non-2xx"), "requests failed:\n{report}");
    assert!(report.contains("requests in"), "{report}");
    eprintln!("{report}");
    // The old process hands over and exits; the successor serves.
    assert!(h
        .router
        .exited_within(Duration::from_secs(15))
        .await
        .is_some());
    let response = client::get(&h.router.http.to_string(), "/", "life.test")
        .await
        .expect("served by the successor");
    assert_eq!(response.status, 200);
    // Counted once the request's logging phase has run, which may be just after the answer.
    flynn_testkit::eventually(
        Duration::from_secs(5),
        "the successor counts it",
        || async {
            successor
                .metric(r#"flynn_router_requests_total{class="2xx"}"#)
                .await
                > 0.0
        },
    )
    .await
    .expect("the successor served the request");
}
