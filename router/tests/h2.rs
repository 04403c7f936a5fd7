//! HTTP/2 clients, over h2c (prior knowledge) and TLS (ALPN h2), on both engines: with the fast
//! path on, plain streams to HTTP/1 backends take the router's own path (`proxy::h2`); off, every
//! stream is pingora's. Checked with real curl, nghttp and h2load clients: routing, the router's
//! own answers, forwarding headers, cookies, sticky sessions, retries, backend failures, bodies
//! of every framing, uploads, many streams at once, a slow stream beside fast ones on one
//! connection, and clients that go away mid-body.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::{raw_backend, raw_backend_with, raw_server, read_head, Harness};
use flynn_testkit::backend::{echoed_header, Backend};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::process::Command;

common::on_both_engines!(
    routing_and_the_routers_own_answers,
    forwarding_headers_host_and_cookies,
    sticky_sessions_pin_http2_clients,
    a_refusing_instance_costs_no_request,
    backend_failures_get_the_routers_answers,
    bodies_of_every_framing_reach_the_client,
    uploads_reach_the_backend,
    many_concurrent_streams,
    a_slow_stream_does_not_hold_up_its_connection,
    a_client_gone_mid_body_does_not_poison_the_pool,
);

/// The router with h2c on, for one engine.
async fn start(engine: &[&str], extra: &[&str]) -> Harness {
    let mut flags = common::flags(engine, &["--h2c"]);
    flags.extend_from_slice(extra);
    Harness::start(&flags).await
}

/// Whether this engine is the fast path.
fn fast(engine: &[&str]) -> bool {
    engine.last() == Some(&"true")
}

/// How a request is sent: h2c with prior knowledge, or TLS with ALPN h2.
#[derive(Clone, Copy, Debug)]
enum Via {
    H2c,
    Tls,
}

const BOTH: [Via; 2] = [Via::H2c, Via::Tls];

impl Via {
    /// The URL scheme and the router's port for this way.
    fn endpoint(self, h: &Harness) -> (&'static str, u16) {
        match self {
            Via::H2c => ("http", h.router.http.port()),
            Via::Tls => ("https", h.router.https.port()),
        }
    }
}

