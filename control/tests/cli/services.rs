use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use crate::harness::{Client, Server};

async fn instances(client: &Client, service: &str) -> Vec<String> {
    let run = client
        .run(&["service", "list", service, "-o", "json"])
        .await;
    let json: Value = serde_json::from_str(run.ok()).expect("json");
    json.as_array()
        .expect("list")
        .iter()
        .filter_map(|i| i["id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn register_list_deregister() {
    let client = Client::new();
    let _server = Server::embedded(&client).await;
    let out = client
        .run(&[
            "service",
            "register",
            "web",
            "127.0.0.1:9001",
            "--meta",
            "zone=a",
        ])
        .await;
    assert_eq!(
        out.ok(),
        "registered 127.0.0.1-9001 (127.0.0.1:9001) as an instance of web\n"
    );
    client
        .run(&[
            "service",
            "register",
            "web",
            "127.0.0.1:9002",
            "--id",
            "second",
        ])
        .await
        .ok();
    let table = client.run(&["service"]).await;
    let lines: Vec<Vec<&str>> = table
        .ok()
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines, [vec!["SERVICE", "INSTANCES"], vec!["web", "2"]]);
    let json: Value =
        serde_json::from_str(client.run(&["service", "-o", "json"]).await.ok()).expect("json");
    assert_eq!(json, serde_json::json!([{"name": "web", "instances": 2}]));
    let table = client.run(&["service", "list", "web"]).await;
    let table = table.ok();
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains("127.0.0.1:9001") && table.contains("permanent"),
        "{table}"
    );
    assert_eq!(
        instances(&client, "web").await,
        ["127.0.0.1-9001", "second"]
    );

    // By address, and by id.
    let out = client
        .run(&["service", "deregister", "web", "127.0.0.1:9001"])
        .await;
    assert_eq!(
        out.ok(),
        "deregistered 127.0.0.1-9001 (127.0.0.1:9001) from web\n"
    );
    client
        .run(&["service", "deregister", "web", "second"])
        .await
        .ok();
    assert!(instances(&client, "web").await.is_empty());

    client
        .run(&["service", "deregister", "web", "second"])
        .await
        .fails_with("is not registered");
    client
        .run(&["service", "register", "web", "nowhere"])
        .await
        .fails_with("invalid address \"nowhere\"");
    client
        .run(&["service", "register", "bad/name", "127.0.0.1:1"])
        .await
        .fails_with("invalid service");
}

/// Starts `flynn service register --ttl …` and waits for its first line.
async fn keep_alive(client: &Client, service: &str, addr: &str) -> tokio::process::Child {
    let mut child = client
        .command(
            client.cwd.path(),
            &["service", "register", "--ttl", "1s", service, addr],
        )
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("registered in time")
        .expect("read")
        .expect("a line");
    assert!(first.starts_with("registered "), "{first}");
    // Keep reading so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[tokio::test]
async fn ttl_registrations_live_while_the_command_runs() {
    let client = Client::new();
    let _server = Server::embedded(&client).await;

    // SIGTERM deregisters at once.
    let mut child = keep_alive(&client, "beat", "127.0.0.1:9100").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        instances(&client, "beat").await,
        ["127.0.0.1-9100"],
        "heartbeats keep it"
    );
    signal(&child, "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(status.success(), "{status:?}");
    assert!(instances(&client, "beat").await.is_empty());

    // A killed registrar's instance goes when its TTL runs out.
    let mut child = keep_alive(&client, "beat", "127.0.0.1:9101").await;
    signal(&child, "-KILL");
    let _ = child.wait().await;
    assert_eq!(instances(&client, "beat").await, ["127.0.0.1-9101"]);
    flynn_testkit::eventually(Duration::from_secs(5), "TTL expiry", || async {
        instances(&client, "beat").await.is_empty()
    })
    .await
    .expect("the instance expires");
}
