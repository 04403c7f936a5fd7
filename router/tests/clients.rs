//! Idle, slow, greedy and malformed clients, on both HTTP engines (`--h1-fast-path true` and
//! `false`): keep-alive and request-head deadlines, the head size cap, the connection limit,
//! and the router's own answers to requests it refuses.

mod common;

use std::time::{Duration, Instant};

use common::{echoed, Harness};
use flynn_router::proxy::h1::IDLE_RELEASE;
use flynn_testkit::backend::{echoed_header, Backend};
use flynn_testkit::client::{self, Conn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

common::on_both_engines!(
    idle_kept_alive_connections_are_closed,
    a_head_that_trickles_in_gets_408,
    a_head_over_64_kib_gets_431,
    malformed_requests_get_the_routers_own_400,
    absolute_form_requests_route_by_their_authority,
    identical_content_lengths_reach_the_backend_once,
    a_hanging_instance_is_avoided_after_a_timeout,
    response_heads_up_to_64_kib_pass,
    a_body_with_a_request_pipelined_behind_it_reaches_the_backend,
    connections_idle_past_the_buffer_release_are_served_in_full,
);

/// A router with `engine` and `extra` flags, one backend routed at `clients.test`.
async fn start(engine: &[&str], extra: &[&str]) -> (Harness, Backend) {
    let args: Vec<&str> = engine.iter().chain(extra).copied().collect();
    let h = Harness::start(&args).await;
    let b = Backend::start("web").await;
    h.instance("web", "i1", b.addr).await;
    h.route("http-1", "clients.test", "/", "web").await;
    h.wait_status("clients.test", "/", 200).await;
    (h, b)
}

/// A connection to `addr` on which a GET of clients.test was answered 200, kept open.
async fn served_connection(addr: &str) -> Conn {
    let mut conn = Conn::open(addr).await.expect("connect");
    let response = conn.get("/", "clients.test", &[]).await.expect("GET");
    assert_eq!(response.status, 200);
    conn
}

/// Asserts a response is the router's own answer with `status` and its body.
fn assert_own_answer(response: &client::Response, status: u16, body: &str) {
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(response.text(), body);
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(response.header("server"), None, "no Server: Pingora");
}

async fn idle_kept_alive_connections_are_closed(engine: &[&str]) {
    let (h, _b) = start(engine, &["--keepalive-timeout", "2s"]).await;
    let addr = h.router.http.to_string();

    // A plain GET, then silence.
    let mut conn = served_connection(&addr).await;
    let idle = Instant::now();
    assert!(
        conn.closed_within(Duration::from_secs(6)).await,
        "still open"
    );
    assert!(
        idle.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        idle.elapsed()
    );

    // A chunked upload (which the fast path hands to pingora), then silence.
    let mut conn = Conn::open(&addr).await.expect("connect");
    let response = conn
        .request(
            b"POST / HTTP/1.1\r\nHost: clients.test\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n",
        )
        .await
        .expect("POST");
    assert_eq!(response.status, 200);
    assert!(
        conn.closed_within(Duration::from_secs(6)).await,
        "still open"
    );

    // HTTP/1.0 with keep-alive, then silence.
    let mut conn = Conn::open(&addr).await.expect("connect");
    let response = conn
        .request(b"GET / HTTP/1.0\r\nHost: clients.test\r\nConnection: keep-alive\r\n\r\n")
        .await
        .expect("GET");
    assert_eq!(response.status, 200);
    assert!(
        conn.closed_within(Duration::from_secs(6)).await,
        "still open"
    );
}

async fn a_head_that_trickles_in_gets_408(engine: &[&str]) {
    let (h, b) = start(engine, &["--header-timeout", "2s"]).await;
    let addr = h.router.http.to_string();
    let before = b.requests();

    // First request of a connection: its deadline runs from the connection's start, also when
    // the connection stays silent past the idle release first (the fast path parks it).
    for silent in [Duration::ZERO, PAST_IDLE_RELEASE] {
        let mut slow = TcpStream::connect(&addr).await.expect("connect");
        let started = Instant::now();
        tokio::time::sleep(silent).await;
        slow.write_all(b"GET / HTTP/1.1\r\nHost: clients.test\r\n")
            .await
            .expect("write");
        let answer = trickle_until_answered(&mut slow, b"X-Slow: 1\r\n").await;
        let elapsed = started.elapsed();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.ends_with("Request Timeout\n"), "{answer}");
        assert!(
            !answer.to_ascii_lowercase().contains("server: pingora"),
            "{answer}"
        );
        assert!(
            elapsed >= Duration::from_millis(1800) && elapsed < Duration::from_millis(3000),
            "silent for {silent:?}: {elapsed:?}"
        );
    }

    // A later request of a kept-alive connection: from its first byte.
    let mut conn = served_connection(&addr).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    conn.write(b"GET / HTTP/1.1\r\n").await.expect("write");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    conn.write(b"Host: clients.test\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(
        conn.read_response(false).await.expect("answered").status,
        200,
        "an idle wait does not count toward the head's deadline"
    );

    // A connection that sends nothing is closed at the deadline, without an answer.
    let mut silent = TcpStream::connect(&addr).await.expect("connect");
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut got)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "answered or still open: {read:?} {got:?}"
    );
    assert_eq!(
        b.requests(),
        before + 2,
        "the slow heads never reached the backend"
    );
}

