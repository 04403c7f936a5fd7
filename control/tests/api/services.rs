use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::Api;

#[tokio::test]
async fn register_list_deregister() {
    let api = Api::new();
    let (status, instance) = api
        .post(
            "/services/shop-web/instances",
            json!({"addr": "127.0.0.1:9000", "meta": {"zone": "a"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{instance}");
    assert_eq!(instance["id"], "127.0.0.1-9000");
    assert_eq!(instance["addr"], "127.0.0.1:9000");
    assert_eq!(instance["ttl_seconds"], serde_json::Value::Null);
    // What the router reads.
    let stored = api
        .store
        .get("/flynn/services/shop-web/127.0.0.1-9000")
        .await
        .expect("get")
        .expect("stored");
    let parsed: flynn_store::types::Instance =
        serde_json::from_slice(&stored.value).expect("the router can read it");
    assert_eq!(parsed.addr.port(), 9000);
    assert_eq!(stored.lease, None);

    // Registering the same address again keeps one instance.
    api.post(
        "/services/shop-web/instances",
        json!({"addr": "127.0.0.1:9000"}),
    )
    .await;
    api.post(
        "/services/shop-web/instances",
        json!({"addr": "127.0.0.1:9001", "id": "second"}),
    )
    .await;
    api.post("/services/db/instances", json!({"addr": "[::1]:5432"}))
        .await;
    let (_, services) = api.get("/services").await;
    assert_eq!(
        services,
        json!([{"name": "db", "instances": 1}, {"name": "shop-web", "instances": 2}])
    );
    let (_, instances) = api.get("/services/shop-web/instances").await;
    let ids: Vec<&str> = instances
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert_eq!(ids, ["127.0.0.1-9000", "second"]);

    let (status, _) = api.delete("/services/shop-web/instances/second").await;
    assert_eq!(status, StatusCode::OK);
    Api::expect_error(
        &api.get("/services/shop-web/instances/second").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    Api::expect_error(
        &api.delete("/services/shop-web/instances/second").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn bad_registrations_are_refused() {
    let api = Api::new();
    for body in [
        json!({"addr": "nowhere"}),
        json!({"addr": "127.0.0.1"}),
        json!({"addr": "127.0.0.1:0"}),
        json!({"addr": "localhost:80"}),
        json!({"addr": "127.0.0.1:80", "ttl_seconds": 0}),
        json!({"addr": "127.0.0.1:80", "id": "a/b"}),
        json!({}),
    ] {
        api.refused(
            Method::POST,
            "/services/web/instances",
            body,
            "validation_error",
        )
        .await;
    }
    api.refused(
        Method::POST,
        "/services/bad%20name/instances",
        json!({"addr": "127.0.0.1:80"}),
        "validation_error",
    )
    .await;
}

#[tokio::test]
async fn ttl_registrations_live_by_heartbeats() {
    let api = Api::new();
    let (status, instance) = api
        .post(
            "/services/beat/instances",
            json!({"addr": "127.0.0.1:7000", "ttl_seconds": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(instance["ttl_seconds"], 1);
    let path = "/services/beat/instances/127.0.0.1-7000";
    // Heartbeats keep it well past its TTL.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (status, body) = api
            .call(Method::POST, &format!("{path}/heartbeat"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(api.get(path).await.0, StatusCode::OK);
    // Without them it goes.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    Api::expect_error(&api.get(path).await, StatusCode::NOT_FOUND, "not_found");
    let answer = api
        .call(Method::POST, &format!("{path}/heartbeat"), None)
        .await;
    Api::expect_error(&answer, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn permanent_registrations_accept_heartbeats_and_reregistration_drops_the_ttl() {
    let api = Api::new();
    api.post(
        "/services/re/instances",
        json!({"addr": "127.0.0.1:7001", "ttl_seconds": 1}),
    )
    .await;
    api.post("/services/re/instances", json!({"addr": "127.0.0.1:7001"}))
        .await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let path = "/services/re/instances/127.0.0.1-7001";
    assert_eq!(api.get(path).await.0, StatusCode::OK);
    let (status, _) = api
        .call(Method::POST, &format!("{path}/heartbeat"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
}
