//! The HTTP/1.1 fast path (router/src/proxy/h1) and its hand-over to pingora's proxy: they
//! serve one client connection in turn, and the client sees the same router either way.

mod common;

use std::time::{Duration, Instant};

use common::{echoed, raw_backend, raw_backend_with, raw_server, read_head, Harness};
use flynn_testkit::backend::Backend;
use flynn_testkit::client::Conn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HANDED_OVER: &str = "flynn_router_h1_handed_over_total";

async fn with_echo(domain: &str) -> (Harness, Backend) {
    let h = Harness::start(&[]).await;
    let echo = Backend::start("echo").await;
    h.instance("web", "echo", echo.addr).await;
    h.route("http-1", domain, "/", "web").await;
    h.wait_status(domain, "/", 200).await;
    (h, echo)
}

#[tokio::test]
async fn plain_requests_stay_on_the_fast_path_and_the_rest_are_handed_over() {
    let (h, _echo) = with_echo("fast.test").await;
    assert_eq!(h.router.metric(HANDED_OVER).await, 0.0);
    let mut conn = Conn::open(&h.router.http.to_string()).await.expect("open");

    let response = conn.get("/a?b=c", "fast.test", &[]).await.expect("GET");
    assert_eq!(response.status, 200);
    assert_eq!(echoed(&response)["uri"], "/a?b=c");
    let response = conn
        .request(b"POST /up HTTP/1.1\r\nHost: fast.test\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .expect("POST");
    assert_eq!(echoed(&response)["method"], "POST");
    assert_eq!(echoed(&response)["body_len"], 5);
    conn.write(b"HEAD / HTTP/1.1\r\nHost: fast.test\r\n\r\n")
        .await
        .expect("HEAD");
    let response = conn.read_response(true).await.expect("HEAD response");
    assert_eq!(response.status, 200);
    let response = conn
        .get("/unknown", "nowhere.test", &[])
        .await
        .expect("404");
    assert_eq!(
        (response.status, response.text().as_str()),
        (404, "Not Found\n")
    );
    assert_eq!(h.router.metric(HANDED_OVER).await, 0.0);

    // A chunked upload is pingora's, and so is the rest of the connection.
    let response = conn
        .request(
            b"POST /chunked HTTP/1.1\r\nHost: fast.test\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n",
        )
        .await
        .expect("chunked POST");
    assert_eq!(response.status, 200);
    assert_eq!(echoed(&response)["body_len"], 5);
    let response = conn
        .get("/after", "fast.test", &[])
        .await
        .expect("GET after");
    assert_eq!(echoed(&response)["uri"], "/after");
    assert_eq!(h.router.metric(HANDED_OVER).await, 1.0);
}

/// Writes `requests` at once, then reads one response per `(uri, body_len)` the backend echoed,
/// in that order.
async fn pipeline(conn: &mut Conn, requests: &[u8], answers: &[(&str, usize)]) {
    conn.write(requests).await.expect("write");
    for (uri, body_len) in answers {
        let response = conn.read_response(false).await.expect("response");
        assert_eq!(echoed(&response)["uri"], *uri);
        assert_eq!(echoed(&response)["body_len"], *body_len);
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (h, _echo) = with_echo("pipe.test").await;
    let mut conn = Conn::open(&h.router.http.to_string()).await.expect("open");
    pipeline(
        &mut conn,
        b"GET /1 HTTP/1.1\r\nHost: pipe.test\r\n\r\n\
          POST /2 HTTP/1.1\r\nHost: pipe.test\r\nContent-Length: 3\r\n\r\nabc\
          GET /3 HTTP/1.1\r\nHost: pipe.test\r\n\r\n",
        &[("/1", 0), ("/2", 3), ("/3", 0)],
    )
    .await;
    assert_eq!(h.router.metric(HANDED_OVER).await, 0.0);

    // A chunked upload in the middle: pingora answers it and what follows, in order.
    pipeline(
        &mut conn,
        b"GET /4 HTTP/1.1\r\nHost: pipe.test\r\n\r\n\
          POST /5 HTTP/1.1\r\nHost: pipe.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          2\r\nab\r\n0\r\n\r\n\
          GET /6 HTTP/1.1\r\nHost: pipe.test\r\n\r\n",
        &[("/4", 0), ("/5", 2), ("/6", 0)],
    )
    .await;
    assert_eq!(h.router.metric(HANDED_OVER).await, 1.0);
}

#[tokio::test]
async fn request_bodies_arrive_whole_however_they_are_sent() {
    let (h, _echo) = with_echo("body.test").await;
    let mut conn = Conn::open(&h.router.http.to_string()).await.expect("open");

    // The head first, then the body in pieces: streamed to the backend as it comes.
    let size = 60_000;
    conn.write(
        format!("PUT /put HTTP/1.1\r\nHost: body.test\r\nContent-Length: {size}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("head");
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.write(&vec![b'x'; size / 3]).await.expect("body");
    }
    let response = conn.read_response(false).await.expect("response");
    assert_eq!(echoed(&response)["body_len"], size);
    assert_eq!(h.router.metric(HANDED_OVER).await, 0.0);

    // A body above 64 KiB goes to pingora, which streams both ways at once.
    let size = 100_000;
    let mut raw =
        format!("POST /big HTTP/1.1\r\nHost: body.test\r\nContent-Length: {size}\r\n\r\n")
            .into_bytes();
    raw.extend(std::iter::repeat_n(b'y', size));
    let response = conn.request(&raw).await.expect("big POST");
    assert_eq!(echoed(&response)["body_len"], size);
    assert_eq!(h.router.metric(HANDED_OVER).await, 1.0);
}

#[tokio::test]
async fn every_response_framing_reaches_the_client_on_a_kept_connection() {
    let h = Harness::start(&[]).await;
    let backends = [
        (
            "/",
            raw_backend(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            )
            .await,
        ),
        (
            "/eof/",
            raw_backend_with(b"HTTP/1.1 200 OK\r\nX-Kind: eof\r\n\r\nuntil the end", true).await,
        ),
        (
            "/hints/",
            raw_backend(
                b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n\
                  HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            )
            .await,
        ),
        (
            "/empty/",
            raw_backend(b"HTTP/1.1 204 No Content\r\n\r\n").await,
        ),
    ];
    for (i, (path, addr)) in backends.iter().enumerate() {
        let service = format!("svc-{i}");
        h.instance(&service, "raw", *addr).await;
        h.route(&format!("http-{i}"), "framing.test", path, &service)
            .await;
    }
    // Routes apply in the order they were written: the last one serving means all do.
    h.wait_status("framing.test", "/empty/", 204).await;

    let mut conn = Conn::open(&h.router.http.to_string()).await.expect("open");
    for _ in 0..2 {
        let response = conn.get("/", "framing.test", &[]).await.expect("chunked");
        assert_eq!(response.text(), "hello world");

        // A body that ends with the backend's connection goes out chunked, the client's stays.
        let response = conn.get("/eof/", "framing.test", &[]).await.expect("eof");
        assert_eq!(response.header("x-kind"), Some("eof"));
        assert_eq!(response.header("transfer-encoding"), Some("chunked"));
        assert_eq!(response.text(), "until the end");

        let response = conn.get("/hints/", "framing.test", &[]).await.expect("103");
        assert_eq!(response.status, 103);
        assert_eq!(response.header("link"), Some("</s.css>"));
        let response = conn.read_response(false).await.expect("200 after 103");
        assert_eq!((response.status, response.text().as_str()), (200, "ok"));

        let response = conn.get("/empty/", "framing.test", &[]).await.expect("204");
        assert_eq!(response.status, 204);
    }
    assert_eq!(h.router.metric(HANDED_OVER).await, 0.0);
}

#[tokio::test]
async fn a_client_that_hangs_up_frees_the_backend_connection() {
    // Answers `GET /` at once; on `GET /hang` answers nothing and reports how soon after the
    // request the router closed the connection.
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = raw_server(move |mut stream| {
        let closed = closed_tx.clone();
        async move {
            let mut seen = Vec::new();
            while let Some(len) = read_head(&mut stream, &mut seen).await {
                if seen.starts_with(b"GET /hang ") {
                    let asked = Instant::now();
                    let eof = tokio::time::timeout(Duration::from_secs(10), stream.read_u8());
                    let hung_up = matches!(eof.await, Ok(Err(_)));
                    let _ = closed.send(hung_up.then(|| asked.elapsed()));
                    return;
                }
                seen.drain(..len);
                let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                if stream.write_all(ok).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let h = Harness::start(&[]).await;
    h.instance("web", "thinker", addr).await;
    h.route("http-1", "hangup.test", "/", "web").await;
    h.wait_status("hangup.test", "/", 200).await;

    let mut conn = Conn::open(&h.router.http.to_string()).await.expect("open");
    conn.write(b"GET /hang HTTP/1.1\r\nHost: hangup.test\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(conn);
    let closed_after = tokio::time::timeout(Duration::from_secs(15), closed_rx.recv())
        .await
        .expect("the backend reports")
        .flatten()
        .expect("the router closed the backend connection");
    assert!(
        closed_after < Duration::from_secs(2),
        "the backend connection stayed open {closed_after:?} after the client left"
    );
}

#[tokio::test]
async fn a_pooled_connection_found_closed_is_retried_for_idempotent_requests_only() {
    stale_pooled_connection(&[]).await;
}

#[tokio::test]
async fn pingoras_path_retries_a_pooled_connection_found_closed_too() {
    stale_pooled_connection(&["--h1-fast-path", "false"]).await;
}

async fn stale_pooled_connection(router_flags: &[&str]) {
    // Answers the first request on each connection (keeping it open) and hangs up on the
    // second as soon as it arrives: the race of a backend closing an idle connection just as
    // the router reuses it, every time.
    let addr = raw_server(|mut stream| async move {
        if read_head(&mut stream, &mut Vec::new()).await.is_none() {
            return;
        }
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        if stream.write_all(ok).await.is_ok() {
            // The next request's first bytes end the connection unanswered.
            let _ = stream.read_u8().await;
        }
    })
    .await;
    let h = Harness::start(router_flags).await;
    h.instance("web", "flaky", addr).await;
    h.route("http-1", "stale.test", "/", "web").await;
    h.wait_status("stale.test", "/", 200).await;

    // Each request finds the pooled connection of the one before and the backend hanging up.
    let http = h.router.http.to_string();
    for _ in 0..3 {
        let response = Conn::open(&http)
            .await
            .expect("open")
            .get("/", "stale.test", &[])
            .await
            .expect("GET");
        assert_eq!((response.status, response.text().as_str()), (200, "ok"));
    }
    // A POST may have been acted on: it is not sent twice. (Given a moment, so that the
    // connection of the last GET is back in the pool when the POST comes.)
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let response = Conn::open(&http)
        .await
        .expect("open")
        .request(b"POST / HTTP/1.1\r\nHost: stale.test\r\nContent-Length: 1\r\n\r\nx")
        .await
        .expect("POST");
    assert_eq!(response.status, 502);
}

#[tokio::test]
async fn a_connection_idle_long_enough_to_give_its_buffers_back_is_served_as_before() {
    let (h, _echo) = with_echo("idle.test").await;
    let mut conn = Conn::open(&h.router.http.to_string()).await.expect("open");
    let response = conn.get("/before", "idle.test", &[]).await.expect("GET");
    assert_eq!(echoed(&response)["uri"], "/before");

    // Idle past the 1 s after which the fast path gives the connection's buffers back; the next
    // request (longer than what is first read into a small buffer) takes new ones.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let long_path = format!("/after/{}", "x".repeat(300));
    let response = conn
        .request(
            format!(
                "POST {long_path} HTTP/1.1\r\nHost: idle.test\r\nContent-Length: 4\r\n\
                 X-Padding: {}\r\n\r\nbody",
                "p".repeat(200)
            )
            .as_bytes(),
        )
        .await
        .expect("POST after idling");
    assert_eq!(echoed(&response)["uri"], long_path.as_str());
    assert_eq!(echoed(&response)["body_len"], 4);
    let response = conn.get("/again", "idle.test", &[]).await.expect("GET");
    assert_eq!(echoed(&response)["uri"], "/again");
    assert_eq!(h.router.metric(HANDED_OVER).await, 0.0);
}

/// A response body cut off on the way is counted by the side that failed
/// (`flynn_router_h1_relay_errors_total{side}`): the backend closing early, a broken chunked
/// body, a backend silent past the upstream timeout. (The `client` side, a client that goes
/// away mid-body, is not exercised here.)
#[tokio::test]
async fn a_body_cut_off_is_counted_by_the_side_that_failed() {
    let h = Harness::start(&["--upstream-timeout", "500ms"]).await;
    let short = raw_backend_with(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", true).await;
    let broken = raw_backend(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").await;
    // The head and part of the body, then silence.
    let silent = raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").await;
    for (name, addr) in [("short", short), ("broken", broken), ("silent", silent)] {
        h.instance(name, "raw", addr).await;
        h.route(&format!("http-{name}"), &format!("{name}.test"), "/", name)
            .await;
    }
    // Their bodies never end: wait for each route by its status line alone.
    for host in ["short.test", "broken.test", "silent.test"] {
        let addr = h.router.http;
        flynn_testkit::eventually(common::APPLY, host, || async move {
            let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
                return false;
            };
            let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            let _ = stream.write_all(request.as_bytes()).await;
            let mut got = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut got)).await;
            // Routed: not the router's 404 or 503 (a broken chunked body is its 502).
            !got.starts_with(b"HTTP/1.1 404") && !got.starts_with(b"HTTP/1.1 503")
        })
        .await
        .expect("routes applied");
    }
    let sample = |side: &str| format!("flynn_router_h1_relay_errors_total{{side=\"{side}\"}}");
    let mut before = Vec::new();
    for side in ["backend", "malformed", "timeout"] {
        before.push(h.router.metric(&sample(side)).await);
    }
    for (host, side) in [
        ("short.test", "backend"),
        ("broken.test", "malformed"),
        ("silent.test", "timeout"),
    ] {
        let mut stream = tokio::net::TcpStream::connect(h.router.http)
            .await
            .expect("connect");
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "{host}: still open");
        if side == "malformed" {
            // Broken before anything of it could be passed on: the router's 502 instead of the
            // head. (Pingora's path writes the head before it reads the body: there a client
            // still gets the head, then a close.)
            assert!(
                got.starts_with(b"HTTP/1.1 502 ") && whole_response(&got),
                "{host}: {}",
                String::from_utf8_lossy(&got)
            );
            continue;
        }
        // The head goes out, then the connection is closed where the body broke off. What was
        // passed on is never a whole response: the client can tell it was cut off.
        assert!(
            !whole_response(&got),
            "{host} ({side}): {}",
            String::from_utf8_lossy(&got)
        );
    }
    for (i, side) in ["backend", "malformed", "timeout"].into_iter().enumerate() {
        assert_eq!(
            h.router.metric(&sample(side)).await,
            before[i] + 1.0,
            "{side}"
        );
    }
}

/// Whether `got` is a whole response by its own framing: as many body bytes as its
/// Content-Length, or a chunked body up to its last chunk.
fn whole_response(got: &[u8]) -> bool {
    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    let body = &got[end + 4..];
    if head.contains("\r\ntransfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .is_some_and(|n| body.len() >= n)
}

#[test]
fn whole_response_tells_a_cut_off_body() {
    assert!(whole_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
    ));
    assert!(!whole_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
    ));
    assert!(whole_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    ));
    assert!(!whole_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
    ));
    assert!(!whole_response(b""));
}
