use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{cert, Api};

/// No private key anywhere in a JSON value.
fn assert_no_key(value: &Value) {
    let text = value.to_string();
    assert!(
        !text.contains("PRIVATE KEY"),
        "a private key leaked: {text}"
    );
    assert!(!text.contains("\"key\""), "a key field leaked: {text}");
}

#[tokio::test]
async fn route_with_a_certificate() {
    let api = Api::new();
    api.app("tls").await;
    let (pem, key) = cert(&["tls.example.com"]);
    let route = api
        .route(
            "tls",
            json!({"domain": "tls.example.com", "certificate": {"cert": pem, "key": key}}),
        )
        .await;
    let cert_id = route["certificate_id"]
        .as_str()
        .expect("certificate id")
        .to_owned();
    // The router finds it under /flynn/certs/<id>.
    let stored = api
        .store
        .get(&format!("/flynn/certs/{cert_id}"))
        .await
        .expect("get")
        .expect("stored");
    let stored: flynn_store::types::Certificate =
        serde_json::from_slice(&stored.value).expect("the router can read it");
    assert!(stored.key.contains("PRIVATE KEY"));

    // The same certificate on a second route is one certificate.
    let second = api
        .route(
            "tls",
            json!({"domain": "tls.example.com", "path": "/v2",
                   "certificate": {"cert": pem, "key": key}}),
        )
        .await;
    assert_eq!(second["certificate_id"], cert_id.as_str());

    let (status, list) = api.get("/certificates").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_no_key(&list);
    assert_eq!(list[0]["domains"], json!(["tls.example.com"]));
    assert_eq!(list[0]["routes"].as_array().map(Vec::len), Some(2));
    let (_, one) = api.get(&format!("/certificates/{cert_id}")).await;
    assert_no_key(&one);
    let (_, routes) = api.get(&format!("/certificates/{cert_id}/routes")).await;
    assert_eq!(routes.as_array().map(Vec::len), Some(2));

    // In use: cannot be deleted.
    let before = api.snapshot().await;
    let answer = api.delete(&format!("/certificates/{cert_id}")).await;
    Api::expect_error(&answer, StatusCode::CONFLICT, "conflict");
    assert_eq!(before, api.snapshot().await);

    // Events never carry the key.
    let (_, events) = api.get("/events").await;
    assert!(events.as_array().is_some_and(|e| !e.is_empty()));
    assert_no_key(&events);

    // Once unused, it can.
    for r in [&second, &route] {
        let path = format!("/apps/tls/routes/{}", r["id"].as_str().unwrap_or_default());
        assert_eq!(api.delete(&path).await.0, StatusCode::OK);
    }
    let (status, deleted) = api.delete(&format!("/certificates/{cert_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_no_key(&deleted);
    Api::expect_error(
        &api.get(&format!("/certificates/{cert_id}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn certificates_must_parse_and_match() {
    let api = Api::new();
    api.app("tls").await;
    let (pem, key) = cert(&["a.example.com"]);
    let (_, other_key) = cert(&["a.example.com"]);
    let cases = [
        (json!({"cert": "garbage", "key": key}), "cert"),
        (json!({"cert": "", "key": key}), "cert"),
        (
            json!({"cert": "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n", "key": key}),
            "cert",
        ),
        (json!({"cert": pem, "key": "garbage"}), "key"),
        (json!({"cert": pem, "key": other_key}), "key"),
    ];
    for (certificate, field) in cases {
        let body = api
            .refused(
                Method::POST,
                "/apps/tls/routes",
                json!({"domain": "a.example.com", "certificate": certificate}),
                "validation_error",
            )
            .await;
        assert_eq!(body["detail"]["field"], field, "{body}");
        let body = api
            .refused(
                Method::POST,
                "/certificates",
                certificate,
                "validation_error",
            )
            .await;
        assert_eq!(body["detail"]["field"], field, "{body}");
    }
    let body = api
        .refused(
            Method::POST,
            "/apps/tls/routes",
            json!({"domain": "a.example.com", "certificate": {"cert": pem, "key": other_key}}),
            "validation_error",
        )
        .await;
    assert!(body["message"]
        .as_str()
        .unwrap_or_default()
        .contains("does not match"));
}

#[tokio::test]
async fn certificates_by_id() {
    let api = Api::new();
    api.app("tls").await;
    let (pem, key) = cert(&["b.example.com", "*.b.example.com"]);
    let (status, created) = api
        .post("/certificates", json!({"cert": pem, "key": key}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_no_key(&created);
    assert_eq!(
        created["domains"],
        json!(["b.example.com", "*.b.example.com"])
    );
    // Posting it again gives the same one.
    let (status, again) = api
        .post("/certificates", json!({"cert": pem, "key": key}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["id"], created["id"]);

    let route = api
        .route(
            "tls",
            json!({"domain": "b.example.com", "certificate_id": created["id"]}),
        )
        .await;
    assert_eq!(route["certificate_id"], created["id"]);
    // Swap the certificate through an update, then remove it.
    let (pem2, key2) = cert(&["b.example.com"]);
    let path = format!(
        "/apps/tls/routes/{}",
        route["id"].as_str().unwrap_or_default()
    );
    let (status, updated) = api
        .put(&path, json!({"certificate": {"cert": pem2, "key": key2}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_ne!(updated["certificate_id"], created["id"]);
    let (_, list) = api.get("/certificates").await;
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    let (_, cleared) = api.put(&path, json!({"certificate_id": null})).await;
    assert_eq!(cleared["certificate_id"], Value::Null);
    Api::expect_error(
        &api.get("/certificates/nope").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    Api::expect_error(
        &api.get("/certificates/nope/routes").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}
