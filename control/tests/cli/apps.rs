use serde_json::Value;

use crate::harness::{Client, Server};

#[tokio::test]
async fn first_start_writes_the_client_config_and_apps_work() {
    let client = Client::new();
    let server = Server::embedded(&client).await;
    let rc = std::fs::read_to_string(client.flynnrc()).expect("~/.flynnrc written");
    assert!(rc.contains("default = \"default\""), "{rc}");
    assert!(
        rc.contains(&format!("ControllerURL = \"http://{}\"", server.controller)),
        "{rc}"
    );
    assert!(
        server.data.path().join("controller.key").exists(),
        "key generated in the data dir"
    );

    assert_eq!(
        client.run(&["create", "myapp"]).await.ok(),
        "Created myapp\n"
    );
    client
        .run(&["create", "myapp"])
        .await
        .fails_with("app \"myapp\" already exists");
    client
        .run(&["create", "Bad_Name"])
        .await
        .fails_with("invalid app name \"Bad_Name\"");
    let generated = client.run(&["create"]).await;
    let generated = generated
        .ok()
        .strip_prefix("Created ")
        .expect("Created NAME")
        .trim()
        .to_owned();

    let apps = client.run(&["apps"]).await;
    let lines: Vec<&str> = apps.ok().lines().collect();
    assert!(lines[0].starts_with("ID"), "{lines:?}");
    for column in ["NAME", "RELEASE", "CREATED"] {
        assert!(lines[0].contains(column), "{lines:?}");
    }
    assert!(lines.iter().any(|l| l.contains("  myapp  ")), "{lines:?}");
    let json: Value =
        serde_json::from_str(client.run(&["apps", "-o", "json"]).await.ok()).expect("apps -o json");
    let mut names: Vec<&str> = json
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    names.sort();
    let mut expected = vec!["myapp", generated.as_str()];
    expected.sort();
    assert_eq!(names, expected);

    let info = client.run(&["-a", "myapp", "info"]).await;
    let info = info.ok();
    assert!(info.starts_with("=== myapp\n"), "{info}");
    assert!(
        info.contains(&format!(
            "Web URL: http://myapp.localhost:{}",
            server.http.port()
        )),
        "{info}"
    );
    let json: Value = serde_json::from_str(
        client
            .run(&["-a", "myapp", "info", "-o", "json"])
            .await
            .ok(),
    )
    .expect("info -o json");
    assert_eq!(json["name"], "myapp");
    assert_eq!(json["routes"][0]["domain"], "myapp.localhost");

    // The app from FLYNN_APP.
    let by_env = client
        .run_in(client.cwd.path(), &["route"], &[("FLYNN_APP", "myapp")])
        .await;
    assert!(by_env.ok().contains("http:myapp.localhost"));

    client
        .run(&["-a", "ghost", "info"])
        .await
        .fails_with("app \"ghost\" not found");
    client.run(&["info"]).await.fails_with("no app given");
    client
        .run(&["-a", "myapp", "delete"])
        .await
        .fails_with("pass -y");
    assert_eq!(
        client.run(&["-a", "myapp", "delete", "-y"]).await.ok(),
        "Deleted myapp (removed 1 route)\n"
    );
    client
        .run(&["-a", "myapp", "route"])
        .await
        .fails_with("app \"myapp\" not found");
}

#[tokio::test]
async fn the_app_comes_from_the_git_remote() {
    let client = Client::new();
    let _server = Server::embedded(&client).await;
    let repo = tempfile::tempdir().expect("repo");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(repo.path())
            .env("HOME", client.home.path())
            .output()
            .expect("git")
    };
    assert!(git(&["init", "-q"]).status.success());
    client
        .run_in(repo.path(), &["create", "gitapp"], &[])
        .await
        .ok();
    let url = git(&["config", "--get", "remote.flynn.url"]);
    let url = String::from_utf8_lossy(&url.stdout).trim().to_owned();
    assert!(url.ends_with("/gitapp.git"), "{url}");

    let routes = client.run_in(repo.path(), &["route"], &[]).await;
    assert!(routes.ok().contains("http:gitapp.localhost"));
    // -a wins over the remote.
    client.run(&["create", "other"]).await.ok();
    let other = client
        .run_in(repo.path(), &["-a", "other", "route"], &[])
        .await;
    assert!(other.ok().contains("http:other.localhost"));

    client
        .run_in(repo.path(), &["delete", "-y"], &[])
        .await
        .ok();
    assert!(!git(&["config", "--get", "remote.flynn.url"])
        .status
        .success());
}

#[tokio::test]
async fn errors_are_one_line_even_with_rust_backtrace() {
    let client = Client::new();
    let _server = Server::embedded(&client).await;
    let run = client
        .run_in(
            client.cwd.path(),
            &["-a", "ghost", "route"],
            &[("RUST_BACKTRACE", "full")],
        )
        .await;
    run.fails_with("app \"ghost\" not found");
}

#[tokio::test]
async fn another_cluster_named_default_is_kept() {
    let client = Client::new();
    let theirs = "default = \"default\"\n\n[[cluster]]\nName = \"default\"\n\
                  ControllerURL = \"http://10.9.9.9:8081\"\nKey = \"theirs\"\n";
    std::fs::write(client.flynnrc(), theirs).expect("write flynnrc");
    let server = Server::embedded(&client).await;
    assert_eq!(
        std::fs::read_to_string(client.flynnrc()).expect("flynnrc"),
        theirs
    );
    assert!(
        server.log().contains("not replacing it"),
        "{}",
        server.log()
    );
}

#[tokio::test]
async fn the_deploy_strategy_and_timeout_are_set_at_create_and_updated() {
    let client = Client::new();
    let _server = Server::embedded(&client).await;
    let app = |name: &'static str| {
        let client = &client;
        async move {
            let out = client.run(&["-a", name, "info", "-o", "json"]).await;
            let info: Value = serde_json::from_str(out.ok()).expect("info -o json");
            (info["strategy"].clone(), info["deploy_timeout"].clone())
        }
    };
    client
        .run(&[
            "create",
            "steady",
            "--strategy",
            "one-by-one",
            "--deploy-timeout",
            "2m",
        ])
        .await
        .ok();
    assert_eq!(app("steady").await, ("one-by-one".into(), 120.into()));
    client.run(&["create", "plain"]).await.ok();
    assert_eq!(app("plain").await, ("all-at-once".into(), 30.into()));
    assert!(client
        .run(&["-a", "plain", "info"])
        .await
        .ok()
        .contains("all-at-once, timeout 30s"));

    let updated = client
        .run(&["-a", "steady", "update", "--strategy", "all-at-once"])
        .await;
    assert_eq!(
        updated.ok(),
        "Updated steady: strategy all-at-once, deploy timeout 120s\n"
    );
    assert_eq!(app("steady").await, ("all-at-once".into(), 120.into()));

    // Bad input changes nothing.
    let bad = client
        .run(&["-a", "steady", "update", "--strategy", "sideways"])
        .await;
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("sideways"), "{bad:?}");
    let zero = client
        .run(&["-a", "steady", "update", "--deploy-timeout", "0s"])
        .await;
    assert_ne!(zero.code, 0, "a zero timeout is refused: {zero:?}");
    client
        .run(&["-a", "steady", "update"])
        .await
        .fails_with("nothing to change");
    assert_eq!(app("steady").await, ("all-at-once".into(), 120.into()));
}
