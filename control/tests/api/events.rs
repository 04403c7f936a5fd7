use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::{Api, KEY};

fn types(events: &Value) -> Vec<String> {
    events
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|e| e["object_type"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn json_list_with_since_id_and_filters() {
    let api = Api::new();
    let app = api.app("ev").await;
    let route = api.route("ev", json!({"domain": "ev.example.com"})).await;
    let (_, events) = api.get("/events").await;
    assert_eq!(types(&events), ["app", "route"]);
    let first = &events[0];
    assert_eq!(first["object_id"], app["id"]);
    assert_eq!(first["app"], app["id"]);
    assert_eq!(first["data"]["name"], "ev");
    let second = &events[1];
    assert_eq!(second["object_id"], route["id"]);
    assert_eq!(second["data"]["domain"], "ev.example.com");
    let first_id = first["id"].as_i64().expect("id");
    let second_id = second["id"].as_i64().expect("id");
    assert!(second_id > first_id);

    let (_, after) = api.get(&format!("/events?since_id={first_id}")).await;
    assert_eq!(types(&after), ["route"]);
    let (_, none) = api.get(&format!("/events?since_id={second_id}")).await;
    assert_eq!(none, json!([]));

    let path = format!(
        "/apps/ev/routes/{}",
        route["id"].as_str().unwrap_or_default()
    );
    api.delete(&path).await;
    api.delete("/apps/ev").await;
    let (_, filtered) = api.get("/events?object_types=route,route_deletion").await;
    assert_eq!(types(&filtered), ["route", "route_deletion"]);
    let (_, latest) = api.get("/events?count=1").await;
    assert_eq!(types(&latest), ["app_deletion"]);
    let app_id = app["id"].as_str().unwrap_or_default();
    api.app("unrelated").await;
    let (_, of_app) = api.get(&format!("/events?app_id={app_id}")).await;
    assert_eq!(
        types(&of_app),
        ["app", "route", "route_deletion", "app_deletion"]
    );

    let answer = api.get("/events?since_id=abc").await;
    Api::expect_error(&answer, StatusCode::BAD_REQUEST, "validation_error");
}

/// Reads server-sent events from `body` until `n` have arrived: (id, JSON data).
async fn read_sse(body: &mut Body, n: usize) -> Vec<(i64, Value)> {
    let mut text = String::new();
    let mut events = Vec::new();
    while events.len() < n {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("an event within 5s")
            .expect("stream open")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let mut id = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                }
                if let Some(v) = line.strip_prefix("data:") {
                    data = serde_json::from_str(v.trim()).ok();
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                events.push((id, data));
            }
        }
    }
    events
}

async fn open_stream(api: &Api, last_event_id: Option<i64>) -> Body {
    let mut request = Request::get("/events")
        .header("authorization", format!("Bearer {KEY}"))
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    let response = api
        .router
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    response.into_body()
}

#[tokio::test]
async fn server_sent_events_replay_follow_and_resume() {
    let api = Api::new();
    api.app("one").await;
    let mut stream = open_stream(&api, None).await;
    // The past first...
    let past = read_sse(&mut stream, 1).await;
    assert_eq!(past[0].1["object_type"], "app");
    assert_eq!(past[0].1["data"]["name"], "one");
    // ...then live changes, as they happen.
    api.route("one", json!({"domain": "one.example.com"})).await;
    api.app("two").await;
    let live = read_sse(&mut stream, 2).await;
    assert_eq!(live[0].1["object_type"], "route");
    assert_eq!(live[1].1["data"]["name"], "two");
    assert!(past[0].0 < live[0].0 && live[0].0 < live[1].0);
    drop(stream);

    // A client that saw the route resumes after it, with Last-Event-Id.
    let mut resumed = open_stream(&api, Some(live[0].0)).await;
    let again = read_sse(&mut resumed, 1).await;
    assert_eq!(again[0].0, live[1].0);
    api.app("three").await;
    let next = read_sse(&mut resumed, 1).await;
    assert_eq!(next[0].1["data"]["name"], "three");
}
