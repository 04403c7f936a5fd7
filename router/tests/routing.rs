//! Which route a request takes: hosts, wildcards, paths, the URI as sent, 404 and 503.

mod common;

use common::{backend_of, echoed, Harness};
use flynn_testkit::backend::Backend;
use flynn_testkit::client::{self, Conn};

common::on_both_engines!(
    host_matching_exact_beats_wildcard_beats_catch_all,
    longest_path_prefix_wins_on_slash_boundaries,
    the_uri_reaches_the_backend_byte_for_byte,
    no_instance_is_503_and_changes_apply_live,
);

async fn host_matching_exact_beats_wildcard_beats_catch_all(engine: &[&str]) {
    let h = Harness::start(engine).await;
    let exact = Backend::start("exact").await;
    let wild = Backend::start("wild").await;
    let deeper = Backend::start("deeper").await;
    let catch = Backend::start("catch").await;
    for (svc, b) in [
        ("exact", &exact),
        ("wild", &wild),
        ("deeper", &deeper),
        ("catch", &catch),
    ] {
        h.instance(svc, svc, b.addr).await;
    }
    h.route("http-exact", "example.com", "/", "exact").await;
    h.route("http-wild", "*.example.com", "/", "wild").await;
    h.route("http-deeper", "*.b.example.com", "/", "deeper")
        .await;
    h.route("http-catch", "*", "/", "catch").await;
    h.wait_status("other.org", "/", 200).await;
    h.wait_status("example.com", "/", 200).await;
    h.wait_status("x.b.example.com", "/", 200).await;

    let cases = [
        ("example.com", "exact"),
        ("EXAMPLE.Com", "exact"),
        ("example.com:8080", "exact"),
        ("example.com.", "exact"),
        ("a.example.com", "wild"),
        ("x.y.z.example.com", "wild"),
        ("b.example.com", "wild"),
        ("a.b.example.com", "deeper"),
        ("A.B.EXAMPLE.COM:80", "deeper"),
        ("x.a.b.example.com", "deeper"),
        ("other.org", "catch"),
        ("notexample.com", "catch"),
    ];
    for (host, want) in cases {
        let response = h.get("/", host).await;
        assert_eq!(response.status, 200, "{host}");
        assert_eq!(backend_of(&response), want, "Host: {host}");
    }

    // The backend gets the Host header exactly as the client sent it.
    let response = h.get("/", "EXAMPLE.com:8080").await;
    assert_eq!(
        flynn_testkit::backend::echoed_header(&echoed(&response), "host"),
        vec!["EXAMPLE.com:8080".to_owned()]
    );

    // Without the catch-all, an unknown host is a 404 with the documented body.
    h.remove_route("http-catch").await;
    h.wait_status("other.org", "/", 404).await;
    let response = h.get("/", "other.org").await;
    assert_eq!(response.text(), "Not Found\n");
    // The wildcard never matches its own apex.
    h.remove_route("http-exact").await;
    h.wait_status("example.com", "/", 404).await;
    assert_eq!(backend_of(&h.get("/", "a.example.com").await), "wild");
}

async fn longest_path_prefix_wins_on_slash_boundaries(engine: &[&str]) {
    let h = Harness::start(engine).await;
    let mut backends = Vec::new();
    for name in ["root", "api", "v2"] {
        let b = Backend::start(name).await;
        h.instance(name, name, b.addr).await;
        backends.push(b);
    }
    h.route("http-root", "paths.test", "/", "root").await;
    // Stored without the trailing slash: the router treats it as `/api/`.
    h.route("http-api", "paths.test", "/api", "api").await;
    h.route("http-v2", "paths.test", "/api/v2/", "v2").await;
    h.wait_status("paths.test", "/api/v2/", 200).await;
    common_wait_backend(&h, "paths.test", "/api/v2/", "v2").await;

    let cases = [
        ("/", "root"),
        ("/index.html", "root"),
        ("/api", "api"),
        ("/api/", "api"),
        ("/api/users", "api"),
        ("/api?x=1", "api"),
        ("/apix", "root"),
        ("/api-v2", "root"),
        ("/api/v2", "v2"),
        ("/api/v2/", "v2"),
        ("/api/v2/things?q=/api", "v2"),
        ("/api/v20", "api"),
    ];
    for (path, want) in cases {
        let response = h.get(path, "paths.test").await;
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(backend_of(&response), want, "path {path}");
    }
}

