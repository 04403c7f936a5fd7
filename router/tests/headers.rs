//! What the router adds to requests and strips from both directions.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{echoed, Harness};
use flynn_testkit::backend::{echoed_header, echoed_headers, Backend};
use flynn_testkit::client::{self, Conn};

common::on_both_engines!(
    forwarding_headers_are_appended,
    request_ids_are_kept_when_valid_and_made_otherwise,
    hop_by_hop_request_headers_are_stripped,
    hop_by_hop_response_headers_are_stripped,
    an_http_1_0_backend_is_answered_as_http_1_1_on_a_kept_alive_connection,
);

async fn harness_with_echo(engine: &[&str]) -> (Harness, Backend) {
    let h = Harness::start(engine).await;
    let b = Backend::start("echo").await;
    h.instance("web", "i1", b.addr).await;
    h.route("http-1", "headers.test", "/", "web").await;
    h.wait_status("headers.test", "/", 200).await;
    (h, b)
}

fn one(json: &serde_json::Value, name: &str) -> String {
    let values = echoed_header(json, name);
    assert_eq!(values.len(), 1, "{name}: {values:?}");
    values[0].clone()
}

async fn forwarding_headers_are_appended(engine: &[&str]) {
    let (h, _b) = harness_with_echo(engine).await;
    let port = h.router.http.port().to_string();

    let before_ms = now_ms();
    let response = client::send(
        &h.router.http.to_string(),
        b"GET / HTTP/1.1\r\nHost: headers.test\r\nX-Forwarded-For: 203.0.113.7\r\n\
          X-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\n\r\n",
    )
    .await
    .expect("request");
    let json = echoed(&response);
    assert_eq!(one(&json, "x-forwarded-for"), "203.0.113.7, 127.0.0.1");
    assert_eq!(one(&json, "x-forwarded-proto"), "https, http");
    assert_eq!(one(&json, "x-forwarded-port"), format!("443, {port}"));
    let start: u128 = one(&json, "x-request-start").parse().expect("unix ms");
    assert!(
        start >= before_ms && start <= now_ms(),
        "X-Request-Start {start} not now"
    );

    // Without incoming values, the router's own are the only ones.
    let json = echoed(&h.get("/", "headers.test").await);
    assert_eq!(one(&json, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(one(&json, "x-forwarded-proto"), "http");
    assert_eq!(one(&json, "x-forwarded-port"), port);

    // Repeated X-Forwarded-For lines are joined in order, then ours appended.
    let response = client::send(
        &h.router.http.to_string(),
        b"GET / HTTP/1.1\r\nHost: headers.test\r\nX-Forwarded-For: 10.0.0.1\r\n\
          X-Forwarded-For: 10.0.0.2, 10.0.0.3\r\n\r\n",
    )
    .await
    .expect("request");
    assert_eq!(
        one(&echoed(&response), "x-forwarded-for"),
        "10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"
    );
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

async fn request_ids_are_kept_when_valid_and_made_otherwise(engine: &[&str]) {
    let (h, _b) = harness_with_echo(engine).await;
    let valid = [
        "abcdefghij0123456789",
        "Zm9vYmFyYmF6cXV4cXV1eA==",
        "0f5e1c1a-8a53-4d8f-9f0e-6c3c0d3f2b11",
        &"a".repeat(200),
    ];
    for id in valid {
        let mut conn = Conn::open(&h.router.http.to_string()).await.expect("open");
        let response = conn
            .get("/", "headers.test", &[("X-Request-Id", id)])
            .await
            .expect("request");
        assert_eq!(one(&echoed(&response), "x-request-id"), id);
    }
    let long = "a".repeat(201);
    let invalid = [
        "short",
        "has space in the middle!!",
        "semi;colon_underscore___",
        &long,
    ];
    for id in invalid {
        let mut conn = Conn::open(&h.router.http.to_string()).await.expect("open");
        let response = conn
            .get("/", "headers.test", &[("X-Request-Id", id)])
            .await
            .expect("request");
        let got = one(&echoed(&response), "x-request-id");
        assert_ne!(got, id);
        assert!(is_uuid(&got), "{got} is not a fresh UUID");
    }
    // None sent: one is made, and a new one per request.
    let first = one(&echoed(&h.get("/", "headers.test").await), "x-request-id");
    let second = one(&echoed(&h.get("/", "headers.test").await), "x-request-id");
    assert!(is_uuid(&first) && is_uuid(&second));
    assert_ne!(first, second);
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

async fn hop_by_hop_request_headers_are_stripped(engine: &[&str]) {
    let (h, _b) = harness_with_echo(engine).await;
    let response = client::send(
        &h.router.http.to_string(),
        b"GET / HTTP/1.1\r\nHost: headers.test\r\nConnection: keep-alive, X-Secret\r\n\
          X-Secret: do-not-forward\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
          TE: trailers\r\nX-Kept: yes\r\n\r\n",
    )
    .await
    .expect("request");
    let json = echoed(&response);
    let names: Vec<String> = echoed_headers(&json)
        .into_iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect();
    for stripped in ["x-secret", "keep-alive", "proxy-connection", "te"] {
        assert!(
            !names.contains(&stripped.to_owned()),
            "{stripped} reached the backend: {names:?}"
        );
    }
    assert_eq!(one(&json, "x-kept"), "yes");
    assert_eq!(one(&json, "host"), "headers.test");
}

async fn hop_by_hop_response_headers_are_stripped(engine: &[&str]) {
    let h = Harness::start(engine).await;
    let addr = common::raw_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive, X-Internal\r\n\
          X-Internal: secret\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\n\
          X-Public: visible\r\n\r\nok\n",
    )
    .await;
    h.instance("web", "raw", addr).await;
    h.route("http-1", "raw.test", "/", "web").await;
    h.wait_status("raw.test", "/", 200).await;

    let mut conn = Conn::open(&h.router.http.to_string()).await.expect("open");
    for _ in 0..3 {
        let response = conn.get("/", "raw.test", &[]).await.expect("response");
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "ok\n");
        for stripped in ["x-internal", "keep-alive", "proxy-authenticate"] {
            assert!(
                response.header(stripped).is_none(),
                "{stripped} reached the client: {:?}",
                response.headers
            );
        }
        assert_eq!(response.header("x-public"), Some("visible"));
        // The router's own connection management towards the client stays keep-alive.
        assert_ne!(
            response
                .header("connection")
                .map(|v| v.to_ascii_lowercase()),
            Some("close".into())
        );
    }
}

async fn an_http_1_0_backend_is_answered_as_http_1_1_on_a_kept_alive_connection(engine: &[&str]) {
    let h = Harness::start(engine).await;
    let addr = common::raw_backend(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n").await;
    h.instance("web", "old", addr).await;
    h.route("http-1", "old.test", "/", "web").await;
    h.wait_status("old.test", "/", 200).await;

    // A proxy answers with its own version (RFC 9110 §6.2), and the client's connection
    // stays open for the next request whatever the backend spoke.
    let mut conn = Conn::open(&h.router.http.to_string()).await.expect("open");
    for _ in 0..3 {
        let response = conn.get("/", "old.test", &[]).await.expect("response");
        assert_eq!((response.minor_version, response.status), (1, 200));
        assert_eq!(response.text(), "ok\n");
    }
}
