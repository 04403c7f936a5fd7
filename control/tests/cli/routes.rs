use std::time::Duration;

use flynn_testkit::backend::Backend;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Client, Server};
use crate::{backend_of, tour, wait_backend};

#[tokio::test]
async fn the_tour_on_the_embedded_store() {
    let client = Client::new();
    let server = Server::embedded(&client).await;
    tour(&client, &server).await;
}

fn write_cert(dir: &std::path::Path, name: &str, domains: &[&str]) -> (String, String) {
    let (cert_pem, key_pem) = flynn_testkit::tls::self_signed(domains);
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, cert_pem).expect("write cert");
    std::fs::write(&key, key_pem).expect("write key");
    (cert.display().to_string(), key.display().to_string())
}

#[tokio::test]
async fn route_commands_and_their_failures() {
    let client = Client::new();
    let server = Server::embedded(&client).await;
    client.run(&["create", "web"]).await.ok();
    let run = |args: Vec<&'static str>| {
        let client = &client;
        async move {
            let mut full = vec!["-a", "web"];
            full.extend(args);
            client.run(&full).await
        }
    };

    // The table.
    let table = run(vec!["route"]).await;
    let lines: Vec<&str> = table.ok().lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["ROUTE", "SERVICE", "ID", "STICKY", "LEADER", "PATH"]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[0], "http:web.localhost");
    assert_eq!(row[1], "web-web");
    assert!(row[2].starts_with("http-"));
    assert_eq!(&row[3..], ["false", "false", "/"]);

    // Flags.
    let id = run(vec![
        "route",
        "add",
        "http",
        "--sticky",
        "--leader",
        "--no-drain-backends",
        "--disable-keep-alives",
        "--backend-protocol",
        "h2c",
        "-s",
        "other",
        "Flags.Example.com",
    ])
    .await;
    let id = id.ok().trim().to_owned();
    let routes: Value =
        serde_json::from_str(run(vec!["route", "-o", "json"]).await.ok()).expect("json");
    let route = routes
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["id"] == id.as_str()))
        .expect("the new route")
        .clone();
    assert_eq!(route["domain"], "flags.example.com");
    assert_eq!(route["service"], "other");
    assert_eq!(route["sticky"], true);
    assert_eq!(route["leader"], true);
    assert_eq!(route["drain_backends"], false);
    assert_eq!(route["disable_keep_alives"], true);
    assert_eq!(route["backend_protocol"], "h2c");

    // Update.
    let updated = client
        .run(&[
            "-a",
            "web",
            "route",
            "update",
            &id,
            "--no-sticky",
            "-s",
            "web-web",
            "--drain-backends",
        ])
        .await;
    assert_eq!(updated.ok(), format!("updated route {id}\n"));
    let table = run(vec!["route"]).await;
    let line = table
        .ok()
        .lines()
        .find(|l| l.contains(&id))
        .expect("row")
        .to_owned();
    let row: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        row,
        [
            "http:flags.example.com",
            "web-web",
            id.as_str(),
            "false",
            "true",
            "/"
        ]
    );

    // Failures, each one clear line.
    run(vec!["route", "add", "http", "bad..domain"])
        .await
        .fails_with("invalid domain \"bad..domain\"");
    run(vec!["route", "add", "http", "web.localhost"])
        .await
        .fails_with("web.localhost/ is already taken by route http-");
    run(vec!["route", "add", "http", "nowhere.example.com/api"])
        .await
        .fails_with("needs a route for nowhere.example.com/ first");
    run(vec!["route", "add", "http", "a.example.com/a b"])
        .await
        .fails_with("invalid path");
    run(vec!["route", "remove", "http-nope"])
        .await
        .fails_with("route \"http-nope\" not found in app web");
    client
        .run(&["-a", "web", "route", "update", "http-nope", "--sticky"])
        .await
        .fails_with("not found");
    client
        .run(&["-a", "ghost", "route", "add", "http", "ghost.example.com"])
        .await
        .fails_with("app \"ghost\" not found");

    // Certificates.
    let dir = client.cwd.path();
    let (cert, key) = write_cert(dir, "secure", &["secure.example.com"]);
    let (_, other_key) = write_cert(dir, "other", &["secure.example.com"]);
    client
        .run(&[
            "-a",
            "web",
            "route",
            "add",
            "http",
            "-c",
            "/missing.crt",
            "-k",
            &key,
            "secure.example.com",
        ])
        .await
        .fails_with("cannot read the TLS certificate /missing.crt");
    client
        .run(&[
            "-a",
            "web",
            "route",
            "add",
            "http",
            "-c",
            &cert,
            "-k",
            &other_key,
            "secure.example.com",
        ])
        .await
        .fails_with("the key does not match the certificate");
    client
        .run(&[
            "-a",
            "web",
            "route",
            "add",
            "http",
            "-c",
            &key,
            "-k",
            &key,
            "secure.example.com",
        ])
        .await
        .fails_with("no certificate found");
    let secure = client
        .run(&[
            "-a",
            "web",
            "route",
            "add",
            "http",
            "-c",
            &cert,
            "-k",
            &key,
            "secure.example.com",
        ])
        .await;
    assert!(secure.ok().starts_with("http-"));
    assert!(run(vec!["route"])
        .await
        .ok()
        .contains("https:secure.example.com"));
    // Both from stdin.
    let both = format!(
        "{}{}",
        std::fs::read_to_string(&cert).expect("cert"),
        std::fs::read_to_string(&key).expect("key")
    );
    let mut child = client
        .command(
            dir,
            &[
                "-a",
                "web",
                "route",
                "add",
                "http",
                "-c",
                "-",
                "-k",
                "-",
                "stdin.secure.example.com",
            ],
        )
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(both.as_bytes()).await.expect("write");
    drop(stdin);
    let output = child.wait_with_output().await.expect("wait");
    assert!(output.status.success(), "{output:?}");

    // TCP: the one port of the range, then none left.
    let tcp = run(vec![
        "route",
        "add",
        "tcp",
        "--leader",
        "--proxy-protocol",
        "v2",
    ])
    .await;
    let tcp = tcp.ok().trim().to_owned();
    assert!(tcp.starts_with("tcp-"), "{tcp}");
    assert!(
        tcp.ends_with(&format!(" listening on port {}", server.tcp_port)),
        "{tcp}"
    );
    let port = server.tcp_port.to_string();
    client
        .run(&["-a", "web", "route", "add", "tcp", "-p", &port])
        .await
        .fails_with(&format!("port {port} is already taken"));
    run(vec!["route", "add", "tcp"])
        .await
        .fails_with("no free TCP port left");
    run(vec!["route", "add", "tcp", "-p", "1"])
        .await
        .fails_with("port 1 is outside the TCP route range");
    let table = run(vec!["route"]).await;
    assert!(table.ok().contains(&format!("tcp:{port}")));
}