/// Longer than a connection idles before the fast path frees its request state and buffers
/// ([`IDLE_RELEASE`]), with a margin.
const PAST_IDLE_RELEASE: Duration = IDLE_RELEASE.saturating_add(Duration::from_millis(300));

async fn connections_idle_past_the_buffer_release_are_served_in_full(engine: &[&str]) {
    let (h, b) = start(engine, &[]).await;
    let addr = h.router.http.to_string();
    let before = b.requests();
    let mut conn = served_connection(&addr).await;

    // Idle (parked, on the fast path), then a plain request on the same connection.
    tokio::time::sleep(PAST_IDLE_RELEASE).await;
    let response = conn.get("/", "clients.test", &[]).await.expect("GET");
    assert_eq!(response.status, 200);
    assert_eq!(echoed(&response)["uri"], "/");

    // Idle again, then a chunked upload that the fast path hands to pingora, answered with a
    // streamed (chunked) body, which pingora writes piece by piece.
    tokio::time::sleep(PAST_IDLE_RELEASE).await;
    let response = conn
        .request(
            b"POST /stream HTTP/1.1\r\nHost: clients.test\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n",
        )
        .await
        .expect("POST");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "first\nlast\n");

    // And the connection goes on (on pingora's path now).
    tokio::time::sleep(PAST_IDLE_RELEASE).await;
    let response = conn.get("/after", "clients.test", &[]).await.expect("GET");
    assert_eq!(response.status, 200);
    assert_eq!(echoed(&response)["uri"], "/after");
    assert_eq!(b.requests(), before + 4, "the first GET and three more");
}

