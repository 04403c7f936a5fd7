//! Sticky sessions: the encrypted `_backend` cookie pins a client, is set only when the instance
//! changes, never reaches a backend, survives a router restart (key shared through the store),
//! and works for WebSocket upgrades.

mod common;

use common::{backend_of, echoed, Harness, Router};
use flynn_testkit::backend::{echoed_header, Backend};
use flynn_testkit::client::{self, Conn, Response};
use serde_json::json;

common::on_both_engines!(
    a_client_stays_on_its_instance_until_that_instance_is_gone,
    websocket_upgrades_follow_the_cookie,
);

/// The `_backend=...` pair of a response's Set-Cookie, if any.
fn sticky_cookie(response: &Response) -> Option<String> {
    response
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .find_map(|(_, v)| v.split(';').next().filter(|p| p.starts_with("_backend=")))
        .map(str::to_owned)
}

async fn get_with_cookie(addr: &str, cookie: &str) -> Response {
    let mut conn = Conn::open(addr).await.expect("connect");
    conn.get("/", "sticky.test", &[("Cookie", cookie)])
        .await
        .expect("request")
}

async fn a_client_stays_on_its_instance_until_that_instance_is_gone(engine: &[&str]) {
    let h = Harness::start(engine).await;
    let backends = [
        Backend::start("instance-alpha").await,
        Backend::start("instance-bravo").await,
        Backend::start("instance-charlie").await,
    ];
    for b in &backends {
        h.instance("web", &b.name, b.addr).await;
    }
    h.route_with("http-1", "sticky.test", "/", "web", json!({"sticky": true}))
        .await;
    h.wait_status("sticky.test", "/", 200).await;
    let addr = h.router.http.to_string();

    let first = h.get("/", "sticky.test").await;
    let pinned_to = backend_of(&first);
    let cookie = sticky_cookie(&first).expect("a new client gets a cookie");
    assert!(
        !cookie.contains(&pinned_to),
        "the instance id is not readable: {cookie}"
    );
    let set_cookie = first
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("Path=/"));

    // Pinned: same instance every time, no new cookie, and the backend never sees ours
    // while other cookies pass.
    for _ in 0..20 {
        let response = get_with_cookie(&addr, &format!("theme=dark; {cookie}; lang=en")).await;
        assert_eq!(backend_of(&response), pinned_to);
        assert_eq!(
            sticky_cookie(&response),
            None,
            "set only when the instance changes"
        );
        let seen = echoed_header(&echoed(&response), "cookie");
        assert_eq!(seen, vec!["theme=dark; lang=en".to_owned()]);
    }

    // A forged or foreign cookie is ignored: a fresh choice and a fresh cookie.
    let forged = get_with_cookie(&addr, "_backend=bm90LWEtcmVhbC1jb29raWU").await;
    assert_eq!(forged.status, 200);
    assert!(sticky_cookie(&forged).is_some());

    // The pinned instance goes away: another serves, and the cookie is re-set to it.
    h.remove_instance("web", &pinned_to).await;
    let mut moved = None;
    for _ in 0..200 {
        let response = get_with_cookie(&addr, &cookie).await;
        if backend_of(&response) != pinned_to {
            moved = Some(response);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let moved = moved.expect("the request left the removed instance");
    let new_cookie = sticky_cookie(&moved).expect("re-pinned");
    let new_home = backend_of(&moved);
    for _ in 0..10 {
        assert_eq!(
            backend_of(&get_with_cookie(&addr, &new_cookie).await),
            new_home
        );
    }

    // A second router on the same store reads the same key: the cookie holds across routers.
    let other = Router::start(&h.etcd.url(), engine).await;
    let response = {
        let mut conn = Conn::open(&other.http.to_string()).await.expect("connect");
        conn.get("/", "sticky.test", &[("Cookie", new_cookie.as_str())])
            .await
            .expect("request")
    };
    assert_eq!(backend_of(&response), new_home);
    assert_eq!(sticky_cookie(&response), None);
    // Nothing was handed over: on the fast path, all of it stayed on it (router/src/proxy/h1).
    assert_eq!(
        h.router.metric("flynn_router_h1_handed_over_total").await,
        0.0
    );
}

async fn websocket_upgrades_follow_the_cookie(engine: &[&str]) {
    let h = Harness::start(engine).await;
    let backends = [Backend::start("a").await, Backend::start("b").await];
    for b in &backends {
        h.instance("web", &b.name, b.addr).await;
    }
    h.route_with("http-1", "sticky.test", "/", "web", json!({"sticky": true}))
        .await;
    h.wait_status("sticky.test", "/", 200).await;
    let addr = h.router.http.to_string();
    let first = client::get(&addr, "/", "sticky.test").await.expect("get");
    let home = backend_of(&first);
    let cookie = sticky_cookie(&first).expect("cookie");
    for _ in 0..10 {
        let mut conn = Conn::open(&addr).await.expect("connect");
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: sticky.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Cookie: {cookie}\r\n\r\n"
        );
        conn.write(request.as_bytes()).await.expect("write");
        let response = conn.read_response(false).await.expect("101");
        assert_eq!(response.status, 101);
        assert_eq!(response.header("x-backend"), Some(home.as_str()));
    }
    // A new WebSocket client is pinned by the 101 itself.
    let mut conn = Conn::open(&addr).await.expect("connect");
    conn.write(
        b"GET /ws HTTP/1.1\r\nHost: sticky.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .expect("write");
    let response = conn.read_response(false).await.expect("101");
    assert_eq!(response.status, 101);
    assert!(sticky_cookie(&response).is_some());
}
