//! The real `flynn` binary against a real `flynn server`: embedded store, and etcd.

mod apps;
mod cluster;
mod controller;
mod etcd;
mod harness;
mod routes;
mod services;

use std::time::Duration;

use flynn_testkit::backend::Backend;

use harness::{Client, Server};

/// What a request through the router reached: the backend's name.
pub async fn backend_of(server: &Server, host: &str, path: &str) -> String {
    match server.get(host, path).await {
        Ok(r) if r.status == 200 => r
            .json()
            .ok()
            .and_then(|j| j["backend"].as_str().map(str::to_owned))
            .unwrap_or_default(),
        Ok(r) => format!("status {}", r.status),
        Err(e) => format!("error {e}"),
    }
}

/// Polls until `host``path` reaches `backend`.
pub async fn wait_backend(server: &Server, host: &str, path: &str, backend: &str) -> Duration {
    let started = std::time::Instant::now();
    let reached = flynn_testkit::eventually(
        harness::APPLY,
        &format!("{host}{path} → {backend}"),
        || async move { backend_of(server, host, path).await == backend },
    )
    .await;
    if let Err(e) = reached {
        panic!(
            "{e} (last: {})\nserver log:\n{}",
            backend_of(server, host, path).await,
            server.log()
        );
    }
    started.elapsed()
}

/// The tour, through the CLI: create an app, register a backend, route to it, request it.
/// Shared by the embedded and the etcd runs.
pub async fn tour(client: &Client, server: &Server) {
    let one = Backend::start("one").await;
    assert_eq!(client.run(&["create", "shop"]).await.ok(), "Created shop\n");
    let addr = one.addr.to_string();
    let registered = client
        .run(&["service", "register", "shop-web", &addr])
        .await;
    assert!(registered.ok().contains("as an instance of shop-web"));
    // The default route shop.localhost serves at once.
    let took = wait_backend(server, "shop.localhost", "/", "one").await;
    eprintln!("default route served {took:?} after registration");

    let id = client
        .run(&["-a", "shop", "route", "add", "http", "www.shop.example"])
        .await;
    let id = id.ok().trim().to_owned();
    assert!(id.starts_with("http-"), "{id}");
    let took = wait_backend(server, "www.shop.example", "/", "one").await;
    eprintln!("route added through the CLI served after {took:?}");
    assert!(took < harness::APPLY);

    // A path route to another service.
    let two = Backend::start("two").await;
    client
        .run(&["service", "register", "shop-api", &two.addr.to_string()])
        .await
        .ok();
    client
        .run(&[
            "-a",
            "shop",
            "route",
            "add",
            "http",
            "-s",
            "shop-api",
            "www.shop.example/api",
        ])
        .await
        .ok();
    wait_backend(server, "www.shop.example", "/api/orders", "two").await;
    assert_eq!(
        backend_of(server, "www.shop.example", "/other").await,
        "one"
    );

    // Removing the route: the router answers 404 again.
    let removed = client.run(&["-a", "shop", "route", "remove", &id]).await;
    removed.fails_with("cannot be removed while path routes depend on it");
    let routes = client.run(&["-a", "shop", "route", "-o", "json"]).await;
    let routes: serde_json::Value = serde_json::from_str(routes.ok()).expect("json");
    let api_id = routes
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["path"] == "/api/"))
        .and_then(|r| r["id"].as_str())
        .expect("the /api/ route")
        .to_owned();
    let removed = client
        .run(&["-a", "shop", "route", "remove", &api_id])
        .await;
    assert_eq!(removed.ok(), format!("Route {api_id} removed.\n"));
    client
        .run(&["-a", "shop", "route", "remove", &id])
        .await
        .ok();
    flynn_testkit::eventually(harness::APPLY, "route gone", || async {
        server
            .get("www.shop.example", "/")
            .await
            .is_ok_and(|r| r.status == 404)
    })
    .await
    .expect("the removed route stops being served");
}
