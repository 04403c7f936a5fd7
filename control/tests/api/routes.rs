use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::Api;

async fn api_with_app() -> Api {
    let api = Api::with(|c| c.tcp_ports = 4000..=4002);
    api.app("shop").await;
    api
}

#[tokio::test]
async fn http_route_fields_and_defaults() {
    let api = api_with_app().await;
    let route = api
        .route("shop", json!({"domain": "Shop.Example.COM"}))
        .await;
    let id = route["id"].as_str().expect("id");
    assert!(id.starts_with("http-"), "{id}");
    assert_eq!(route["type"], "http");
    assert_eq!(route["domain"], "shop.example.com");
    assert_eq!(route["path"], "/");
    assert_eq!(route["service"], "shop-web");
    assert_eq!(route["sticky"], false);
    assert_eq!(route["leader"], false);
    assert_eq!(route["drain_backends"], true);
    assert_eq!(route["disable_keep_alives"], false);
    assert_eq!(route["certificate_id"], Value::Null);
    assert_eq!(route["backend_protocol"], "http1");
    let (_, app) = api.get("/apps/shop").await;
    assert_eq!(route["app_id"], app["id"]);

    // The store holds what the router reads.
    let stored = api
        .store
        .get(&format!("/flynn/routes/{id}"))
        .await
        .expect("get")
        .expect("stored");
    let parsed: flynn_store::types::Route =
        serde_json::from_slice(&stored.value).expect("the router can read it");
    assert_eq!(parsed.service(), "shop-web");

    let other = api
        .route(
            "shop",
            json!({"domain": "*.shop.example.com", "service": "other", "sticky": true,
                   "leader": true, "drain_backends": false, "disable_keep_alives": true,
                   "backend_protocol": "h2c"}),
        )
        .await;
    assert_eq!(other["domain"], "*.shop.example.com");
    assert_eq!(other["service"], "other");
    assert_eq!(other["sticky"], true);
    assert_eq!(other["leader"], true);
    assert_eq!(other["drain_backends"], false);
    assert_eq!(other["disable_keep_alives"], true);
    assert_eq!(other["backend_protocol"], "h2c");

    let (_, mine) = api.get("/apps/shop/routes").await;
    assert_eq!(mine.as_array().map(Vec::len), Some(2));
    let (_, all) = api.get("/routes").await;
    assert_eq!(all, mine);
    let (status, one) = api.get(&format!("/apps/shop/routes/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one, route);
}

#[tokio::test]
async fn domain_syntax_is_checked() {
    let api = api_with_app().await;
    for domain in [
        "", "a..b", "-x.com", "a.*.com", "x_y.com", "a.com:80", "a b.com",
    ] {
        let body = api
            .refused(
                Method::POST,
                "/apps/shop/routes",
                json!({ "domain": domain }),
                "validation_error",
            )
            .await;
        assert_eq!(body["detail"]["field"], "domain", "{body}");
    }
    api.refused(
        Method::POST,
        "/apps/shop/routes",
        json!({"type": "http"}),
        "validation_error",
    )
    .await;
}

#[tokio::test]
async fn paths_are_normalised_and_need_their_root() {
    let api = api_with_app().await;
    let body = api
        .refused(
            Method::POST,
            "/apps/shop/routes",
            json!({"domain": "p.example.com", "path": "/api"}),
            "validation_error",
        )
        .await;
    assert!(body["message"]
        .as_str()
        .unwrap_or_default()
        .contains("p.example.com/"));
    for path in ["api", "/a b", "/a?b", "/a//b", "/../x"] {
        api.refused(
            Method::POST,
            "/apps/shop/routes",
            json!({"domain": "p.example.com", "path": path}),
            "validation_error",
        )
        .await;
    }
    let root = api.route("shop", json!({"domain": "p.example.com"})).await;
    let api_route = api
        .route("shop", json!({"domain": "p.example.com", "path": "/api"}))
        .await;
    assert_eq!(api_route["path"], "/api/");
    // /api and /api/ are the same route.
    api.refused(
        Method::POST,
        "/apps/shop/routes",
        json!({"domain": "P.example.com", "path": "/api/"}),
        "conflict",
    )
    .await;

    // The root cannot go while /api/ depends on it.
    let root_path = format!(
        "/apps/shop/routes/{}",
        root["id"].as_str().unwrap_or_default()
    );
    let before = api.snapshot().await;
    let answer = api.delete(&root_path).await;
    let message = Api::expect_error(&answer, StatusCode::CONFLICT, "conflict");
    assert!(message.contains("p.example.com/api/"), "{message}");
    assert_eq!(before, api.snapshot().await);

    let (status, _) = api
        .delete(&format!(
            "/apps/shop/routes/{}",
            api_route["id"].as_str().unwrap_or_default()
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api.delete(&root_path).await;
    assert_eq!(status, StatusCode::OK);
    assert!(api
        .snapshot()
        .await
        .iter()
        .all(|(k, _)| !k.contains("/routes/") && !k.contains("/claims/http/")));
}

#[tokio::test]
async fn duplicate_domain_and_path_conflict() {
    let api = api_with_app().await;
    api.app("rival").await;
    let first = api
        .route("shop", json!({"domain": "dup.example.com"}))
        .await;
    let body = api
        .refused(
            Method::POST,
            "/apps/rival/routes",
            json!({"domain": "DUP.example.com."}),
            "conflict",
        )
        .await;
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(first["id"].as_str().unwrap_or("?")),
        "{message}"
    );
    // Same domain, another path: fine.
    api.route(
        "rival",
        json!({"domain": "dup.example.com", "path": "/rival"}),
    )
    .await;
}

#[tokio::test]
async fn tcp_ports_are_allocated_checked_and_exhausted() {
    let api = Api::with(|c| {
        c.tcp_ports = 4000..=4002;
        c.reserved_ports.insert(4001);
    });
    api.app("db").await;
    let first = api
        .route("db", json!({"type": "tcp", "service": "pg"}))
        .await;
    assert_eq!(first["port"], 4000);
    assert!(first["id"].as_str().unwrap_or_default().starts_with("tcp-"));
    assert_eq!(first["service"], "pg");
    // 4001 is reserved: the next one is 4002.
    let second = api
        .route(
            "db",
            json!({"type": "tcp", "leader": true, "proxy_protocol": "v2", "port": 0}),
        )
        .await;
    assert_eq!(second["port"], 4002);
    assert_eq!(second["leader"], true);
    assert_eq!(second["proxy_protocol"], "v2");
    assert_eq!(second["service"], "db-web");
    // Exhausted.
    let body = api
        .refused(
            Method::POST,
            "/apps/db/routes",
            json!({"type": "tcp"}),
            "conflict",
        )
        .await;
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("no free TCP port") && message.contains("4000-4002"),
        "{message}"
    );
    // Explicit: a taken port conflicts; reserved and out-of-range ones are refused.
    let body = api
        .refused(
            Method::POST,
            "/apps/db/routes",
            json!({"type": "tcp", "port": 4002}),
            "conflict",
        )
        .await;
    assert!(body["message"]
        .as_str()
        .unwrap_or_default()
        .contains("taken"));
    let body = api
        .refused(
            Method::POST,
            "/apps/db/routes",
            json!({"type": "tcp", "port": 4001}),
            "validation_error",
        )
        .await;
    assert!(body["message"]
        .as_str()
        .unwrap_or_default()
        .contains("reserved"));
    for port in [22, 5432, 8080] {
        let body = api
            .refused(
                Method::POST,
                "/apps/db/routes",
                json!({"type": "tcp", "port": port}),
                "validation_error",
            )
            .await;
        assert!(body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("outside"));
    }
    // A freed port is reusable.
    let (status, _) = api
        .delete(&format!(
            "/apps/db/routes/{}",
            first["id"].as_str().unwrap_or_default()
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(api.route("db", json!({"type": "tcp"})).await["port"], 4000);
}

#[tokio::test]
async fn fields_that_do_not_fit_the_type_are_refused() {
    let api = api_with_app().await;
    for body in [
        json!({"type": "tcp", "domain": "x.com"}),
        json!({"type": "tcp", "path": "/x"}),
        json!({"type": "tcp", "sticky": true}),
        json!({"type": "tcp", "certificate_id": "c"}),
        json!({"type": "http", "domain": "x.com", "port": 3000}),
        json!({"type": "http", "domain": "x.com", "proxy_protocol": "v1"}),
        json!({"type": "udp", "port": 3000}),
        json!({"type": "tcp", "proxy_protocol": "v3"}),
        json!({"type": "tcp", "backend_protocol": "h2c"}),
        json!({"domain": "x.com", "backend_protocol": "h3"}),
        json!({"domain": "x.com", "service": "a/b"}),
        json!({"domain": "x.com", "certificate_id": "missing"}),
    ] {
        api.refused(Method::POST, "/apps/shop/routes", body, "validation_error")
            .await;
    }
}

#[tokio::test]
async fn update_changes_what_may_change() {
    let api = api_with_app().await;
    let route = api.route("shop", json!({"domain": "u.example.com"})).await;
    let path = format!(
        "/apps/shop/routes/{}",
        route["id"].as_str().unwrap_or_default()
    );
    let (status, updated) = api
        .put(
            &path,
            json!({"service": "shop-api", "sticky": true, "leader": true,
                   "drain_backends": false, "disable_keep_alives": true,
                   "backend_protocol": "h2c"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["service"], "shop-api");
    assert_eq!(updated["sticky"], true);
    assert_eq!(updated["drain_backends"], false);
    assert_eq!(updated["backend_protocol"], "h2c");
    assert_eq!(updated["id"], route["id"]);
    assert_eq!(updated["created_at"], route["created_at"]);
    // The whole route sent back is accepted (Flynn's CLI does that).
    let (status, same) = api.put(&path, updated.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(same, updated);
    // HTTP/2 over TLS to the backends; an unknown protocol is refused.
    let (status, h2) = api.put(&path, json!({"backend_protocol": "h2"})).await;
    assert_eq!(
        (status, &h2["backend_protocol"]),
        (StatusCode::OK, &json!("h2"))
    );
    let (status, _) = api.put(&path, json!({"backend_protocol": "h3"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Immutable fields.
    for body in [
        json!({"domain": "other.example.com"}),
        json!({"path": "/x"}),
        json!({"type": "tcp"}),
        json!({"port": 3000}),
        json!({"service": "bad/name"}),
        json!({"proxy_protocol": "v1"}),
        json!({"certificate_id": "missing"}),
    ] {
        api.refused(Method::PUT, &path, body, "validation_error")
            .await;
    }
    // Unknown route, or a route of another app.
    api.app("other").await;
    let other_path = format!(
        "/apps/other/routes/{}",
        route["id"].as_str().unwrap_or_default()
    );
    api.refused(
        Method::PUT,
        &other_path,
        json!({"sticky": false}),
        "not_found",
    )
    .await;
    Api::expect_error(
        &api.get(&other_path).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    Api::expect_error(
        &api.delete(&other_path).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    api.refused(
        Method::PUT,
        "/apps/shop/routes/http-nope",
        json!({"sticky": false}),
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn update_tcp_route() {
    let api = api_with_app().await;
    let route = api.route("shop", json!({"type": "tcp"})).await;
    let path = format!(
        "/apps/shop/routes/{}",
        route["id"].as_str().unwrap_or_default()
    );
    let (status, updated) = api
        .put(
            &path,
            json!({"proxy_protocol": "v1", "leader": true, "service": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["proxy_protocol"], "v1");
    let (_, cleared) = api.put(&path, json!({"proxy_protocol": null})).await;
    assert_eq!(cleared["proxy_protocol"], Value::Null);
    assert_eq!(cleared["leader"], true);
    api.refused(
        Method::PUT,
        &path,
        json!({"port": 4999}),
        "validation_error",
    )
    .await;
    api.refused(
        Method::PUT,
        &path,
        json!({"sticky": true}),
        "validation_error",
    )
    .await;
}
