//! The router's own answers: every status it produces itself (400, 404, 405, 408, 431, 502,
//! 503, 504), whatever the cause, is byte for byte the same on both HTTP engines (the Date
//! value aside): the same status line, the same headers in the same order (`Content-Type:
//! text/plain`, `Content-Length`, no `Server`), the same body. Two routers on one store, one
//! per engine, get the same bytes.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Harness, Router};
use flynn_testkit::backend::Backend;
use flynn_testkit::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FLAGS: [&str; 4] = ["--header-timeout", "1s", "--upstream-timeout", "500ms"];

/// One router per engine on one store, with a route for every way a request can fail.
struct Routers {
    h: Harness,
    pingora: Router,
    _backends: Vec<Backend>,
}

impl Routers {
    async fn start() -> Routers {
        let h = Harness::start(&common::flags(&["--h1-fast-path", "true"], &FLAGS)).await;
        let pingora = Router::start(
            &h.etcd.url(),
            &common::flags(&["--h1-fast-path", "false"], &FLAGS),
        )
        .await;
        let web = Backend::start("web").await;
        h.instance("web", "i1", web.addr).await;
        h.route("http-ok", "ok.test", "/", "web").await;
        h.route("http-empty", "empty.test", "/", "nobody").await;
        for i in 0..2 {
            let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
            h.instance("dead", &format!("d{i}"), dead).await;
        }
        h.route("http-dead", "dead.test", "/", "dead").await;
        let bad = common::raw_backend(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        )
        .await;
        h.instance("bad", "b1", bad).await;
        h.route("http-bad", "bad.test", "/", "bad").await;
        for router in [&h.router, &pingora] {
            let addr = router.http.to_string();
            for (host, status) in [("ok.test", 200), ("bad.test", 502), ("empty.test", 503)] {
                flynn_testkit::eventually(common::APPLY, &format!("{host} {status}"), || {
                    let addr = addr.clone();
                    async move {
                        flynn_testkit::client::get(&addr, "/", host)
                            .await
                            .is_ok_and(|r| r.status == status)
                    }
                })
                .await
                .expect("routes applied");
            }
        }
        Routers {
            h,
            pingora,
            _backends: vec![web],
        }
    }

    /// The answer of each engine to `request` (after `pause`, more of it: `rest`).
    async fn both(&self, request: &[u8], rest: Option<(Duration, &[u8])>) -> [String; 2] {
        let fast = exchange(self.h.router.http, request, rest).await;
        let pingora = exchange(self.pingora.http, request, rest).await;
        [fast, pingora]
    }
}

/// Sends `request` on a new connection and reads one whole response (by its Content-Length)
/// or whatever came until the router closed; the Date value is replaced by `-`.
async fn exchange(addr: SocketAddr, request: &[u8], rest: Option<(Duration, &[u8])>) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    if let Some((pause, rest)) = rest {
        tokio::time::sleep(pause).await;
        let _ = stream.write_all(rest).await;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|n| got.len() >= end + 4 + n) {
                break;
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "no whole answer within 10 s: {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    text.split("\r\n")
        .map(|line| match line.split_once(':') {
            Some((name, _)) if name.eq_ignore_ascii_case("date") => format!("{name}: -"),
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Asserts both engines answered the same bytes, the router's own answer with `status`.
fn assert_same_own_answer(case: &str, [fast, pingora]: &[String; 2], status: u16, body: &str) {
    assert_eq!(fast, pingora, "{case}: the engines answer differently");
    let (head, got_body) = fast.split_once("\r\n\r\n").expect("a whole head");
    assert!(
        head.starts_with(&format!("HTTP/1.1 {status} ")),
        "{case}: {fast}"
    );
    assert_eq!(got_body, body, "{case}");
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("\r\ncontent-type: text/plain; charset=utf-8\r\n"),
        "{case}: {head}"
    );
    assert!(
        lower.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
        "{case}: {head}"
    );
    assert!(!lower.contains("server:"), "{case}: {head}");
    assert!(!lower.contains("private"), "{case}: {head}");
}

/// The head of an answer without its Connection line: what two causes of one status share.
fn without_connection(answer: &str) -> String {
    answer
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_of_the_routers_own_is_the_same_on_both_engines() {
    let r = Routers::start().await;
    let get = |host: &str| format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes();

    let not_found = r.both(&get("nowhere.test"), None).await;
    assert_same_own_answer("no route", &not_found, 404, "Not Found\n");

    let from_table = r.both(&get("empty.test"), None).await;
    assert_same_own_answer("no instance", &from_table, 503, "Service Unavailable\n");
    let connects = r.both(&get("dead.test"), None).await;
    assert_same_own_answer(
        "every connect failed",
        &connects,
        503,
        "Service Unavailable\n",
    );
    assert_eq!(
        without_connection(&from_table[0]),
        without_connection(&connects[0]),
        "a 503 is a 503 whatever its cause"
    );

    let bad = r.both(&get("bad.test"), None).await;
    assert_same_own_answer("bad backend response", &bad, 502, "Bad Gateway\n");

    let slow = r
        .both(b"GET /slow/3000 HTTP/1.1\r\nHost: ok.test\r\n\r\n", None)
        .await;
    assert_same_own_answer("silent backend", &slow, 504, "Gateway Timeout\n");

    for (case, raw) in [
        (
            "a space in the target",
            &b"GET /a b HTTP/1.1\r\nHost: ok.test\r\n\r\n"[..],
        ),
        (
            "a header name with a space",
            b"GET / HTTP/1.1\r\nHost: ok.test\r\nBad Header: x\r\n\r\n",
        ),
        (
            "a Host that is not the target's authority",
            b"GET http://ok.test/ HTTP/1.1\r\nHost: other.test\r\n\r\n",
        ),
    ] {
        let answer = r.both(raw, None).await;
        assert_same_own_answer(case, &answer, 400, "Bad Request\n");
    }

    let connect = r
        .both(
            b"CONNECT ok.test:443 HTTP/1.1\r\nHost: ok.test:443\r\n\r\n",
            None,
        )
        .await;
    assert_same_own_answer("CONNECT", &connect, 405, "Method Not Allowed\n");

    let mut big = b"GET / HTTP/1.1\r\nHost: ok.test\r\n".to_vec();
    for i in 0..70 {
        big.extend_from_slice(format!("X-Big-{i}: {}\r\n", "a".repeat(1000)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    let too_large = r.both(&big, None).await;
    assert_same_own_answer(
        "a 70 KiB head",
        &too_large,
        431,
        "Request Header Fields Too Large\n",
    );

    let slow_head = r
        .both(
            b"GET / HTTP/1.1\r\nHost: ok.test\r\n",
            Some((Duration::from_millis(1500), b"X-Late: 1\r\n\r\n")),
        )
        .await;
    assert_same_own_answer(
        "a head past its deadline",
        &slow_head,
        408,
        "Request Timeout\n",
    );
}
