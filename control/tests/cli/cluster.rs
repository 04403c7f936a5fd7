use serde_json::Value;

use crate::harness::{Client, Server};

#[tokio::test]
async fn cluster_add_default_remove() {
    let client = Client::new();
    client
        .run(&["apps"])
        .await
        .fails_with("no cluster configured");
    let out = client
        .run(&["cluster", "add", "one", "127.0.0.1:1", "key-one"])
        .await;
    assert_eq!(out.ok(), "Cluster \"one\" added.\n");
    let out = client
        .run(&[
            "cluster",
            "add",
            "-d",
            "two",
            "http://127.0.0.1:2",
            "key-two",
        ])
        .await;
    assert_eq!(out.ok(), "Cluster \"two\" added and set as default.\n");
    client
        .run(&["cluster", "add", "one", "http://127.0.0.1:3", "k"])
        .await
        .fails_with("cluster \"one\" already exists");
    client
        .run(&["cluster", "add", "three", "https://127.0.0.1:3", "k"])
        .await
        .fails_with("is not http://host:port");

    let table = client.run(&["cluster"]).await;
    let lines: Vec<Vec<&str>> = table
        .ok()
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        [
            vec!["NAME", "URL"],
            vec!["one", "http://127.0.0.1:1"],
            vec!["two", "http://127.0.0.1:2", "(default)"],
        ]
    );
    let json = client.run(&["cluster", "-o", "json"]).await;
    assert!(!json.ok().contains("key-"), "keys never printed");
    let json: Value = serde_json::from_str(json.ok()).expect("json");
    assert_eq!(json[1]["default"], true);
    assert_eq!(client.run(&["cluster", "default"]).await.ok(), "two\n");
    assert_eq!(
        client.run(&["cluster", "default", "one"]).await.ok(),
        "\"one\" is now the default cluster.\n"
    );
    client
        .run(&["cluster", "default", "nope"])
        .await
        .fails_with("cluster \"nope\" not found");

    // Unreachable controllers, by default and with -c.
    client
        .run(&["apps"])
        .await
        .fails_with("cannot reach the controller of cluster \"one\" at http://127.0.0.1:1");
    client
        .run(&["-c", "two", "apps"])
        .await
        .fails_with("cannot reach the controller of cluster \"two\"");
    client
        .run(&["-c", "nope", "apps"])
        .await
        .fails_with("cluster \"nope\" not found");

    assert_eq!(
        client.run(&["cluster", "remove", "one"]).await.ok(),
        "Cluster \"one\" removed.\n"
    );
    client
        .run(&["cluster", "remove", "one"])
        .await
        .fails_with("cluster \"one\" not found");
    let rc = std::fs::read_to_string(client.flynnrc()).expect("flynnrc");
    assert!(
        rc.contains("[[cluster]]") && rc.contains("Name = \"two\""),
        "{rc}"
    );
    assert!(
        !rc.contains("default ="),
        "the removed default is unset: {rc}"
    );
}

#[tokio::test]
async fn a_wrong_key_is_refused() {
    let client = Client::new();
    let server = Server::embedded(&client).await;
    // Another URL for the same controller (one URL is one cluster in ~/.flynnrc).
    let url = format!("http://localhost:{}", server.controller.port());
    client
        .run(&["cluster", "add", "bad", &url, "wrong-key"])
        .await
        .ok();
    client
        .run(&["-c", "bad", "apps"])
        .await
        .fails_with("a valid controller key is required");
    // The server's own cluster still works.
    client.run(&["apps"]).await.ok();
}
