//! Inbound PROXY protocol: HAProxy in front sends v1 and v2 (before plain HTTP and before TLS);
//! the client address it carries reaches X-Forwarded-For. A trusted peer without a header, or
//! with a garbage one, loses that connection only; untrusted peers connect as usual.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{echoed, Harness};
use flynn_testkit::backend::{echoed_header, Backend};
use flynn_testkit::client::Conn;
use flynn_testkit::free_port;

/// HAProxy (Debian's package) in TCP mode, one frontend per (port, target, send-proxy option).
struct Haproxy {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn haproxy(frontends: &[(u16, String, &str)]) -> Haproxy {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = String::from(
        "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 2s\n  \
         timeout client 10s\n  timeout server 10s\n",
    );
    for (i, (port, target, option)) in frontends.iter().enumerate() {
        config.push_str(&format!(
            "frontend f{i}\n  bind 127.0.0.1:{port}\n  default_backend b{i}\n\
             backend b{i}\n  server router {target} {option}\n"
        ));
    }
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, config).expect("write haproxy.cfg");
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy is installed (apt-get install haproxy)");
    Haproxy { child, _dir: dir }
}

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

async fn wait_listening(port: u16) {
    flynn_testkit::wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(10))
        .await
        .expect("haproxy listening");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_v1_and_v2_carry_the_client_address() {
    // HAProxy connects from 127.0.0.1 (trusted); direct clients come from 127.0.0.3.
    let h = Harness::start(&["--proxy-protocol-from", "127.0.0.1"]).await;
    let b = Backend::start("web").await;
    h.instance("web", "i1", b.addr).await;
    h.route("http-1", "pp.test", "/", "web").await;
    let direct = h.router.http.to_string();
    let untrusted = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    let get = |mut conn: Conn| async move { conn.get("/", "pp.test", &[]).await };
    flynn_testkit::eventually(
        common::APPLY,
        "route served to an untrusted client",
        || async {
            let conn = Conn::open_from(&direct, untrusted).await.expect("connect");
            get(conn).await.is_ok_and(|r| r.status == 200)
        },
    )
    .await
    .expect("route applied");

    let (v1, v2, tls) = (free_port(), free_port(), free_port());
    let _haproxy = haproxy(&[
        (v1, h.router.http.to_string(), "send-proxy"),
        (v2, h.router.http.to_string(), "send-proxy-v2"),
        (tls, h.router.https.to_string(), "send-proxy-v2"),
    ]);
    for port in [v1, v2, tls] {
        wait_listening(port).await;
    }

    for port in [v1, v2] {
        let mut conn = Conn::open_from(&format!("127.0.0.1:{port}"), CLIENT)
            .await
            .expect("connect to haproxy");
        // Several requests on the kept-alive connection: the header is read once.
        for _ in 0..3 {
            let response = conn
                .get("/", "pp.test", &[])
                .await
                .expect("through haproxy");
            assert_eq!(response.status, 200);
            let json = echoed(&response);
            assert_eq!(echoed_header(&json, "x-forwarded-for"), vec!["127.0.0.2"]);
            // The port the client connected to, on the load balancer.
            assert_eq!(
                echoed_header(&json, "x-forwarded-port"),
                vec![port.to_string()]
            );
        }
    }

    // PROXY v2 before TLS: curl from 127.0.0.2 through HAProxy to the HTTPS listener.
    let out = Command::new("curl")
        .args(["-sk", "--interface", "127.0.0.2", "--resolve"])
        .arg(format!("pp.test:{tls}:127.0.0.1"))
        .arg(format!("https://pp.test:{tls}/"))
        .output()
        .expect("curl");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(echoed_header(&json, "x-forwarded-for"), vec!["127.0.0.2"]);
    assert_eq!(echoed_header(&json, "x-forwarded-proto"), vec!["https"]);

    // An untrusted direct client needs no header and is itself the client.
    let response = get(Conn::open_from(&direct, untrusted).await.expect("connect"))
        .await
        .expect("direct");
    assert_eq!(
        echoed_header(&echoed(&response), "x-forwarded-for"),
        vec!["127.0.0.3"]
    );
}

#[tokio::test]
async fn a_trusted_peer_without_a_valid_header_loses_only_its_connection() {
    let h = Harness::start(&["--proxy-protocol-from", "127.0.0.0/8"]).await;
    let b = Backend::start("web").await;
    h.instance("web", "i1", b.addr).await;
    h.route("http-1", "pp.test", "/", "web").await;
    let addr = h.router.http.to_string();

    let with_header = |header: &'static [u8]| {
        let addr = addr.clone();
        async move {
            let mut conn = Conn::open(&addr).await.expect("connect");
            let mut raw = header.to_vec();
            raw.extend_from_slice(b"GET / HTTP/1.1\r\nHost: pp.test\r\n\r\n");
            conn.write(&raw).await.expect("write");
            conn.read_response(false).await
        }
    };
    flynn_testkit::eventually(common::APPLY, "route applied", || async {
        with_header(b"PROXY TCP4 198.51.100.9 127.0.0.1 4000 80\r\n")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await
    .expect("served with a v1 header");
    let response = with_header(b"PROXY TCP4 198.51.100.9 127.0.0.1 4000 80\r\n")
        .await
        .expect("response");
    assert_eq!(
        echoed_header(&echoed(&response), "x-forwarded-for"),
        vec!["198.51.100.9"]
    );

    // Missing, garbage, truncated, oversized: the connection is closed without an answer.
    let before = h
        .router
        .metric("flynn_router_proxy_header_refused_total")
        .await;
    let bad: [&'static [u8]; 4] = [
        b"",
        b"PROXY TCP4 not-an-ip 127.0.0.1 4000 80\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
        b"PROXY TCP4 111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111",
    ];
    for header in bad {
        let result = with_header(header).await;
        assert!(
            result.is_err(),
            "{:?} was answered",
            String::from_utf8_lossy(header)
        );
    }
    assert!(
        h.router
            .metric("flynn_router_proxy_header_refused_total")
            .await
            >= before + 4.0
    );

    // A half-sent header times out or is closed; the router serves everyone else meanwhile.
    let mut stalled = Conn::open(&addr).await.expect("connect");
    stalled.write(b"PROXY TCP4 1.2.3.4").await.expect("write");
    let response = with_header(b"PROXY UNKNOWN\r\n")
        .await
        .expect("others are served");
    assert_eq!(response.status, 200);
    assert_eq!(
        echoed_header(&echoed(&response), "x-forwarded-for"),
        vec!["127.0.0.1"]
    );
    assert!(stalled.closed_within(Duration::from_secs(8)).await);
}
