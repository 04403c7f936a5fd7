//! A static app (a `public/` directory of files, no Procfile) pushed: the static buildpack
//! serves the directory with the stack's server, and its files answer through the router.

use std::time::Duration;

use flynn_testkit::eventually;

use super::Push;

#[tokio::test]
async fn a_static_app_is_served_after_its_push() {
    let p = Push::new("statik").await;
    let page = b"<!doctype html><title>static</title><p>served from public/</p>\n";
    p.commit(
        &[
            ("public/index.html", page),
            ("public/css/site.css", b"p { color: teal }\n"),
            ("README.md", b"not served: only public/ is\n"),
        ],
        "static",
    );
    let pushed = p.push("main");
    p.assert_pushed(
        &pushed,
        &[
            "remote: -----> Static app detected",
            "Static files: serving /app/public (2 files)",
            "first push: scaling web to 1",
            "deployed to http://",
        ],
    );
    let host = format!("{}.localhost", p.app);
    eventually(Duration::from_secs(15), "the static app served", || async {
        p.server
            .get(&host, "/")
            .await
            .is_ok_and(|r| r.status == 200 && r.body == page)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", p.server.log()));
    let css = p.server.get(&host, "/css/site.css").await.expect("css");
    assert_eq!(css.status, 200);
    assert_eq!(css.body, b"p { color: teal }\n");
    let readme = p.server.get(&host, "/README.md").await.expect("readme");
    assert_eq!(readme.status, 404, "only public/ is served");
}
