//! Upgrades: WebSocket and any other `Connection: upgrade` pass through, 101 relayed, bytes
//! streamed both ways, on fresh and on previously kept-alive client connections.

mod common;

use common::Harness;
use flynn_testkit::backend::Backend;
use flynn_testkit::client::Conn;
use serde_json::json;

const WEBSOCKET: &str = "GET /chat HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\n\
    Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

async fn harness(route_extra: serde_json::Value) -> (Harness, Backend) {
    let h = Harness::start(&[]).await;
    let b = Backend::start("ws").await;
    h.instance("web", "i1", b.addr).await;
    h.route_with("http-1", "ws.test", "/", "web", route_extra)
        .await;
    h.wait_status("ws.test", "/", 200).await;
    (h, b)
}

/// Sends the upgrade request on `conn`, expects a 101, then checks an echo both ways.
async fn upgrade_and_echo(conn: &mut Conn, request: &str, protocol: &str) {
    conn.write(request.as_bytes()).await.expect("send upgrade");
    let response = conn.read_response(false).await.expect("101");
    assert_eq!(response.status, 101, "{:?}", response.headers);
    assert_eq!(response.header("upgrade"), Some(protocol));
    assert!(response
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("upgrade")));
    // The backend saw the handshake's Connection header.
    assert!(response
        .header("x-received-connection")
        .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")));
    for message in [
        "hello",
        "a longer second message\n",
        "\u{0}\u{1}binary\u{ff}",
    ] {
        conn.write(message.as_bytes())
            .await
            .expect("write upgraded");
        let mut echoed = Vec::new();
        while echoed.len() < message.len() {
            echoed.extend(conn.read_some().await.expect("echo"));
        }
        assert_eq!(echoed, message.as_bytes());
    }
}

#[tokio::test]
async fn websocket_upgrades_on_fresh_and_kept_alive_connections() {
    let (h, _b) = harness(json!({})).await;
    let addr = h.router.http.to_string();

    let mut fresh = Conn::open(&addr).await.expect("open");
    upgrade_and_echo(&mut fresh, WEBSOCKET, "websocket").await;

    // A client connection that already carried ordinary requests can be upgraded.
    let mut reused = Conn::open(&addr).await.expect("open");
    for _ in 0..3 {
        let r = reused
            .get("/", "ws.test", &[])
            .await
            .expect("keep-alive request");
        assert_eq!(r.status, 200);
    }
    upgrade_and_echo(&mut reused, WEBSOCKET, "websocket").await;
}

#[tokio::test]
async fn any_upgrade_protocol_passes_even_with_disable_keep_alives() {
    let (h, _b) = harness(json!({"disable_keep_alives": true})).await;
    let mut conn = Conn::open(&h.router.http.to_string()).await.expect("open");
    let request = "GET /tunnel HTTP/1.1\r\nHost: ws.test\r\nConnection: upgrade\r\n\
                   Upgrade: custom-proto/1\r\n\r\n";
    upgrade_and_echo(&mut conn, request, "custom-proto/1").await;
}

#[tokio::test]
async fn many_concurrent_websockets_stay_independent() {
    // 100 upgrades, half on connections that carried a request first. Before the vendored
    // pingora fix (vendor/README.md) about one in 200 tunnels closed right after its 101.
    let (h, _b) = harness(json!({})).await;
    let addr = h.router.http.to_string();
    for _round in 0..5 {
        let mut tasks = Vec::new();
        for i in 0..20 {
            let addr = addr.clone();
            tasks.push(tokio::spawn(async move {
                let mut conn = Conn::open(&addr).await.expect("open");
                if i % 2 == 0 {
                    let r = conn.get("/", "ws.test", &[]).await.expect("request");
                    assert_eq!(r.status, 200);
                }
                upgrade_and_echo(&mut conn, WEBSOCKET, "websocket").await;
            }));
        }
        for t in tasks {
            t.await.expect("websocket task");
        }
    }
}
