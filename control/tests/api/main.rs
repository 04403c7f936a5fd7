//! The controller API in-process: requests go through `tower::ServiceExt::oneshot` on the axum
//! router, over the embedded in-memory store. No socket.

mod apps;
mod certs;
mod concurrency;
mod events;
mod releases;
mod routes;
mod services;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use flynn_control::api::{self, ApiConfig};
use flynn_store::{EmbeddedStore, Store};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

pub const KEY: &str = "test-key";

/// One controller over its own in-memory store.
#[derive(Clone)]
pub struct Api {
    pub router: axum::Router,
    pub store: Arc<dyn Store>,
}

impl Default for Api {
    fn default() -> Self {
        Api::new()
    }
}

impl Api {
    pub fn new() -> Api {
        Api::with(|_| {})
    }

    pub fn with(configure: impl FnOnce(&mut ApiConfig)) -> Api {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
        let mut config = ApiConfig::new(KEY);
        configure(&mut config);
        Api {
            router: api::app(store.clone(), config),
            store,
        }
    }

    /// A request with the key; the status and the JSON body (Null when empty or not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_as(Some(KEY), method, path, body).await
    }

    pub async fn call_as(
        &self,
        key: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .expect("request");
        self.send(request).await
    }

    pub async fn send(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None).await
    }

    /// Creates an app and returns its JSON.
    pub async fn app(&self, name: &str) -> Value {
        let (status, app) = self.post("/apps", json!({ "name": name })).await;
        assert_eq!(status, StatusCode::CREATED, "{app}");
        app
    }

    /// Creates a route and returns its JSON; panics unless 201.
    pub async fn route(&self, app: &str, body: Value) -> Value {
        let (status, route) = self.post(&format!("/apps/{app}/routes"), body).await;
        assert_eq!(status, StatusCode::CREATED, "{route}");
        route
    }

    /// Every key and value in the store but the events: to prove that nothing was written.
    pub async fn snapshot(&self) -> Vec<(String, String)> {
        self.store
            .range("/flynn/")
            .await
            .expect("range")
            .kvs
            .into_iter()
            .filter(|kv| !kv.key.starts_with("/flynn/events/"))
            .map(|kv| (kv.key, String::from_utf8_lossy(&kv.value).into_owned()))
            .collect()
    }

    /// Asserts the answer is an error with this status and code, and returns its message.
    pub fn expect_error(answer: &(StatusCode, Value), status: StatusCode, code: &str) -> String {
        assert_eq!(answer.0, status, "{}", answer.1);
        assert_eq!(answer.1["code"], code, "{}", answer.1);
        let message = answer.1["message"].as_str().unwrap_or_default().to_owned();
        assert!(!message.is_empty(), "{}", answer.1);
        message
    }

    /// Sends a request that must fail validation and checks that the store did not change.
    pub async fn refused(&self, method: Method, path: &str, body: Value, code: &str) -> Value {
        let before = self.snapshot().await;
        let answer = self.call(method, path, Some(body)).await;
        let status = match code {
            "validation_error" => StatusCode::BAD_REQUEST,
            "conflict" => StatusCode::CONFLICT,
            "not_found" => StatusCode::NOT_FOUND,
            other => panic!("unexpected code {other}"),
        };
        Api::expect_error(&answer, status, code);
        assert_eq!(
            before,
            self.snapshot().await,
            "a refused request wrote to the store"
        );
        answer.1
    }
}

/// A self-signed certificate for `names` and its key, both PEM.
pub use flynn_testkit::tls::self_signed as cert;

#[tokio::test]
async fn ping_needs_no_key_and_everything_else_does() {
    let api = Api::new();
    let (status, _) = api.call_as(None, Method::GET, "/ping", None).await;
    assert_eq!(status, StatusCode::OK);
    for path in ["/apps", "/routes", "/events", "/no-such-thing"] {
        let answer = api.call_as(None, Method::GET, path, None).await;
        Api::expect_error(&answer, StatusCode::UNAUTHORIZED, "unauthorized");
        let answer = api.call_as(Some("wrong"), Method::GET, path, None).await;
        Api::expect_error(&answer, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // Not written either.
    let before = api.snapshot().await;
    let answer = api
        .call_as(None, Method::POST, "/apps", Some(json!({"name": "x"})))
        .await;
    Api::expect_error(&answer, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(before, api.snapshot().await);
    // A basic or malformed header is no bearer key.
    let request = Request::get("/apps")
        .header("authorization", KEY)
        .body(Body::empty())
        .expect("request");
    assert_eq!(api.send(request).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn unknown_endpoints_and_methods_use_the_error_shape() {
    let api = Api::new();
    let answer = api.get("/nope").await;
    Api::expect_error(&answer, StatusCode::NOT_FOUND, "not_found");
    let answer = api.call(Method::PATCH, "/apps", None).await;
    Api::expect_error(
        &answer,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

#[tokio::test]
async fn malformed_bodies_are_validation_errors() {
    let api = Api::new();
    let request = Request::post("/apps")
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .expect("request");
    let answer = api.send(request).await;
    Api::expect_error(&answer, StatusCode::BAD_REQUEST, "validation_error");
    api.refused(
        Method::POST,
        "/apps",
        json!({"name": "a", "surprise": 1}),
        "validation_error",
    )
    .await;
    api.refused(
        Method::POST,
        "/apps",
        json!({"name": 5}),
        "validation_error",
    )
    .await;
}
