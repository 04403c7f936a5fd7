//! The same, with the controller and router on a real etcd.

use flynn_testkit::Etcd;

use crate::harness::{Client, Server};
use crate::tour;

#[tokio::test]
async fn the_tour_on_etcd() {
    let etcd = Etcd::start().await;
    let client = Client::new();
    let server = Server::etcd(&client, &etcd.url()).await;
    tour(&client, &server).await;
    // What the CLI wrote is in etcd, where any router finds it.
    let store = flynn_store::open(&etcd.url()).await.expect("open etcd");
    let routes = store.range("/flynn/routes/").await.expect("range");
    assert_eq!(routes.kvs.len(), 1, "the default route of shop is left");
    let services = store.range("/flynn/services/").await.expect("range");
    assert_eq!(services.kvs.len(), 2);
}

/// Two controllers on one etcd: claims hold across them.
#[tokio::test]
async fn uniqueness_holds_across_controllers_on_one_etcd() {
    let etcd = Etcd::start().await;
    let (a, b) = (Client::new(), Client::new());
    let _server_a = Server::etcd(&a, &etcd.url()).await;
    let _server_b = Server::etcd(&b, &etcd.url()).await;
    a.run(&["create", "first"]).await.ok();
    b.run(&["create", "first"])
        .await
        .fails_with("app \"first\" already exists");
    b.run(&["create", "second"]).await.ok();
    a.run(&["-a", "first", "route", "add", "http", "shared.example.com"])
        .await
        .ok();
    b.run(&["-a", "second", "route", "add", "http", "shared.example.com"])
        .await
        .fails_with("shared.example.com/ is already taken");
    // Both see both apps.
    let apps = b.run(&["apps"]).await;
    assert!(apps.ok().contains("first") && apps.ok().contains("second"));
}
