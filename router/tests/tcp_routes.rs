//! TCP routes: listeners opened and closed live, bytes spliced both ways, instance changes for
//! new connections, the PROXY header to backends, ports that are refused.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Harness, APPLY};
use flynn_router::proxy_protocol::{self, Header};
use flynn_testkit::{eventually, free_port};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP backend: greets with `<name>\n` (after reporting the PROXY header's source when
/// `expect_proxy` is set, as `from <addr>\n`), then echoes.
async fn tcp_backend(name: &'static str, expect_proxy: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if expect_proxy {
                    report_proxy_header(&mut stream).await;
                }
                let _ = stream.write_all(format!("{name}\n").as_bytes()).await;
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Reads the PROXY header a test backend expects and answers its source as `from <addr>\n`
/// (`from local\n`, or `bad header: <why>\n`).
async fn report_proxy_header(stream: &mut TcpStream) {
    let line = match proxy_protocol::read_header(stream).await {
        Ok(Header::Proxied { source, .. }) => format!("from {source}\n"),
        Ok(Header::Local) => "from local\n".to_owned(),
        Err(e) => format!("bad header: {e}\n"),
    };
    let _ = stream.write_all(line.as_bytes()).await;
}

async fn tcp_harness() -> Harness {
    Harness::start(&["--tcp-ip", "127.0.0.1", "--tcp-ports", "1024-65535"]).await
}

async fn tcp_route(h: &Harness, id: &str, port: u16, service: &str, extra: serde_json::Value) {
    let mut route = json!({"id": id, "type": "tcp", "port": port, "service": service});
    if let (Some(r), Some(e)) = (route.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    h.put_raw(&h.keys.route(id), route.to_string()).await;
}

/// Reads until `n` lines arrived.
async fn read_lines(stream: &mut TcpStream, n: usize) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while out.iter().filter(|&&b| b == b'\n').count() < n {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("backend answered in time")
            .expect("read");
        assert!(read > 0, "closed after {:?}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..read]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn greeting(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Waits until the router itself listens on `n` TCP route ports. A connect to the port is not
/// proof: a port from `free_port` can be taken meanwhile by another test's process, and then
/// the router's bind fails while the connect succeeds.
async fn wait_listeners(h: &Harness, n: f64) {
    eventually(APPLY, &format!("{n} TCP listeners"), || async {
        h.router.metric("flynn_router_tcp_listeners").await == n
    })
    .await
    .expect("the router listens");
}

async fn wait_greeting(port: u16, want: &str) {
    eventually(APPLY, &format!("port {port} greets {want:?}"), || async {
        greeting(port).await.as_deref() == Some(want)
    })
    .await
    .expect("TCP route applied");
}

#[tokio::test]
async fn a_tcp_route_listens_splices_and_closes_with_the_route() {
    let h = tcp_harness().await;
    let first = tcp_backend("first", false).await;
    h.instance("db", "first", first).await;
    let port = free_port();
    tcp_route(&h, "tcp-1", port, "db", json!({})).await;
    wait_greeting(port, "first\n").await;

    // Bytes both ways, many of them.
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    assert_eq!(read_lines(&mut stream, 1).await, "first\n");
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = stream.into_split();
    let expected = payload.clone();
    let writer = tokio::spawn(async move { w.write_all(&payload).await.map(|_| w) });
    let mut echoed = vec![0u8; expected.len()];
    r.read_exact(&mut echoed).await.expect("echo");
    assert!(echoed == expected, "bytes changed on the way");
    let _w = writer.await.expect("writer").expect("write");

    // A new instance replaces the old one: new connections go to it.
    let second = tcp_backend("second", false).await;
    h.instance("db", "second", second).await;
    h.remove_instance("db", "first").await;
    wait_greeting(port, "second\n").await;

    // Removing the route closes its listener.
    h.remove_route("tcp-1").await;
    eventually(APPLY, "listener closed", || async {
        TcpStream::connect(("127.0.0.1", port)).await.is_err()
    })
    .await
    .expect("closed");
    assert_eq!(h.router.metric("flynn_router_tcp_listeners").await, 0.0);
}

#[tokio::test]
async fn tcp_routes_send_the_proxy_header_they_ask_for() {
    let h = tcp_harness().await;
    let backend = tcp_backend("pp", true).await;
    h.instance("pp", "i1", backend).await;
    // Instances and routes reach the router through two watches: the instance first, or a
    // route's listener could take a connection before it knows where to send it.
    eventually(APPLY, "the instance applied", || async {
        h.router.metric("flynn_router_instances").await == 1.0
    })
    .await
    .expect("instance in the table");
    let mut listeners = 0.0;
    for (id, version) in [("tcp-v1", "v1"), ("tcp-v2", "v2")] {
        let port = free_port();
        tcp_route(&h, id, port, "pp", json!({"proxy_protocol": version})).await;
        wait_listeners(&h, listeners + 1.0).await;
        listeners += 1.0;
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let client = stream.local_addr().expect("local addr");
        let lines = read_lines(&mut stream, 2).await;
        assert_eq!(lines, format!("from {client}\npp\n"), "{version}");
    }
}

#[tokio::test]
async fn reserved_and_out_of_range_ports_are_refused() {
    let h = Harness::start(&["--tcp-ip", "127.0.0.1", "--tcp-ports", "40000-40010"]).await;
    let backend = tcp_backend("x", false).await;
    h.instance("x", "i1", backend).await;
    let before = h
        .router
        .metric("flynn_router_store_invalid_entries_total")
        .await;
    tcp_route(&h, "tcp-http", h.router.http.port(), "x", json!({})).await;
    tcp_route(&h, "tcp-far", 40011, "x", json!({})).await;
    eventually(APPLY, "both refused", || async {
        h.router
            .metric("flynn_router_store_invalid_entries_total")
            .await
            >= before + 2.0
    })
    .await
    .expect("refusals counted");
    // The HTTP listener is still the router's.
    h.route("http-1", "still.test", "/", "web").await;
    h.wait_status("still.test", "/", 503).await;
    assert_eq!(h.router.metric("flynn_router_tcp_listeners").await, 0.0);
}

#[tokio::test]
async fn no_live_instance_closes_the_client_connection() {
    let h = tcp_harness().await;
    let port = free_port();
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    h.instance("gone", "i1", dead).await;
    tcp_route(&h, "tcp-1", port, "gone", json!({})).await;
    wait_listeners(&h, 1.0).await;
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

// --- Moving bytes: splice (and its copying fallback) seen from outside ----------------------

/// A TCP route to `backend` on a fresh port, applied: the port.
async fn route_to(h: &Harness, id: &str, backend: SocketAddr, extra: serde_json::Value) -> u16 {
    let service = format!("svc-{id}");
    let n = h.router.metric("flynn_router_instances").await;
    h.instance(&service, "i1", backend).await;
    eventually(APPLY, "the instance applied", || async {
        h.router.metric("flynn_router_instances").await > n
    })
    .await
    .expect("instance in the table");
    let port = free_port();
    let listeners = h.router.metric("flynn_router_tcp_listeners").await;
    tcp_route(h, id, port, &service, extra).await;
    wait_listeners(h, listeners + 1.0).await;
    port
}

/// `len` bytes that a dropped, repeated or shifted block would change.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// FNV-1a, 64 bits: the checksum both ends compute.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A backend that, on each connection (after reading a PROXY header when `expect_proxy`, and
/// answering its source as `from <addr>\n`), sends `answer` bytes of `pattern(_, 7)` while
/// reading everything the client sends until the client's end of stream, then sends the
/// checksum and length of what it read (16 bytes) and closes.
async fn checksum_backend(answer: usize, expect_proxy: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if expect_proxy {
                    report_proxy_header(&mut stream).await;
                }
                let (mut r, mut w) = stream.into_split();
                let sender = tokio::spawn(async move {
                    let _ = w.write_all(&pattern(answer, 7)).await;
                    w
                });
                let mut got = Vec::new();
                let _ = r.read_to_end(&mut got).await;
                let Ok(mut w) = sender.await else { return };
                let mut tail = checksum(&got).to_be_bytes().to_vec();
                tail.extend_from_slice(&(got.len() as u64).to_be_bytes());
                let _ = w.write_all(&tail).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Sends `upload` through `stream` and shuts its writing down while reading everything that
/// comes back: the bytes read.
async fn upload_and_read(stream: TcpStream, upload: Vec<u8>) -> Vec<u8> {
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&upload).await.expect("upload");
        w.shutdown().await.expect("shut writing down");
        w
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut got))
        .await
        .expect("the backend finished in time")
        .expect("read");
    let _w = writer.await.expect("writer");
    got
}

/// Checks what a `checksum_backend` sent back: `prefix`, its `answer` bytes, then the checksum
/// and length of `uploaded`.
fn check_answer(got: &[u8], prefix: &str, answer: usize, uploaded: &[u8]) {
    assert!(
        got.len() == prefix.len() + answer + 16,
        "{} bytes back, wanted {}",
        got.len(),
        prefix.len() + answer + 16
    );
    let (head, rest) = got.split_at(prefix.len());
    assert_eq!(String::from_utf8_lossy(head), prefix);
    let (body, tail) = rest.split_at(answer);
    assert!(
        checksum(body) == checksum(&pattern(answer, 7)),
        "backend → client bytes changed"
    );
    let mut want = checksum(uploaded).to_be_bytes().to_vec();
    want.extend_from_slice(&(uploaded.len() as u64).to_be_bytes());
    assert_eq!(
        tail, want,
        "client → backend bytes changed (checksum, length)"
    );
}

#[tokio::test]
async fn large_streams_cross_a_tcp_route_both_ways_unchanged() {
    let h = tcp_harness().await;
    const UP: usize = 96 << 20;
    const DOWN: usize = 80 << 20;
    let port = route_to(
        &h,
        "tcp-big",
        checksum_backend(DOWN, false).await,
        json!({}),
    )
    .await;
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let upload = pattern(UP, 11);
    let got = upload_and_read(stream, upload.clone()).await;
    check_answer(&got, "", DOWN, &upload);
}

#[tokio::test]
async fn a_half_closed_tcp_connection_keeps_moving_the_other_way() {
    let h = tcp_harness().await;
    // The backend's side ends first: it says `bye` and shuts its writing down, then still reads
    // the client's upload to its end and reports the checksum it read.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend = listener.local_addr().expect("addr");
    let (report, received) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(b"bye\n").await;
            let _ = stream.shutdown().await;
            let mut got = Vec::new();
            let _ = stream.read_to_end(&mut got).await;
            let _ = report.send((checksum(&got), got.len()));
        }
    });
    let port = route_to(&h, "tcp-half", backend, json!({})).await;
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut bye = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut bye))
        .await
        .expect("the backend's end of stream passed on")
        .expect("read");
    assert_eq!(bye, b"bye\n");
    // The client's direction is still open: 8 MiB reach the backend after its end of stream.
    let upload = pattern(8 << 20, 5);
    stream.write_all(&upload).await.expect("upload after EOF");
    stream.shutdown().await.expect("shut down");
    let got = tokio::time::timeout(Duration::from_secs(10), received)
        .await
        .expect("the backend read to the end in time")
        .expect("the backend reported");
    assert_eq!(got, (checksum(&upload), upload.len()));
}