/// A response as curl saw it.
#[derive(Debug)]
struct Reply {
    /// curl's exit code.
    code: i32,
    status: u16,
    /// `2` for HTTP/2.
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{e}: {} {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn backend(&self) -> String {
        self.json()["backend"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Sends one request with curl over HTTP/2 to `host` (resolved to the router) and `path`.
async fn curl(h: &Harness, via: Via, host: &str, path: &str, extra: &[&str]) -> Reply {
    let (scheme, port) = via.endpoint(h);
    let how = match via {
        Via::H2c => "--http2-prior-knowledge",
        Via::Tls => "--http2",
    };
    let out = Command::new("curl")
        .args(["-sS", "-k", "-i", "--max-time", "20", how, "--resolve"])
        .arg(format!("{host}:{port}:127.0.0.1"))
        .args(extra)
        .arg(format!("{scheme}://{host}:{port}{path}"))
        .stdin(Stdio::null())
        .output()
        .await
        .expect("curl is installed");
    parse_reply(out.status.code().unwrap_or(-1), &out.stdout)
}

/// curl's `-i` output: the final head (interim ones skipped) and the body.
fn parse_reply(code: i32, mut raw: &[u8]) -> Reply {
    loop {
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Reply {
                code,
                status: 0,
                version: String::new(),
                headers: Vec::new(),
                body: raw.to_vec(),
            };
        };
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let body = &raw[end + 4..];
        let mut lines = head.split("\r\n");
        let mut status_line = lines.next().unwrap_or_default().split_whitespace();
        let version = status_line.next().unwrap_or_default().replace("HTTP/", "");
        let status: u16 = status_line.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        if (100..200).contains(&status) {
            raw = body;
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        return Reply {
            code,
            status,
            version,
            headers,
            body: body.to_vec(),
        };
    }
}

/// The fast path's and pingora's counts of HTTP/2 streams.
async fn streams(h: &Harness) -> (f64, f64) {
    let text = h.router.metrics().await;
    let count = |name| common::metric_value(&text, name).unwrap_or(-1.0);
    (
        count("flynn_router_h2_fast_streams_total"),
        count("flynn_router_h2_handed_over_total"),
    )
}

/// The router's own answer with `status`, the same on every engine and protocol.
fn assert_own_answer(reply: &Reply, status: u16, body: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.version, "2", "{reply:?}");
    assert_eq!(String::from_utf8_lossy(&reply.body), body, "{reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(
        reply.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert!(reply.header("server").is_none(), "{reply:?}");
}

async fn routing_and_the_routers_own_answers(engine: &[&str]) {
    let h = start(engine, &[]).await;
    let root = Backend::start("root").await;
    let api = Backend::start("api").await;
    let wild = Backend::start("wild").await;
    h.instance("root", "i1", root.addr).await;
    h.instance("api", "i1", api.addr).await;
    h.instance("wild", "i1", wild.addr).await;
    h.route("http-1", "shop.test", "/", "root").await;
    h.route("http-2", "shop.test", "/api", "api").await;
    h.route("http-3", "*.wild.test", "/", "wild").await;
    h.wait_status("shop.test", "/", 200).await;
    h.wait_status("a.wild.test", "/", 200).await;

    for via in BOTH {
        for (host, path, backend) in [
            ("shop.test", "/", "root"),
            ("SHOP.test", "/x?y=1", "root"),
            ("shop.test", "/api/v1", "api"),
            ("shop.test", "/apix", "root"),
            ("a.wild.test", "/", "wild"),
            ("a.b.wild.test", "/api", "wild"),
        ] {
            let reply = curl(&h, via, host, path, &[]).await;
            assert_eq!(reply.status, 200, "{via:?} {host}{path}: {reply:?}");
            assert_eq!(reply.version, "2");
            assert_eq!(reply.backend(), backend, "{via:?} {host}{path}");
            assert_eq!(reply.json()["uri"], path, "{via:?}: the path byte for byte");
            assert_eq!(reply.json()["version"], "HTTP/1.1");
            assert!(reply.header("date").is_some());
            assert!(reply.header("connection").is_none());
        }
        let reply = curl(&h, via, "nowhere.test", "/", &[]).await;
        assert_own_answer(&reply, 404, "Not Found\n");
        let reply = curl(&h, via, "wild.test", "/", &[]).await;
        assert_own_answer(&reply, 404, "Not Found\n");
    }

    let (fast_streams, handed_over) = streams(&h).await;
    if fast(engine) {
        assert!(fast_streams >= 16.0, "{fast_streams}");
        assert_eq!(handed_over, 0.0);
    } else {
        assert_eq!((fast_streams, handed_over), (0.0, 0.0));
    }
    // Every stream answered is counted, whichever engine answered it.
    let counted = h
        .router
        .metric("flynn_router_requests_total{class=\"2xx\"}")
        .await;
    assert!(counted >= 12.0, "{counted}");
    let counted = h
        .router
        .metric("flynn_router_requests_total{class=\"4xx\"}")
        .await;
    assert!(counted >= 4.0, "{counted}");
}

async fn forwarding_headers_host_and_cookies(engine: &[&str]) {
    let h = start(engine, &[]).await;
    let b = Backend::start("web").await;
    h.instance("web", "i1", b.addr).await;
    h.route("http-1", "fwd.test", "/", "web").await;
    h.wait_status("fwd.test", "/", 200).await;

    for via in BOTH {
        let (proto, port) = via.endpoint(&h);
        let reply = curl(
            &h,
            via,
            "fwd.test",
            "/p?q=1",
            &[
                "-H",
                "X-Forwarded-For: 10.1.2.3",
                "-H",
                "X-Request-Id: abcdefghij0123456789",
                "-H",
                "X-App: one",
            ],
        )
        .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let json = reply.json();
        let header = |name| echoed_header(&json, name);
        assert_eq!(header("host"), [format!("fwd.test:{port}")], "{via:?}");
        assert_eq!(header("x-forwarded-for"), ["10.1.2.3, 127.0.0.1"]);
        assert_eq!(header("x-forwarded-proto"), [proto]);
        assert_eq!(header("x-forwarded-port"), [port.to_string()]);
        assert_eq!(header("x-request-id"), ["abcdefghij0123456789"]);
        assert_eq!(header("x-app"), ["one"]);
        let start = header("x-request-start");
        assert!(start.len() == 1 && start[0].len() >= 13, "{start:?}");

        // Without a valid id of its own, the request gets a fresh one.
        let reply = curl(&h, via, "fwd.test", "/", &["-H", "X-Request-Id: short"]).await;
        let ids = echoed_header(&reply.json(), "x-request-id");
        assert!(ids.len() == 1 && ids[0].len() == 36, "{ids:?}");
    }

    // Two cookie fields (as HTTP/2 clients send them) reach the HTTP/1 backend as one.
    let port = h.router.http.port();
    let out = Command::new("nghttp")
        .args(["-H", "cookie: a=1", "-H", "cookie: b=2", "-H"])
        .arg(format!(":authority: fwd.test:{port}"))
        .arg(format!("http://127.0.0.1:{port}/cookies"))
        .output()
        .await
        .expect("nghttp is installed (nghttp2-client)");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(json["uri"], "/cookies");
    assert_eq!(echoed_header(&json, "cookie"), ["a=1; b=2"]);
    assert_eq!(echoed_header(&json, "host"), [format!("fwd.test:{port}")]);
}

async fn sticky_sessions_pin_http2_clients(engine: &[&str]) {
    let h = start(engine, &[]).await;
    let backends = [
        Backend::start("alpha").await,
        Backend::start("bravo").await,
        Backend::start("charlie").await,
    ];
    for b in &backends {
        h.instance("web", &b.name, b.addr).await;
    }
    h.route_with("http-1", "sticky.test", "/", "web", json!({"sticky": true}))
        .await;
    h.wait_status("sticky.test", "/", 200).await;

    for via in BOTH {
        let first = curl(&h, via, "sticky.test", "/", &[]).await;
        assert_eq!(first.status, 200, "{first:?}");
        let pinned = first.backend();
        let set_cookie = first
            .header("set-cookie")
            .expect("a new client gets a cookie");
        let cookie = set_cookie.split(';').next().unwrap_or_default().to_owned();
        assert!(cookie.starts_with("_backend="), "{set_cookie}");
        assert_eq!(
            set_cookie.contains("Secure"),
            matches!(via, Via::Tls),
            "{set_cookie}"
        );
        for _ in 0..6 {
            let header = format!("Cookie: other=1; {cookie}");
            let reply = curl(&h, via, "sticky.test", "/", &["-H", &header]).await;
            assert_eq!(reply.backend(), pinned, "{via:?}: pinned by the cookie");
            assert!(reply.header("set-cookie").is_none(), "set only on a change");
            let json = reply.json();
            assert_eq!(echoed_header(&json, "cookie"), ["other=1"], "{via:?}");
        }
    }
}

async fn a_refusing_instance_costs_no_request(engine: &[&str]) {
    let h = start(engine, &[]).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let refusing = listener.local_addr().expect("addr");
    drop(listener);
    let b = Backend::start("live").await;
    h.instance("web", "dead", refusing).await;
    h.instance("web", "live", b.addr).await;
    h.route("http-1", "retry.test", "/", "web").await;
    h.wait_status("retry.test", "/", 200).await;
    // Counted from here: while the route and its instances were being applied, the wait above
    // may have seen a 503.
    let server_errors = "flynn_router_requests_total{class=\"5xx\"}";
    let before = h.router.metric(server_errors).await;

    for via in BOTH {
        for _ in 0..10 {
            let reply = curl(&h, via, "retry.test", "/", &[]).await;
            assert_eq!(reply.status, 200, "{via:?}: {reply:?}");
            assert_eq!(reply.backend(), "live");
        }
    }
    assert_eq!(h.router.metric(server_errors).await, before);
}

async fn backend_failures_get_the_routers_answers(engine: &[&str]) {
    let h = start(engine, &["--upstream-timeout", "500ms"]).await;
    let bad = raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello").await;
    h.instance("bad", "i1", bad).await;
    h.route("http-1", "bad.test", "/", "bad").await;
    let hanging = raw_server(|mut stream| async move {
        let mut seen = Vec::new();
        let _ = read_head(&mut stream, &mut seen).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    h.instance("hang", "i1", hanging).await;
    h.route("http-2", "hang.test", "/", "hang").await;
    h.route("http-3", "empty.test", "/", "nobody").await;
    // A chunked body broken before its first byte: the response head is still the router's to
    // replace (the fast path's HTTP/2 head waits for the body's first byte).
    let broken = raw_backend(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").await;
    h.instance("broken", "i1", broken).await;
    h.route("http-4", "broken.test", "/", "broken").await;
    h.wait_status("bad.test", "/", 502).await;
    h.wait_status("empty.test", "/", 503).await;

    for via in BOTH {
        let reply = curl(&h, via, "bad.test", "/", &[]).await;
        assert_own_answer(&reply, 502, "Bad Gateway\n");
        let reply = curl(&h, via, "empty.test", "/", &[]).await;
        assert_own_answer(&reply, 503, "Service Unavailable\n");
        let reply = curl(&h, via, "hang.test", "/", &[]).await;
        assert_own_answer(&reply, 504, "Gateway Timeout\n");
        if fast(engine) {
            let reply = curl(&h, via, "broken.test", "/", &[]).await;
            assert_own_answer(&reply, 502, "Bad Gateway\n");
        }
    }
}

/// A body of `len` bytes that is not the same all along.
fn big_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// A backend that answers every request with `head` and then `body`, kept alive.
async fn body_backend(head: String, body: &'static [u8]) -> SocketAddr {
    let head: &'static [u8] = head.into_bytes().leak();
    raw_server(move |mut stream| async move {
        let mut seen = Vec::new();
        while let Some(len) = read_head(&mut stream, &mut seen).await {
            seen.drain(..len);
            if stream.write_all(head).await.is_err() || stream.write_all(body).await.is_err() {
                return;
            }
        }
    })
    .await
}

async fn bodies_of_every_framing_reach_the_client(engine: &[&str]) {
    let h = start(engine, &[]).await;
    const LARGE: usize = 10 * 1024 * 1024;
    let large: &'static [u8] = big_body(LARGE).leak();
    let sized = body_backend(
        format!("HTTP/1.1 200 OK\r\nContent-Length: {LARGE}\r\nX-Kind: sized\r\n\r\n"),
        large,
    )
    .await;
    let chunked = raw_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n",
    )
    .await;
    let until_close = raw_backend_with(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", true).await;
    let b = Backend::start("echo").await;
    for (service, addr) in [
        ("sized", sized),
        ("chunked", chunked),
        ("close", until_close),
        ("echo", b.addr),
    ] {
        h.instance(service, "i1", addr).await;
        h.route(
            &format!("http-{service}"),
            &format!("{service}.test"),
            "/",
            service,
        )
        .await;
    }
    h.wait_status("echo.test", "/", 200).await;
    h.wait_status("close.test", "/", 200).await;

    for via in BOTH {
        // 10 MiB: more than any flow-control window, so it is passed on as the client reads.
        let reply = curl(&h, via, "sized.test", "/", &[]).await;
        assert_eq!((reply.code, reply.status), (0, 200), "{via:?}");
        assert_eq!(reply.header("x-kind"), Some("sized"));
        assert_eq!(
            reply.header("content-length"),
            Some(LARGE.to_string().as_str())
        );
        assert!(
            reply.body == large,
            "{via:?}: {} bytes differ",
            reply.body.len()
        );

        let reply = curl(&h, via, "chunked.test", "/", &[]).await;
        assert_eq!((reply.code, reply.status), (0, 200), "{via:?}: {reply:?}");
        assert_eq!(reply.body, b"hello world", "{via:?}: decoded");
        assert!(reply.header("transfer-encoding").is_none());

        let reply = curl(&h, via, "close.test", "/", &[]).await;
        assert_eq!((reply.code, reply.status), (0, 200), "{via:?}: {reply:?}");
        assert_eq!(reply.body, b"until the end", "{via:?}");

        let reply = curl(&h, via, "sized.test", "/", &["-I"]).await;
        assert_eq!(
            (reply.code, reply.status),
            (0, 200),
            "{via:?}: HEAD {reply:?}"
        );
        assert_eq!(
            reply.header("content-length"),
            Some(LARGE.to_string().as_str())
        );
        assert!(reply.body.is_empty());

        let reply = curl(&h, via, "echo.test", "/status/204", &[]).await;
        assert_eq!((reply.code, reply.status), (0, 204), "{via:?}: {reply:?}");
        assert!(reply.body.is_empty());

        // The sized backend's connection was kept and reused: it answers again, whole.
        let reply = curl(&h, via, "sized.test", "/again", &[]).await;
        assert!(reply.body == large, "{via:?}: again");
    }
}

async fn uploads_reach_the_backend(engine: &[&str]) {
    let h = start(engine, &[]).await;
    let b = Backend::start("web").await;
    h.instance("web", "i1", b.addr).await;
    h.route("http-1", "up.test", "/", "web").await;
    h.wait_status("up.test", "/", 200).await;
    let dir = tempfile::tempdir().expect("dir");
    // Small (the fast path reads it whole first) and large (pingora streams it).
    for len in [1000usize, 64 * 1024, 300 * 1024] {
        let file = dir.path().join(format!("body-{len}"));
        std::fs::write(&file, big_body(len)).expect("write body");
        let data = format!("@{}", file.display());
        for via in BOTH {
            let reply = curl(&h, via, "up.test", "/upload", &["--data-binary", &data]).await;
            assert_eq!(reply.status, 200, "{via:?} {len}: {reply:?}");
            let json = reply.json();
            assert_eq!(json["method"], "POST");
            assert_eq!(json["body_len"], len, "{via:?}");
            assert_eq!(echoed_header(&json, "content-length"), [len.to_string()]);
        }
    }
    // An empty POST.
    let reply = curl(&h, Via::H2c, "up.test", "/", &["-X", "POST"]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["body_len"], 0);
}

/// Runs h2load: 2000 requests on 4 connections with 25 streams in flight each; panics unless
/// every one got a 2xx over HTTP/2.
async fn h2load(uri: &str, connect_to: SocketAddr) {
    let out = Command::new("h2load")
        .args(["-n2000", "-c4", "-m25"])
        .arg(format!("--connect-to={connect_to}"))
        .arg(uri)
        .output()
        .await
        .expect("h2load is installed (nghttp2-client)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "h2load {uri}:\n{stdout}");
    assert!(stdout.contains("Application protocol: h2"), "{stdout}");
    assert!(
        stdout.contains("requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed"),
        "h2load {uri}:\n{stdout}"
    );
    assert!(stdout.contains("status codes: 2000 2xx"), "{stdout}");
}

async fn many_concurrent_streams(engine: &[&str]) {
    let h = start(engine, &[]).await;
    let b1 = Backend::start("a").await;
    let b2 = Backend::start("b").await;
    h.instance("web", "i1", b1.addr).await;
    h.instance("web", "i2", b2.addr).await;
    h.route("http-1", "streams.test", "/", "web").await;
    h.wait_status("streams.test", "/", 200).await;

    let https = h.router.https;
    h2load(&format!("https://streams.test:{}/", https.port()), https).await;
    let http = h.router.http;
    h2load(&format!("http://streams.test:{}/", http.port()), http).await;
    assert!(b1.requests() > 0 && b2.requests() > 0);
    let (fast_streams, _) = streams(&h).await;
    if fast(engine) {
        assert!(fast_streams >= 4000.0, "{fast_streams}");
    }
    let counted = h
        .router
        .metric("flynn_router_requests_total{class=\"2xx\"}")
        .await;
    assert!(counted >= 4000.0, "{counted}");
}

/// A stream waiting on a slow backend does not hold up the other streams of its connection
/// (the fast path serves a connection's streams inside the connection's task).
async fn a_slow_stream_does_not_hold_up_its_connection(engine: &[&str]) {
    let h = start(engine, &[]).await;
    let backend = raw_server(|mut stream| async move {
        let mut seen = Vec::new();
        while let Some(len) = read_head(&mut stream, &mut seen).await {
            let slow = seen.starts_with(b"GET /slow ");
            seen.drain(..len);
            if slow {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            let answer: &[u8] = if slow {
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfast"
            };
            if stream.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await;
    h.instance("web", "i1", backend).await;
    h.route("http-1", "slow.test", "/", "web").await;
    h.wait_status("slow.test", "/fast", 200).await;

    for via in BOTH {
        let (scheme, port) = via.endpoint(&h);
        // nghttp sends both requests at once on one connection; -s reports when each
        // response ended, from the connection's start.
        let out = Command::new("nghttp")
            .args(["-s", "-H"])
            .arg(format!(":authority: slow.test:{port}"))
            .arg(format!("{scheme}://127.0.0.1:{port}/slow"))
            .arg(format!("{scheme}://127.0.0.1:{port}/fast"))
            .stdin(Stdio::null())
            .output()
            .await
            .expect("nghttp is installed (nghttp2-client)");
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{via:?}: {report}");
        assert!(
            report.contains("slowfast") || report.contains("fastslow"),
            "{report}"
        );
        // `id responseEnd requestStart process code size path`, e.g. `13 +3.00s +210us 3.00s 200 4 /slow`.
        let ended = |path: &str| -> f64 {
            let line = report
                .lines()
                .find(|l| l.trim_end().ends_with(path) && l.contains(" 200 "))
                .unwrap_or_else(|| panic!("{via:?}: no 200 for {path}: {report}"));
            let end = line.split_whitespace().nth(1).unwrap_or_default();
            let end = end.trim_start_matches('+');
            let (number, scale) = if let Some(n) = end.strip_suffix("ms") {
                (n, 1e-3)
            } else if let Some(n) = end.strip_suffix("us") {
                (n, 1e-6)
            } else if let Some(n) = end.strip_suffix('s') {
                (n, 1.0)
            } else {
                panic!("{via:?}: {line}")
            };
            number.parse::<f64>().expect("a time") * scale
        };
        let (slow_s, fast_s) = (ended("/slow"), ended("/fast"));
        assert!(slow_s >= 2.9, "{via:?}: {report}");
        assert!(fast_s < 1.5, "{via:?}: /fast waited for /slow: {report}");
    }
}

async fn a_client_gone_mid_body_does_not_poison_the_pool(engine: &[&str]) {
    let h = start(engine, &[]).await;
    const LARGE: usize = 20 * 1024 * 1024;
    let large: &'static [u8] = big_body(LARGE).leak();
    // One backend: `/big` gets 20 MiB, anything else `small`, on kept-alive connections.
    let backend = raw_server(move |mut stream| async move {
        let mut seen = Vec::new();
        while let Some(len) = read_head(&mut stream, &mut seen).await {
            let big = seen.starts_with(b"GET /big ");
            seen.drain(..len);
            let written = if big {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {LARGE}\r\n\r\n");
                match stream.write_all(head.as_bytes()).await {
                    Ok(()) => stream.write_all(large).await,
                    Err(e) => Err(e),
                }
            } else {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsmall")
                    .await
            };
            if written.is_err() {
                return;
            }
        }
    })
    .await;
    h.instance("web", "i1", backend).await;
    h.route("http-1", "reset.test", "/", "web").await;
    h.wait_status("reset.test", "/", 200).await;

    for via in BOTH {
        for _ in 0..3 {
            // The client reads slowly and gives up mid-body (curl: timed out, 28).
            let reply = curl(
                &h,
                via,
                "reset.test",
                "/big",
                &["--limit-rate", "500k", "--max-time", "1"],
            )
            .await;
            assert_eq!(reply.code, 28, "{via:?}: cut off by the client");
            for _ in 0..5 {
                let reply = curl(&h, via, "reset.test", "/small", &[]).await;
                assert_eq!(reply.status, 200, "{via:?}: {reply:?}");
                assert_eq!(reply.body, b"small", "{via:?}: a clean connection");
            }
        }
    }
    let failed = h
        .router
        .metric("flynn_router_requests_total{class=\"5xx\"}")
        .await;
    assert_eq!(failed, 0.0);
    if fast(engine) {
        h.router
            .wait_metric("flynn_router_h1_relay_errors_total{side=\"client\"}", |n| {
                n >= 1.0
            })
            .await;
    }
}
