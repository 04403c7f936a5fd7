//! `--snapshot`: the router keeps its table on disk and a restart serves it at once, then
//! watches the store from where the table was. Real etcd, the real router binary, restarts by
//! SIGTERM (the table is saved at shutdown).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Harness, Router, APPLY};
use flynn_testkit::backend::Backend;
use flynn_testkit::eventually;

/// A harness whose router keeps its table in `<dir>/router.snapshot`.
struct Snapshotted {
    h: Harness,
    dir: tempfile::TempDir,
}

impl Snapshotted {
    async fn start() -> Snapshotted {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("router.snapshot");
        let h = Harness::start(&["--snapshot", &path.to_string_lossy()]).await;
        Snapshotted { h, dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("router.snapshot")
    }

    /// SIGTERM, and wait for the router to exit: its table of `routes` routes is saved on
    /// the way out.
    async fn stop_router(&mut self, routes: usize) {
        self.h.router.signal("TERM");
        let status = self.h.router.exited_within(Duration::from_secs(30)).await;
        let log = self.h.router.log();
        assert!(
            status.is_some_and(|s| s.success()),
            "router did not exit cleanly ({status:?}):\n{log}"
        );
        let last_save = log
            .lines()
            .rfind(|l| l.contains("saved the table snapshot"))
            .unwrap_or_default();
        assert!(last_save.contains(&format!(" routes={routes} ")), "{log}");
    }

    /// A new router on the same snapshot file, not waiting for anything.
    fn spawn_router(&mut self) {
        let path = self.path();
        self.h.router = Router::spawn(&self.h.etcd.url(), &["--snapshot", &path.to_string_lossy()]);
    }

    async fn reopen_store(&mut self) {
        self.h.store = flynn_store::open(&self.h.etcd.url())
            .await
            .expect("reopen etcd");
    }
}

async fn wait_for_log(router: &Router, text: &str) {
    let found = eventually(APPLY, text, || async { router.log().contains(text) }).await;
    if let Err(e) = found {
        panic!("{e}\nrouter log:\n{}", router.log());
    }
}

fn starts_as_a_snapshot(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(b"FLYNNTBL"))
}

/// Routes added, changed and deleted while the router was down are applied after a restart
/// from the snapshot, without listing: the restarted router serves its saved table while etcd
/// is still down (nothing to list from), then takes the changes from etcd's watch history.
#[tokio::test]
async fn a_restart_serves_the_saved_table_then_the_changes_made_meanwhile() {
    let mut s = Snapshotted::start().await;
    let web = Backend::start("web").await;
    let other = Backend::start("other").await;
    s.h.instance("web", "i1", web.addr).await;
    s.h.route("http-keep", "keep.test", "/", "web").await;
    s.h.route("http-change", "change.test", "/", "web").await;
    s.h.route("http-gone", "gone.test", "/", "web").await;
    s.h.route("http-api", "keep.test", "/api", "web").await;
    for host in ["keep.test", "change.test", "gone.test"] {
        s.h.wait_status(host, "/", 200).await;
    }
    s.stop_router(4).await;
    assert!(starts_as_a_snapshot(&s.path()));

    // While the router is down: one added (to a new service), one changed, one deleted.
    s.h.instance("other", "i1", other.addr).await;
    s.h.route("http-added", "added.test", "/", "other").await;
    s.h.route("http-change", "changed.test", "/", "web").await;
    s.h.remove_route("http-gone").await;
    s.h.remove_route("http-api").await;

    // etcd down too: the restarted router serves what it saved, as it was.
    s.h.etcd.stop().await;
    s.spawn_router();
    s.h.wait_status("keep.test", "/", 200).await;
    s.h.wait_status("change.test", "/", 200).await;
    s.h.wait_status("gone.test", "/", 200).await;
    s.h.wait_status("added.test", "/", 404).await;
    assert_eq!(
        s.h.router.health().await,
        503,
        "not synced before the store answers"
    );
    wait_for_log(&s.h.router, "loaded the table snapshot").await;

    // etcd back: the changes made meanwhile come through the watch (once the router's
    // retries, backing off up to 5 s, reach it).
    s.h.etcd.restart().await;
    s.reopen_store().await;
    let http = s.h.router.http.to_string();
    let back = eventually(Duration::from_secs(20), "added.test served", || {
        let http = http.clone();
        async move {
            flynn_testkit::client::get(&http, "/", "added.test")
                .await
                .is_ok_and(|r| r.status == 200)
        }
    })
    .await;
    if let Err(e) = back {
        panic!(
            "{e}
router log:
{}",
            s.h.router.log()
        );
    }
    s.h.wait_status("changed.test", "/", 200).await;
    s.h.wait_status("change.test", "/", 404).await;
    s.h.wait_status("gone.test", "/", 404).await;
    s.h.router.wait_healthy().await;
    let api = s.h.get("/api/x", "keep.test").await;
    assert_eq!(api.status, 200);
    s.h.router
        .wait_metric("flynn_router_routes", |v| v == 3.0)
        .await;
    s.h.router
        .wait_metric("flynn_router_instances", |v| v == 2.0)
        .await;
    assert_eq!(
        s.h.router.metric("flynn_router_store_relists_total").await,
        0.0
    );
    let added = s.h.get("/", "added.test").await;
    assert_eq!(common::backend_of(&added), "other");

    // And it follows the store live, and saves again at the next stop.
    s.h.route("http-live", "live.test", "/", "web").await;
    s.h.wait_status("live.test", "/", 200).await;
    s.stop_router(4).await;
    s.spawn_router();
    s.h.router.wait_healthy().await;
    s.h.wait_status("live.test", "/", 200).await;
    s.h.wait_status("gone.test", "/", 404).await;
    assert_eq!(
        s.h.router.metric("flynn_router_store_relists_total").await,
        0.0
    );
}

