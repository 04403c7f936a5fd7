//! Uniqueness under concurrent requests: claims are compare-and-swap, not read-then-write.

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::Api;

const PARALLEL: usize = 50;

/// Sends the same request `PARALLEL` times at once; the answers.
async fn all_at_once(
    api: &Api,
    method: Method,
    path: &str,
    body: Value,
) -> Vec<(StatusCode, Value)> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(PARALLEL));
    let tasks: Vec<_> = (0..PARALLEL)
        .map(|_| {
            let api = api.clone();
            let method = method.clone();
            let path = path.to_owned();
            let body = body.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                api.call(method, &path, Some(body)).await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("task"));
    }
    answers
}

fn count(answers: &[(StatusCode, Value)], status: StatusCode) -> usize {
    answers.iter().filter(|(s, _)| *s == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_domain_one_winner() {
    let api = Api::new();
    api.app("race").await;
    let answers = all_at_once(
        &api,
        Method::POST,
        "/apps/race/routes",
        json!({"domain": "race.example.com"}),
    )
    .await;
    assert_eq!(count(&answers, StatusCode::CREATED), 1, "{answers:?}");
    assert_eq!(
        count(&answers, StatusCode::CONFLICT),
        PARALLEL - 1,
        "{answers:?}"
    );
    let (_, routes) = api.get("/routes").await;
    assert_eq!(routes.as_array().map(Vec::len), Some(1));

    // Same for a path on it.
    let answers = all_at_once(
        &api,
        Method::POST,
        "/apps/race/routes",
        json!({"domain": "race.example.com", "path": "/api"}),
    )
    .await;
    assert_eq!(count(&answers, StatusCode::CREATED), 1, "{answers:?}");
    assert_eq!(count(&answers, StatusCode::CONFLICT), PARALLEL - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_port_one_winner() {
    let api = Api::new();
    api.app("race").await;
    let answers = all_at_once(
        &api,
        Method::POST,
        "/apps/race/routes",
        json!({"type": "tcp", "port": 3333}),
    )
    .await;
    assert_eq!(count(&answers, StatusCode::CREATED), 1, "{answers:?}");
    assert_eq!(
        count(&answers, StatusCode::CONFLICT),
        PARALLEL - 1,
        "{answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allocated_ports_are_distinct() {
    let api = Api::new();
    api.app("race").await;
    let answers = all_at_once(
        &api,
        Method::POST,
        "/apps/race/routes",
        json!({"type": "tcp"}),
    )
    .await;
    assert_eq!(
        count(&answers, StatusCode::CREATED),
        PARALLEL,
        "{answers:?}"
    );
    let ports: BTreeSet<u64> = answers
        .iter()
        .filter_map(|(_, r)| r["port"].as_u64())
        .collect();
    assert_eq!(ports.len(), PARALLEL);
    assert!(ports.iter().all(|p| (3000..=3500).contains(p)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_app_name_one_winner() {
    let api = Api::new();
    let answers = all_at_once(&api, Method::POST, "/apps", json!({"name": "same"})).await;
    assert_eq!(count(&answers, StatusCode::CREATED), 1, "{answers:?}");
    assert_eq!(count(&answers, StatusCode::CONFLICT), PARALLEL - 1);
    let (_, apps) = api.get("/apps").await;
    assert_eq!(apps.as_array().map(Vec::len), Some(1));
}

/// A path route created while its root is being deleted: never a path route without a root.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_path_route_never_outlives_its_root() {
    let api = Api::new();
    api.app("race").await;
    for round in 0..30 {
        let domain = format!("r{round}.example.com");
        let root = api.route("race", json!({ "domain": domain })).await;
        let root_path = format!(
            "/apps/race/routes/{}",
            root["id"].as_str().unwrap_or_default()
        );
        let create = {
            let api = api.clone();
            let domain = domain.clone();
            tokio::spawn(async move {
                api.post("/apps/race/routes", json!({"domain": domain, "path": "/p"}))
                    .await
            })
        };
        let delete = {
            let api = api.clone();
            tokio::spawn(async move { api.delete(&root_path).await })
        };
        let created = create.await.expect("task");
        let deleted = delete.await.expect("task");
        let (_, routes) = api.get("/routes").await;
        let of_domain: Vec<&Value> = routes
            .as_array()
            .expect("routes")
            .iter()
            .filter(|r| r["domain"] == domain.as_str())
            .collect();
        let has_root = of_domain.iter().any(|r| r["path"] == "/");
        let has_path = of_domain.iter().any(|r| r["path"] == "/p/");
        assert!(
            !has_path || has_root,
            "round {round}: {created:?} {deleted:?} {of_domain:?}"
        );
        // Exactly one of the two won, or the create came first and the delete was refused.
        match (created.0, deleted.0) {
            (StatusCode::CREATED, StatusCode::CONFLICT) => assert!(has_root && has_path),
            (StatusCode::BAD_REQUEST, StatusCode::OK) => assert!(!has_root && !has_path),
            other => panic!("round {round}: unexpected outcome {other:?}"),
        }
    }
}

/// Routes created while their app is being deleted: none survives the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_route_outlives_its_app() {
    let api = Api::new();
    for round in 0..20 {
        let name = format!("doomed{round}");
        api.app(&name).await;
        let mut tasks = Vec::new();
        for i in 0..8 {
            let api = api.clone();
            let path = format!("/apps/{name}/routes");
            let domain = format!("r{round}-{i}.example.com");
            tasks.push(tokio::spawn(async move {
                api.post(&path, json!({ "domain": domain })).await
            }));
        }
        let deleted = {
            let api = api.clone();
            let path = format!("/apps/{name}");
            tokio::spawn(async move { api.delete(&path).await })
        };
        for task in tasks {
            let (status, body) = task.await.expect("task");
            assert!(
                matches!(status, StatusCode::CREATED | StatusCode::NOT_FOUND),
                "{status} {body}"
            );
        }
        let (status, body) = deleted.await.expect("task");
        assert_eq!(status, StatusCode::OK, "{body}");
        let (_, apps) = api.get("/apps").await;
        let ids: BTreeSet<&str> = apps
            .as_array()
            .expect("apps")
            .iter()
            .filter_map(|a| a["id"].as_str())
            .collect();
        let (_, routes) = api.get("/routes").await;
        for route in routes.as_array().expect("routes") {
            let app = route["app_id"].as_str().unwrap_or_default();
            assert!(ids.contains(app), "round {round}: {route} outlived its app");
        }
    }
}
