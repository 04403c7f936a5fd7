use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::Api;

#[tokio::test]
async fn artifacts_releases_formations() {
    let api = Api::new();
    let app = api.app("rel").await;
    let app_id = app["id"].as_str().expect("id");

    let (status, artifact) = api
        .post(
            "/artifacts",
            json!({"type": "docker", "uri": "docker://example/app:1", "meta": {"v": "1"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{artifact}");
    let artifact_id = artifact["id"].as_str().expect("id");
    let (_, fetched) = api.get(&format!("/artifacts/{artifact_id}")).await;
    assert_eq!(fetched, artifact);
    let (_, artifacts) = api.get("/artifacts").await;
    assert_eq!(artifacts.as_array().map(Vec::len), Some(1));

    let (status, release) = api
        .post(
            "/releases",
            json!({
                "app_id": "rel",
                "artifacts": [artifact_id],
                "env": {"PORT": "8080"},
                "processes": {"web": {"args": ["serve"], "ports": [{"port": 8080}],
                                      "resurrect": true}},
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{release}");
    let release_id = release["id"].as_str().expect("id");
    assert_eq!(release["app_id"], app_id);
    assert_eq!(release["processes"]["web"]["ports"][0]["proto"], "tcp");
    // Unknown process fields are kept.
    assert_eq!(release["processes"]["web"]["resurrect"], true);

    // Immutable.
    for method in [Method::PUT, Method::PATCH, Method::DELETE] {
        api.refused(
            method,
            &format!("/releases/{release_id}"),
            json!({"env": {}}),
            "validation_error",
        )
        .await;
    }

    Api::expect_error(
        &api.get("/apps/rel/release").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let (status, updated) = api
        .put("/apps/rel/release", json!({"id": release_id}))
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["release_id"], release_id);
    let (_, current) = api.get("/apps/rel/release").await;
    assert_eq!(current, release);
    let (_, listed) = api.get("/apps/rel/releases").await;
    assert_eq!(listed, json!([release]));

    let path = format!("/apps/rel/formations/{release_id}");
    let (status, formation) = api.put(&path, json!({"processes": {"web": 2}})).await;
    assert_eq!(status, StatusCode::OK, "{formation}");
    assert_eq!(formation["processes"]["web"], 2);
    assert_eq!(formation["app"], app_id);
    let (_, formations) = api.get("/apps/rel/formations").await;
    assert_eq!(formations.as_array().map(Vec::len), Some(1));
    api.refused(
        Method::PUT,
        &path,
        json!({"processes": {"worker": 1}}),
        "validation_error",
    )
    .await;
    api.refused(
        Method::PUT,
        &path,
        json!({"processes": {"web": -1}}),
        "validation_error",
    )
    .await;
    let (status, _) = api.delete(&path).await;
    assert_eq!(status, StatusCode::OK);
    Api::expect_error(&api.get(&path).await, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn bad_releases_and_artifacts_are_refused() {
    let api = Api::new();
    api.app("rel").await;
    api.app("other").await;
    api.refused(
        Method::POST,
        "/artifacts",
        json!({"type": "tarball", "uri": "x"}),
        "validation_error",
    )
    .await;
    api.refused(
        Method::POST,
        "/artifacts",
        json!({"type": "docker", "uri": " "}),
        "validation_error",
    )
    .await;
    api.refused(
        Method::POST,
        "/releases",
        json!({"artifacts": ["missing"]}),
        "validation_error",
    )
    .await;
    api.refused(
        Method::POST,
        "/releases",
        json!({"app_id": "ghost"}),
        "validation_error",
    )
    .await;
    api.refused(
        Method::POST,
        "/releases",
        json!({"processes": {"bad name": {}}}),
        "validation_error",
    )
    .await;
    api.refused(
        Method::PUT,
        "/apps/rel/release",
        json!({"id": "missing"}),
        "validation_error",
    )
    .await;
    let (_, foreign) = api.post("/releases", json!({"app_id": "other"})).await;
    api.refused(
        Method::PUT,
        "/apps/rel/release",
        json!({"id": foreign["id"]}),
        "validation_error",
    )
    .await;
    Api::expect_error(
        &api.get("/releases/missing").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    Api::expect_error(
        &api.get("/artifacts/missing").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    api.refused(
        Method::PUT,
        "/apps/rel/formations/missing",
        json!({"processes": {}}),
        "not_found",
    )
    .await;
}