async fn common_wait_backend(h: &Harness, host: &str, path: &str, want: &str) {
    let addr = h.router.http.to_string();
    flynn_testkit::eventually(common::APPLY, &format!("{host}{path} → {want}"), || {
        let addr = addr.clone();
        async move {
            client::get(&addr, path, host)
                .await
                .ok()
                .and_then(|r| r.json().ok())
                .is_some_and(|j| j["backend"] == want)
        }
    })
    .await
    .expect("route applied");
}

async fn the_uri_reaches_the_backend_byte_for_byte(engine: &[&str]) {
    let h = Harness::start(engine).await;
    let b = Backend::start("b").await;
    h.instance("web", "i1", b.addr).await;
    h.route("http-1", "uri.test", "/", "web").await;
    h.wait_status("uri.test", "/", 200).await;

    for uri in [
        "//double//slashes/",
        "/a/%2F/b/%2f?q=%20x&y=a+b&z=%zz",
        "/a/./b/../c",
        "/caf%C3%A9?x=1&x=2&&",
        "/?",
        "/path;param=1?",
    ] {
        let raw = format!("GET {uri} HTTP/1.1\r\nHost: uri.test\r\n\r\n");
        let response = client::send(&h.router.http.to_string(), raw.as_bytes())
            .await
            .expect("request");
        assert_eq!(response.status, 200, "{uri}");
        assert_eq!(echoed(&response)["uri"], uri, "URI changed on the way");
    }
}

async fn no_instance_is_503_and_changes_apply_live(engine: &[&str]) {
    let h = Harness::start(engine).await;
    h.route("http-1", "live.test", "/", "web").await;
    h.wait_status("live.test", "/", 503).await;
    let response = h.get("/", "live.test").await;
    assert_eq!(response.text(), "Service Unavailable\n");

    // The router's own answers keep the client connection usable.
    let mut conn = Conn::open(&h.router.http.to_string()).await.expect("open");
    for _ in 0..3 {
        let r = conn.get("/", "live.test", &[]).await.expect("503 answer");
        assert_eq!(r.status, 503);
        let r = conn
            .get("/", "nowhere.test", &[])
            .await
            .expect("404 answer");
        assert_eq!(r.status, 404);
        assert_eq!(r.text(), "Not Found\n");
    }

    let first = Backend::start("first").await;
    h.instance("web", "i1", first.addr).await;
    h.wait_status("live.test", "/", 200).await;
    assert_eq!(backend_of(&h.get("/", "live.test").await), "first");

    // Replace the instance: new requests go to the new one only.
    let second = Backend::start("second").await;
    h.instance("web", "i2", second.addr).await;
    h.remove_instance("web", "i1").await;
    common_wait_backend(&h, "live.test", "/", "second").await;
    for _ in 0..10 {
        assert_eq!(backend_of(&h.get("/", "live.test").await), "second");
    }

    // Moving the route to another domain takes effect at once, the old domain is gone.
    h.route("http-1", "moved.test", "/", "web").await;
    h.wait_status("moved.test", "/", 200).await;
    h.wait_status("live.test", "/", 404).await;

    h.remove_route("http-1").await;
    h.wait_status("moved.test", "/", 404).await;
    assert_eq!(h.router.metric("flynn_router_routes").await, 0.0);
    assert_eq!(h.router.metric("flynn_router_instances").await, 1.0);
}
