//! `--access-log`: every answered request is one JSON line, whichever engine answered it
//! (the fast path, pingora's proxy for what the fast path hands over, HTTP/2 streams) and
//! whoever answered (a backend, or the router itself); the client is the one a trusted load
//! balancer's PROXY header names.

mod common;

use std::time::Duration;

use common::Harness;
use flynn_testkit::backend::Backend;
use flynn_testkit::client;
use serde_json::Value;

common::on_both_engines!(every_answered_request_is_a_json_line);

async fn every_answered_request_is_a_json_line(engine: &[&str]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.log");
    let dest = path.to_str().expect("utf-8 path");
    let flags = [
        "--h2c",
        "--access-log",
        dest,
        "--proxy-protocol-from",
        "127.0.0.2/32",
    ];
    let h = Harness::start(&common::flags(engine, &flags)).await;
    let b = Backend::start("a").await;
    h.instance("web", "a", b.addr).await;
    h.route("http-1", "log.test", "/", "web").await;
    h.wait_status("log.test", "/ready", 200).await;
    let router = h.router.http.to_string();

    // A backend's answer, a route that does not exist, a request the fast path hands over
    // (chunked), one the router refuses (a space in the target), an HTTP/2 stream.
    let ok = h.get("/a/b?c=1&d=%20", "log.test").await;
    assert_eq!(ok.status, 200);
    assert_eq!(h.get("/", "nothing.test").await.status, 404);
    let chunked = b"POST /upload HTTP/1.1\r\nHost: log.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let uploaded = client::send(&router, chunked).await.expect("an answer");
    assert_eq!(uploaded.status, 200);
    let bad = client::send(&router, b"GET /a b HTTP/1.1\r\nHost: log.test\r\n\r\n")
        .await
        .expect("an answer");
    assert_eq!(bad.status, 400);
    let port = h.router.http.port();
    let h2 = curl(port, "http", &["--http2-prior-knowledge"], "/h2?x=y").await;
    assert_eq!(h2, "200 2");
    let tls = curl(h.router.https.port(), "https", &["--http1.1"], "/tls").await;
    assert_eq!(tls, "200 1.1");
    // From a load balancer in front: the client is the one its PROXY header names.
    let balancer = tokio::net::TcpSocket::new_v4().expect("socket");
    balancer
        .bind("127.0.0.2:0".parse().expect("address"))
        .expect("bind 127.0.0.2");
    let mut stream = balancer.connect(h.router.http).await.expect("connect");
    let proxied = b"PROXY TCP4 198.51.100.9 127.0.0.1 4000 80\r\nGET /behind HTTP/1.1\r\nHost: log.test\r\nConnection: close\r\n\r\n";
    tokio::io::AsyncWriteExt::write_all(&mut stream, proxied)
        .await
        .expect("write");
    let mut answer = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer)
        .await
        .expect("read");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    let mut lines = Vec::new();
    flynn_testkit::eventually(Duration::from_secs(5), "the log's lines", || {
        lines = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
            .collect();
        let done = lines.iter().any(|l| l["uri"] == "/behind");
        async move { done }
    })
    .await
    .expect("the last request logged");
    // One line per request: a request the fast path hands over is logged by pingora's proxy
    // alone.
    let find = |uri: &str| {
        let mut found = lines.iter().filter(|l| l["uri"] == uri);
        let line = found
            .next()
            .unwrap_or_else(|| panic!("no line for {uri} in {lines:#?}"));
        assert!(found.next().is_none(), "{uri} logged twice: {lines:#?}");
        line
    };

    let line = find("/a/b?c=1&d=%20");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["host"], "log.test");
    assert_eq!(line["status"], 200);
    assert_eq!(line["proto"], "HTTP/1.1");
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["scheme"], "http");
    assert_eq!(line["upstream"], b.addr.to_string());
    assert!(line["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0));
    assert!(line["time"].as_str().is_some_and(|t| t.ends_with('Z')));

    let miss = lines
        .iter()
        .find(|l| l["host"] == "nothing.test")
        .expect("the 404 logged");
    assert_eq!(miss["status"], 404);
    assert_eq!(miss["upstream"], Value::Null);

    let upload = find("/upload");
    assert_eq!(
        (&upload["method"], &upload["status"]),
        (&"POST".into(), &200.into())
    );
    assert_eq!(upload["upstream"], b.addr.to_string());

    let tls = find("/tls");
    assert_eq!(tls["scheme"], "https");
    assert_eq!(tls["status"], 200);
    assert_eq!(tls["upstream"], b.addr.to_string());

    let refused = lines
        .iter()
        .find(|l| l["status"] == 400)
        .expect("the router's 400 logged");
    assert_eq!(refused["client"], "127.0.0.1");

    assert_eq!(find("/behind")["client"], "198.51.100.9");

    let stream = find("/h2?x=y");
    assert_eq!(stream["proto"], "HTTP/2");
    // The Host as sent (curl's :authority carries the port), as for HTTP/1.1.
    assert_eq!(stream["host"], format!("log.test:{port}"));
    assert_eq!(stream["status"], 200);
    assert_eq!(stream["upstream"], b.addr.to_string());

    assert_eq!(
        h.router
            .metric("flynn_router_access_log_dropped_total")
            .await,
        0.0
    );
}

/// `curl` with `how` to `path` on log.test at the router's `port`: the status and HTTP version.
async fn curl(port: u16, scheme: &str, how: &[&str], path: &str) -> String {
    let out = tokio::process::Command::new("curl")
        .args([
            "-sSk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .args(how)
        .arg("--resolve")
        .arg(format!("log.test:{port}:127.0.0.1"))
        .arg(format!("{scheme}://log.test:{port}{path}"))
        .output()
        .await
        .expect("curl is installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A log that cannot be opened stops the router at start with a message naming it.
#[tokio::test]
async fn an_access_log_that_cannot_be_opened_is_a_clear_error() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flynn-router"))
        .args(["--access-log", "/nonexistent/dir/access.log"])
        .output()
        .await
        .expect("the router runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--access-log: cannot open /nonexistent/dir/access.log"),
        "{stderr}"
    );
}