#[tokio::test]
async fn tcp_routes_from_the_cli_are_served() {
    let client = Client::new();
    let server = Server::embedded(&client).await;
    let backend = Backend::start("tcp-one").await;
    client.run(&["create", "db"]).await.ok();
    client
        .run(&["service", "register", "db-web", &backend.addr.to_string()])
        .await
        .ok();
    client.run(&["-a", "db", "route", "add", "tcp"]).await.ok();
    let addr = format!("127.0.0.1:{}", server.tcp_port);
    let answer = flynn_testkit::eventually(Duration::from_secs(5), "TCP route open", || {
        let addr = addr.clone();
        async move {
            let Ok(mut stream) = tokio::net::TcpStream::connect(&addr).await else {
                return false;
            };
            let request = b"GET / HTTP/1.1\r\nHost: any\r\nConnection: close\r\n\r\n";
            if stream.write_all(request).await.is_err() {
                return false;
            }
            let mut response = Vec::new();
            let _ = stream.read_to_end(&mut response).await;
            String::from_utf8_lossy(&response).contains("tcp-one")
        }
    })
    .await;
    if let Err(e) = answer {
        panic!("{e}\nserver log:\n{}", server.log());
    }
    // HTTP on the same server still works.
    wait_backend(&server, "db.localhost", "/", "tcp-one").await;
    assert_eq!(
        backend_of(&server, "nothing.example", "/").await,
        "status 404"
    );
}
