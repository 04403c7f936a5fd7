//! Whole pushes on the real Docker Engine: a Dockerfile app (the static test server of
//! control/tests/jobs, FROM scratch) is pushed, built, released, scaled and served through the
//! router; a second push under wrk replaces it with no failed request; a build that fails
//! rejects the push and leaves the old release serving; Ctrl-C on a push cancels its build.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flynn_testkit::eventually;

use super::engine::Wrk;
use super::{wait_with_timeout, Push, PUSH_TIMEOUT};

const DOCKERFILE: &[u8] = b"FROM scratch\nCOPY webapp /webapp\nENTRYPOINT [\"/webapp\"]\n";

/// The test server binary (control/tests/jobs/webapp.rs), built static once per run.
fn webapp() -> Vec<u8> {
    std::fs::read(super::engine::webapp()).expect("read webapp")
}

/// A commit of the Dockerfile app; `version` makes each commit's tree differ.
fn commit_app(p: &Push, dockerfile: &[u8], version: &str) {
    p.commit(
        &[
            ("Dockerfile", dockerfile),
            ("webapp", &webapp()),
            ("VERSION", version.as_bytes()),
        ],
        version,
    );
    // The binary must stay executable in the tree.
    let mode = super::git_ok(&p.client, &p.repo, &["ls-files", "-s", "webapp"]);
    if !mode.starts_with("100755") {
        super::git_ok(
            &p.client,
            &p.repo,
            &["update-index", "--chmod=+x", "webapp"],
        );
        super::git_ok(
            &p.client,
            &p.repo,
            &["commit", "-q", "--amend", "--no-edit"],
        );
    }
}

/// The release the app's answer through the router names (`{"release": ...}`).
async fn served_release(p: &Push) -> String {
    let answer = p
        .answer()
        .await
        .expect("the app answers through the router");
    answer["release"].as_str().expect("release").to_owned()
}

#[tokio::test]
async fn push_deploys_a_second_push_under_load_fails_nothing_and_a_failed_build_keeps_the_old() {
    let p = Push::new("pushy").await;
    commit_app(&p, DOCKERFILE, "1");

    // First push: built, released, web=1, routed.
    let started = Instant::now();
    let pushed = p.push("main");
    p.assert_pushed(
        &pushed,
        &[
            "remote: -----> Receiving main",
            "remote: -----> Building",
            "remote: -----> Releasing",
            "remote: -----> Deploying (all-at-once)",
            "first push: scaling web to 1",
        ],
    );
    let url = format!(
        "deployed to http://{}.localhost:{}",
        p.app,
        p.server.http.port()
    );
    assert!(
        pushed.text.contains(&url),
        "{url:?} missing:\n{}",
        pushed.text
    );
    eventually(Duration::from_secs(10), "the app served", || async {
        p.answer().await.is_some()
    })
    .await
    .expect("served");
    let first_routed = started.elapsed();
    let first = served_release(&p).await;

    // What was pushed can be cloned back (git-upload-pack), with the key as password.
    let clone = p.client.cwd.path().join("clone");
    let url = format!(
        "http://anyone:{}@{}/git/{}.git",
        p.server.key(),
        p.server.controller,
        p.app
    );
    super::git_ok(
        &p.client,
        p.client.cwd.path(),
        &["clone", "-q", &url, &clone.display().to_string()],
    );
    assert_eq!(
        std::fs::read(clone.join("Dockerfile")).expect("cloned Dockerfile"),
        DOCKERFILE
    );
    eprintln!(
        "first push: git push took {:?}, push to routed {first_routed:?}",
        pushed.took
    );

    // Second push under load: not one failed request, the new release serves at the end.
    commit_app(&p, DOCKERFILE, "2");
    let wrk = Wrk::start(&p.server.http.to_string(), &format!("{}.localhost", p.app));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let pushed = p.push("main");
    let second_took = started.elapsed();
    let second = served_release(&p).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = wrk.finish();
    p.assert_pushed(&pushed, &[]);
    assert_ne!(second, first, "the new release serves once the push ends");
    assert!(report.requests > 100, "{report:?}");
    assert_eq!(report.non_2xx, 0, "{report:?}");
    assert_eq!(report.socket_errors, 0, "{report:?}");
    eprintln!(
        "second push under wrk: {second_took:?}, {} requests, 0 failed",
        report.requests
    );

    // A build that fails: the push is rejected with the reason, the old release serves.
    let missing = format!(
        "flynn-test-missing-{}:none",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let broken = format!("FROM {missing}\nCOPY webapp /webapp\n");
    commit_app(&p, broken.as_bytes(), "3");
    let pushed = p.push("main");
    assert!(!pushed.ok, "{}", pushed.text);
    assert!(
        pushed.text.contains("remote: flynn: push rejected after"),
        "{}",
        pushed.text
    );
    assert!(pushed.text.contains("build failed: "), "{}", pushed.text);
    assert!(pushed.text.contains(&missing), "{}", pushed.text);
    assert!(
        pushed.text.contains("pre-receive hook declined"),
        "{}",
        pushed.text
    );
    assert_eq!(served_release(&p).await, second);
}

#[tokio::test]
async fn ctrl_c_on_a_push_cancels_its_build() {
    let p = Push::new("quitter").await;
    // RUN the test server: a build step that never ends on its own.
    commit_app(
        &p,
        b"FROM scratch\nCOPY webapp /webapp\nRUN [\"/webapp\"]\n",
        "forever",
    );
    let mut command = p.git_command(&["push", "flynn", "main"]);
    {
        use std::os::unix::process::CommandExt;
        // Its own process group, as a terminal's foreground job: Ctrl-C signals all of it.
        command.process_group(0);
    }
    let push = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("git push");
    let pgid = push.id();
    eventually(Duration::from_secs(60), "the build running", || async {
        p.server.log().contains("build started")
    })
    .await
    .expect("build started");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let interrupted = Instant::now();
    // `--`: procps's kill reads `-<pgid>` after a signal option as options (`-1`: all!).
    Command::new("kill")
        .args(["-s", "INT", "--", &format!("-{pgid}")])
        .status()
        .expect("kill -INT");
    let pushed = wait_with_timeout(push, PUSH_TIMEOUT);
    assert!(!pushed.ok, "{pushed:?}");

    // The controller notices, the build stops, the app's build slot is free again.
    eventually(Duration::from_secs(45), "the build cancelled", || async {
        p.server.log().contains("build client went away") && p.server.log().contains("build failed")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", p.server.log()));
    eprintln!("Ctrl-C to build cancelled: {:?}", interrupted.elapsed());
    let out = p
        .client
        .run_in(&p.repo, &["release", "-o", "json"], &[])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "[]", "nothing was released: {out:?}");
}