#[tokio::test]
async fn the_proxy_header_comes_first_then_spliced_bytes() {
    let h = tcp_harness().await;
    const UP: usize = 24 << 20;
    const DOWN: usize = 24 << 20;
    let backend = checksum_backend(DOWN, true).await;
    let port = route_to(&h, "tcp-ppv2", backend, json!({"proxy_protocol": "v2"})).await;
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let client = stream.local_addr().expect("local addr");
    let upload = pattern(UP, 13);
    let got = upload_and_read(stream, upload.clone()).await;
    check_answer(&got, &format!("from {client}\n"), DOWN, &upload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_tcp_connections_each_get_their_own_bytes() {
    let h = tcp_harness().await;
    const CONNS: usize = 200;
    const UP: usize = 1 << 20;
    const DOWN: usize = 512 << 10;
    let port = route_to(
        &h,
        "tcp-many",
        checksum_backend(DOWN, false).await,
        json!({}),
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..CONNS {
        // Each connection its own bytes (computed before connecting).
        let upload = pattern(UP, 100 + i as u64);
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            let got = upload_and_read(stream, upload.clone()).await;
            check_answer(&got, "", DOWN, &upload);
        }));
    }
    let mut failed = 0;
    for task in tasks {
        failed += usize::from(task.await.is_err());
    }
    if failed > 0 {
        let log = h.router.log();
        let lines: Vec<_> = log.lines().filter(|l| l.contains("TCP")).take(20).collect();
        panic!(
            "{failed} of {CONNS} connections failed; router log:\n{}",
            lines.join("\n")
        );
    }
    assert!(h.router.metric("flynn_router_tcp_connections_total").await >= CONNS as f64);
}
