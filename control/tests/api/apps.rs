use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::Api;

#[tokio::test]
async fn create_list_get_delete() {
    let api = Api::new();
    let app = api.app("web-shop").await;
    assert_eq!(app["name"], "web-shop");
    let id = app["id"].as_str().expect("id").to_owned();
    assert_eq!(app["strategy"], "all-at-once");
    assert!(app["created_at"].is_string());

    let (status, by_name) = api.get("/apps/web-shop").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_name, app);
    let (_, by_id) = api.get(&format!("/apps/{id}")).await;
    assert_eq!(by_id, app);

    api.app("another").await;
    let (_, list) = api.get("/apps").await;
    let names: Vec<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, ["another", "web-shop"]);

    let (status, deleted) = api.delete("/apps/web-shop").await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    Api::expect_error(
        &api.get("/apps/web-shop").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    Api::expect_error(
        &api.get(&format!("/apps/{id}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // The name is free again.
    api.app("web-shop").await;
}

#[tokio::test]
async fn generated_names() {
    let api = Api::new();
    let (status, app) = api.post("/apps", json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    let name = app["name"].as_str().expect("name");
    assert!(name.len() > 3 && name.contains('-'), "{name}");
    let (status, _) = api.get(&format!("/apps/{name}")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn duplicate_names_conflict() {
    let api = Api::new();
    api.app("dup").await;
    let body = api
        .refused(Method::POST, "/apps", json!({"name": "dup"}), "conflict")
        .await;
    assert!(body["message"].as_str().unwrap_or_default().contains("dup"));
}

#[tokio::test]
async fn invalid_names_and_strategies_are_refused() {
    let api = Api::new();
    for name in [
        "",
        "Upper",
        "under_score",
        "-dash",
        "dash-",
        "a--b",
        &"x".repeat(64),
    ] {
        let body = api
            .refused(
                Method::POST,
                "/apps",
                json!({ "name": name }),
                "validation_error",
            )
            .await;
        assert_eq!(body["detail"]["field"], "name", "{body}");
    }
    api.refused(
        Method::POST,
        "/apps",
        json!({"name": "ok", "strategy": "yolo"}),
        "validation_error",
    )
    .await;
}

#[tokio::test]
async fn unknown_apps_are_not_found() {
    let api = Api::new();
    for path in [
        "/apps/ghost",
        "/apps/ghost/routes",
        "/apps/ghost/release",
        "/apps/ghost/releases",
        "/apps/ghost/formations",
    ] {
        Api::expect_error(&api.get(path).await, StatusCode::NOT_FOUND, "not_found");
    }
    api.refused(
        Method::POST,
        "/apps/ghost/routes",
        json!({"domain": "ghost.example.com"}),
        "not_found",
    )
    .await;
    Api::expect_error(
        &api.delete("/apps/ghost").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn default_route_on_create() {
    let api = Api::with(|c| c.default_domain = Some("localhost".to_owned()));
    api.app("blog").await;
    let (_, routes) = api.get("/apps/blog/routes").await;
    let routes = routes.as_array().expect("routes");
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0]["domain"], "blog.localhost");
    assert_eq!(routes[0]["path"], "/");
    assert_eq!(routes[0]["service"], "blog-web");
    assert_eq!(routes[0]["type"], "http");
}

#[tokio::test]
async fn default_route_taken_means_no_app() {
    let api = Api::with(|c| c.default_domain = Some("localhost".to_owned()));
    api.app("first").await;
    // Another app took shop.localhost first.
    api.route("first", json!({"domain": "shop.localhost"}))
        .await;
    let body = api
        .refused(Method::POST, "/apps", json!({"name": "shop"}), "conflict")
        .await;
    assert!(body["message"]
        .as_str()
        .unwrap_or_default()
        .contains("shop.localhost"));
    Api::expect_error(
        &api.get("/apps/shop").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn delete_removes_routes_and_frees_domains_and_ports() {
    let api = Api::new();
    api.app("gone").await;
    api.route("gone", json!({"domain": "gone.example.com"}))
        .await;
    api.route(
        "gone",
        json!({"domain": "gone.example.com", "path": "/api"}),
    )
    .await;
    let tcp = api
        .route("gone", json!({"type": "tcp", "port": 3100}))
        .await;
    assert_eq!(tcp["port"], 3100);
    let (status, deleted) = api.delete("/apps/gone").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deleted["deleted_routes"].as_array().map(Vec::len), Some(3));
    let (_, routes) = api.get("/routes").await;
    assert_eq!(routes, json!([]));
    // Nothing of the app is left in the store but its events.
    let left: Vec<String> = api.snapshot().await.into_iter().map(|(k, _)| k).collect();
    assert!(left.is_empty(), "{left:?}");
    api.app("next").await;
    api.route("next", json!({"domain": "gone.example.com"}))
        .await;
    api.route(
        "next",
        json!({"domain": "gone.example.com", "path": "/api"}),
    )
    .await;
    api.route("next", json!({"type": "tcp", "port": 3100}))
        .await;
}

#[tokio::test]
async fn delete_refused_while_another_app_depends_on_its_root_route() {
    let api = Api::new();
    api.app("owner").await;
    api.app("tenant").await;
    api.route("owner", json!({"domain": "shared.example.com"}))
        .await;
    api.route(
        "tenant",
        json!({"domain": "shared.example.com", "path": "/tenant"}),
    )
    .await;
    let before = api.snapshot().await;
    let answer = api.delete("/apps/owner").await;
    Api::expect_error(&answer, StatusCode::CONFLICT, "conflict");
    assert_eq!(before, api.snapshot().await);
}