/// The history after the snapshot's revision was compacted away: the router serves the saved
/// table, lists the store, and the listing replaces it.
#[tokio::test]
async fn a_store_compacted_past_the_snapshot_is_listed_again() {
    let mut s = Snapshotted::start().await;
    let web = Backend::start("web").await;
    s.h.instance("web", "i1", web.addr).await;
    s.h.route("http-1", "one.test", "/", "web").await;
    s.h.route("http-2", "two.test", "/", "web").await;
    s.h.wait_status("one.test", "/", 200).await;
    s.h.wait_status("two.test", "/", 200).await;
    s.stop_router(2).await;

    s.h.remove_route("http-1").await;
    s.h.route("http-3", "three.test", "/", "web").await;
    let now =
        s.h.store
            .put("/flynn/apps/unrelated", b"{}".to_vec(), None)
            .await
            .expect("put");
    s.h.store.compact(now).await.expect("compact");

    s.spawn_router();
    s.h.router.wait_healthy().await;
    s.h.wait_status("three.test", "/", 200).await;
    s.h.wait_status("one.test", "/", 404).await;
    s.h.wait_status("two.test", "/", 200).await;
    s.h.router
        .wait_metric("flynn_router_routes", |v| v == 2.0)
        .await;
    s.h.router
        .wait_metric("flynn_router_store_relists_total", |v| v >= 1.0)
        .await;
    wait_for_log(&s.h.router, "loaded the table snapshot").await;
}

/// An empty etcd started in place of the old one (its data wiped): the snapshot is of a store
/// that is no more, so it is not served; the new store's routes are.
#[tokio::test]
async fn a_replaced_store_makes_the_snapshot_unused() {
    let mut s = Snapshotted::start().await;
    let web = Backend::start("web").await;
    s.h.instance("web", "i1", web.addr).await;
    s.h.route("http-old", "old.test", "/", "web").await;
    // Enough writes that the old store's revision is well ahead of the new one's.
    for i in 0..10 {
        s.h.route(&format!("http-x{i}"), &format!("x{i}.test"), "/", "web")
            .await;
    }
    s.h.wait_status("old.test", "/", 200).await;
    s.h.wait_status("x9.test", "/", 200).await;
    s.stop_router(11).await;

    s.h.etcd.stop().await;
    std::fs::remove_dir_all(s.h.etcd.data_dir().join("etcd")).expect("wipe etcd's data");
    s.h.etcd.restart().await;
    s.reopen_store().await;
    let fresh = Backend::start("fresh").await;
    s.h.instance("fresh", "i1", fresh.addr).await;
    s.h.route("http-new", "new.test", "/", "fresh").await;

    s.spawn_router();
    s.h.router.wait_healthy().await;
    s.h.wait_status("new.test", "/", 200).await;
    assert_eq!(s.h.get("/", "old.test").await.status, 404);
    assert_eq!(s.h.router.metric("flynn_router_routes").await, 1.0);
    assert_eq!(s.h.router.metric("flynn_router_instances").await, 1.0);
    let log = s.h.router.log();
    assert!(log.contains("not using it, listing the store"), "{log}");
}

/// A file that is not a snapshot, or a snapshot cut short: a warning, a full listing, and a
/// good snapshot written in its place.
#[tokio::test]
async fn a_damaged_snapshot_is_ignored() {
    let mut s = Snapshotted::start().await;
    let web = Backend::start("web").await;
    s.h.instance("web", "i1", web.addr).await;
    s.h.route("http-1", "one.test", "/", "web").await;
    s.h.wait_status("one.test", "/", 200).await;
    s.stop_router(1).await;
    let good = std::fs::read(s.path()).expect("snapshot");

    for damaged in [
        b"garbage, not a table".to_vec(),
        good[..good.len() / 2].to_vec(),
    ] {
        std::fs::write(s.path(), &damaged).expect("damage the snapshot");
        s.spawn_router();
        s.h.router.wait_healthy().await;
        s.h.wait_status("one.test", "/", 200).await;
        wait_for_log(&s.h.router, "ignoring the table snapshot").await;
        assert_eq!(s.h.router.metric("flynn_router_routes").await, 1.0);
        // The listing's table is saved over the damaged file.
        let path = s.path();
        let saved = eventually(APPLY, "a good snapshot saved", || {
            let path = path.clone();
            async move {
                starts_as_a_snapshot(&path) && std::fs::read(&path).is_ok_and(|b| b.len() > 40)
            }
        })
        .await;
        if let Err(e) = saved {
            panic!("{e}\n{}", s.h.router.log());
        }
        s.stop_router(1).await;
    }
}