/// Sends `drip` a byte every 300 ms until the router answers; returns the answer.
async fn trickle_until_answered(stream: &mut TcpStream, drip: &[u8]) -> String {
    let mut got = Vec::new();
    for byte in drip.iter().cycle().take(100) {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

async fn a_head_over_64_kib_gets_431(engine: &[&str]) {
    let (h, b) = start(engine, &[]).await;
    let addr = h.router.http.to_string();
    let before = b.requests();
    let mut head = b"GET / HTTP/1.1\r\nHost: clients.test\r\n".to_vec();
    for i in 0..70 {
        head.extend_from_slice(format!("X-Big-{i}: {}\r\n", "a".repeat(1000)).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    let response = client::send(&addr, &head).await.expect("answered");
    assert_own_answer(&response, 431, "Request Header Fields Too Large\n");

    // 40 KiB of headers still pass, on either engine.
    let mut head = b"GET / HTTP/1.1\r\nHost: clients.test\r\n".to_vec();
    for i in 0..40 {
        head.extend_from_slice(format!("X-Big-{i}: {}\r\n", "a".repeat(1000)).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    let response = client::send(&addr, &head).await.expect("answered");
    assert_eq!(response.status, 200);
    assert_eq!(b.requests(), before + 1, "only the 40 KiB head");
}

async fn malformed_requests_get_the_routers_own_400(engine: &[&str]) {
    let (h, b) = start(engine, &[]).await;
    let addr = h.router.http.to_string();
    let before = b.requests();
    for raw in [
        &b"GET /a b HTTP/1.1\r\nHost: clients.test\r\n\r\n"[..],
        b"GET /a\0b HTTP/1.1\r\nHost: clients.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: clients.test\r\nBad Header: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: clients.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ] {
        let response = client::send(&addr, raw).await.expect("answered");
        assert_own_answer(&response, 400, "Bad Request\n");
    }
    let response = client::send(
        &addr,
        b"CONNECT clients.test:443 HTTP/1.1\r\nHost: clients.test:443\r\n\r\n",
    )
    .await
    .expect("answered");
    assert_own_answer(&response, 405, "Method Not Allowed\n");
    assert_eq!(b.requests(), before, "none reached the backend");
}

async fn absolute_form_requests_route_by_their_authority(engine: &[&str]) {
    let (h, b) = start(engine, &[]).await;
    let other = Backend::start("other").await;
    h.instance("other", "o1", other.addr).await;
    h.route("http-2", "other.test", "/", "other").await;
    h.wait_status("other.test", "/", 200).await;
    let addr = h.router.http.to_string();

    let response = client::send(
        &addr,
        b"GET http://other.test/x?y HTTP/1.1\r\nHost: other.test\r\n\r\n",
    )
    .await
    .expect("answered");
    assert_eq!(response.status, 200);
    assert_eq!(echoed(&response)["backend"], "other");

    // A Host that disagrees with the URI's authority is refused (as HAProxy does), never
    // routed by the Host.
    let before = (b.requests(), other.requests());
    let response = client::send(
        &addr,
        b"GET http://other.test/ HTTP/1.1\r\nHost: clients.test\r\n\r\n",
    )
    .await
    .expect("answered");
    assert_own_answer(&response, 400, "Bad Request\n");
    assert_eq!((b.requests(), other.requests()), before);
}

async fn identical_content_lengths_reach_the_backend_once(engine: &[&str]) {
    let (h, _b) = start(engine, &[]).await;
    let response = client::send(
        &h.router.http.to_string(),
        b"POST / HTTP/1.1\r\nHost: clients.test\r\nContent-Length: 5\r\n\
          Content-Length: 5\r\n\r\nhello",
    )
    .await
    .expect("answered");
    assert_eq!(response.status, 200);
    let json = echoed(&response);
    assert_eq!(echoed_header(&json, "content-length"), vec!["5".to_owned()]);
    assert_eq!(json["body_len"], 5);
}

async fn a_hanging_instance_is_avoided_after_a_timeout(engine: &[&str]) {
    let h = Harness::start(&[engine, &["--upstream-timeout", "300ms"][..]].concat()).await;
    let hanging = Backend::start_with(
        "hanging",
        flynn_testkit::backend::Options {
            delay: Some(Duration::from_secs(30)),
            ..Default::default()
        },
    )
    .await;
    let good = Backend::start("good").await;
    h.instance("web", "hanging", hanging.addr).await;
    h.instance("web", "good", good.addr).await;
    h.route("http-1", "clients.test", "/", "web").await;
    h.wait_status("clients.test", "/", 200).await;

    let mut timeouts = 0;
    for _ in 0..30 {
        let response = h.get("/", "clients.test").await;
        match response.status {
            200 => {}
            504 => timeouts += 1,
            other => panic!("unexpected {other}"),
        }
    }
    // Without ejection, about half would time out (P2C over two idle instances).
    assert!(timeouts <= 3, "{timeouts} of 30 timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_never_says_hello_is_closed() {
    let h = Harness::start(&["--header-timeout", "2s"]).await;
    let mut silent = TcpStream::connect(h.router.https).await.expect("connect");
    let took = closed_within(&mut silent, Duration::from_secs(6)).await;
    assert!(took >= Duration::from_millis(1500), "{took:?}");
}

/// Reads until the router closes `stream` (panics if it is still open after `within`); how
/// long that took.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut got)).await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "still open: {read:?}"
    );
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed() {
    let (h, _b) = start(&[], &["--h2c", "--keepalive-timeout", "2s"]).await;
    let mut conn = TcpStream::connect(h.router.http).await.expect("connect");
    // The preface and an empty SETTINGS frame, then nothing.
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("write");
    let took = closed_within(&mut conn, Duration::from_secs(8)).await;
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    // And one that never sends its preface is closed at the header timeout.
    let mut silent = TcpStream::connect(h.router.http).await.expect("connect");
    closed_within(&mut silent, Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_limit_accepting_waits_for_a_free_slot() {
    let (h, _b) = start(&[], &["--max-connections", "3", "--no-https"]).await;
    let addr = h.router.http.to_string();
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(served_connection(&addr).await);
    }
    // The fourth waits in the kernel's queue: connected, but not answered.
    let fourth = tokio::spawn({
        let addr = addr.clone();
        async move {
            let mut conn = Conn::open(&addr).await.expect("connect");
            conn.get("/", "clients.test", &[]).await.map(|r| r.status)
        }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    if fourth.is_finished() {
        panic!("answered beyond the limit: {:?}", fourth.await);
    }
    assert_eq!(
        h.router.metric("flynn_router_client_connections").await,
        3.0
    );
    assert!(h.router.metric("flynn_router_accept_paused_total").await >= 1.0);
    // One closes: the fourth is served.
    drop(open.pop());
    let status = tokio::time::timeout(Duration::from_secs(5), fourth)
        .await
        .expect("served once a slot was free")
        .expect("task")
        .expect("GET");
    assert_eq!(status, 200);
}

/// With two instances under load, one killed: the requests on its pooled connections are sent
/// again (idempotent, and the backend had closed the connection: it never read them), so at most
/// [`LOST_TO_A_KILL`] requests fail, where the bug this guards against failed 7-10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_costs_at_most_two_requests_on_either_engine() {
    for engine in ["true", "false"] {
        let h = Harness::start(&["--h1-fast-path", engine]).await;
        let a = Backend::start("a").await;
        let b = Backend::start("b").await;
        h.instance("web", "a", a.addr).await;
        h.instance("web", "b", b.addr).await;
        h.route("http-1", "clients.test", "/", "web").await;
        h.wait_status("clients.test", "/", 200).await;
        let url = format!("http://{}/", h.router.http);
        let wrk = std::thread::spawn(move || {
            std::process::Command::new("wrk")
                .args(["-t1", "-c20", "-d5s", "-H", "Host: clients.test", &url])
                .output()
                .expect("wrk is installed (apt-get install wrk)")
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        a.stop();
        let out = wrk.join().expect("wrk thread");
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("--h1-fast-path {engine}:\n{report}");
        assert!(report.contains("requests in"), "{report}");
        assert!(
            non_2xx(&report) <= LOST_TO_A_KILL,
            "requests failed:\n{report}"
        );
        assert!(!report.contains("Socket errors"), "{report}");
        assert!(b.requests() > 100);
    }
}

/// What a kill may cost within the contract (DESIGN: "an error after the request was sent is
/// never retried"): a connection the router opened in the microseconds before the listener
/// closed (a new one, or the one replacing a stale pooled connection) is accepted by the kernel,
/// takes a request and is then reset unanswered; nothing shows the backend did not read it, so
/// it is a 502, not a replay. Seen once in ~200k requests over a day's runs.
const LOST_TO_A_KILL: u64 = 2;

/// The count of wrk's "Non-2xx or 3xx responses: N" line; 0 when there is none.
fn non_2xx(report: &str) -> u64 {
    report
        .lines()
        .find_map(|line| line.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .map_or(0, |n| n.trim().parse().expect("wrk's count"))
}

async fn response_heads_up_to_64_kib_pass(engine: &[&str]) {
    let h = Harness::start(engine).await;
    for (id, kib, status) in [("40", 40, 200), ("70", 70, 502)] {
        let mut response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
        for i in 0..kib {
            response.extend_from_slice(format!("X-Big-{i}: {}\r\n", "a".repeat(1000)).as_bytes());
        }
        response.extend_from_slice(b"\r\nok");
        let backend = common::raw_backend(Box::leak(response.into_boxed_slice())).await;
        let service = format!("big{id}");
        h.instance(&service, "i1", backend).await;
        h.route(&format!("http-{id}"), &format!("{id}.test"), "/", &service)
            .await;
        h.wait_status(&format!("{id}.test"), "/", status).await;
        let got = h.get("/", &format!("{id}.test")).await;
        assert_eq!(got.status, status, "{kib} KiB of response head");
    }
}

/// A Content-Length body over 64 KiB with a request pipelined behind it in the same write:
/// both are answered, the body reaches the backend whole (it was a 503 blamed on the backend).
async fn a_body_with_a_request_pipelined_behind_it_reaches_the_backend(engine: &[&str]) {
    let (h, _b) = start(engine, &[]).await;
    let mut raw =
        b"POST / HTTP/1.1\r\nHost: clients.test\r\nContent-Length: 70000\r\n\r\n".to_vec();
    raw.extend(std::iter::repeat_n(b'x', 70000));
    raw.extend_from_slice(b"GET /second HTTP/1.1\r\nHost: clients.test\r\n\r\n");
    let mut conn = Conn::open(&h.router.http.to_string())
        .await
        .expect("connect");
    conn.write(&raw).await.expect("write");
    let first = conn.read_response(false).await.expect("first answer");
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(echoed(&first)["body_len"], 70000);
    let second = conn.read_response(false).await.expect("second answer");
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(echoed(&second)["uri"], "/second");
}
