//! The git endpoint without a build: keys, unknown apps, the dumb protocol, the credential
//! helper, the refs that deploy, and one build per app at a time.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use flynn_testkit::client::{self, Conn};
use flynn_testkit::eventually;

use super::{git_ok, Push};

fn basic(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Authorization: Basic {token}\r\n")
}

/// A GET on the controller with an optional Authorization line.
async fn get(p: &Push, path: &str, auth: &str) -> client::Response {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: flynn\r\n{auth}Connection: close\r\n\r\n");
    client::send(&p.server.controller.to_string(), raw.as_bytes())
        .await
        .expect("controller answers")
}

#[tokio::test]
async fn the_endpoint_checks_the_key_the_app_and_the_protocol() {
    let p = Push::new("gate").await;
    let key = p.server.key();
    let refs = format!("/git/{}.git/info/refs?service=git-receive-pack", p.app);

    // No key, a wrong key: 401, and git is told to ask (Basic).
    for auth in [
        String::new(),
        basic("flynn", "wrong"),
        "Authorization: Bearer nope\r\n".into(),
    ] {
        let r = get(&p, &refs, &auth).await;
        assert_eq!(r.status, 401, "{auth:?}: {}", r.text());
        assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"flynn\""));
    }
    // The key as password, any user name: the smart protocol's advertisement.
    let r = get(&p, &refs, &basic("anyone", &key)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/x-git-receive-pack-advertisement")
    );
    assert!(
        r.text().contains("# service=git-receive-pack"),
        "{}",
        r.text()
    );
    let upload = format!("/git/{}.git/info/refs?service=git-upload-pack", p.app);
    assert_eq!(get(&p, &upload, &basic("x", &key)).await.status, 200);

    // An app that does not exist: 404, for the key holder only.
    let missing = "/git/no-such-app.git/info/refs?service=git-receive-pack";
    let r = get(&p, missing, &basic("flynn", &key)).await;
    assert_eq!(r.status, 404);
    assert!(
        r.text().contains("app \"no-such-app\" not found"),
        "{}",
        r.text()
    );
    assert_eq!(get(&p, missing, "").await.status, 401);

    // The dumb protocol: refused, whatever it asks for.
    for path in ["info/refs", "HEAD", "objects/info/packs", "refs/heads/main"] {
        let r = get(
            &p,
            &format!("/git/{}.git/{path}", p.app),
            &basic("flynn", &key),
        )
        .await;
        assert_eq!(r.status, 403, "{path}");
        assert!(r.text().contains("dumb HTTP git protocol"), "{}", r.text());
    }

    // Real git: a wrong password fails without a prompt, an unknown app says so.
    let wrong = format!(
        "http://flynn:wrong@{}/git/{}.git",
        p.server.controller, p.app
    );
    let out = p.git(&["ls-remote", &wrong]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Authentication failed"), "{err}");
    p.commit(&[("README", b"hello\n")], "first");
    let unknown = format!("{}/git/no-such-app.git", p.controller());
    let out = p.git(&["push", &unknown, "main"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test]
async fn flynn_create_sets_up_the_credential_helper() {
    let p = Push::new("creds").await;
    let key = p.server.key();
    let base = format!("http://{}", p.server.controller);
    let helpers = git_ok(
        &p.client,
        &p.repo,
        &["config", "--get-all", &format!("credential.{base}.helper")],
    );
    let helpers: Vec<&str> = helpers.lines().collect();
    assert_eq!(helpers.len(), 2, "{helpers:?}");
    assert_eq!(helpers[0], "", "the list is reset first");
    assert!(
        helpers[1].ends_with("-c 'default' git-credentials"),
        "{helpers:?}"
    );

    // git's own credential machinery, through the helper.
    let mut fill = p
        .git_command(&["credential", "fill"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("git credential fill");
    let host = p.server.controller.to_string();
    fill.stdin
        .take()
        .expect("stdin")
        .write_all(format!("protocol=http\nhost={host}\n\n").as_bytes())
        .expect("write");
    let out = fill.wait_with_output().expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("username=flynn\n"), "{text}");
    assert!(text.contains(&format!("password={key}\n")), "{text}");

    // Another host: the helper says nothing.
    let mut other = p.client.command(&p.repo, &["git-credentials", "get"]);
    other.stdin(Stdio::piped());
    let mut child = other.spawn().expect("flynn git-credentials");
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"protocol=http\nhost=example.com:9\n\n")
        .await
        .expect("write");
    drop(stdin);
    let out = child.wait_with_output().await.expect("output");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");

    // So git talks to the endpoint with no typing (GIT_TERMINAL_PROMPT=0).
    let out = p.git(&["ls-remote", "flynn"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn only_main_or_master_deploys_and_main_cannot_be_deleted() {
    let p = Push::new("refsy").await;
    p.commit(&[("README", b"hello\n")], "first");
    git_ok(&p.client, &p.repo, &["tag", "v1"]);

    for (refspec, refused) in [
        ("main:feature", "refusing refs/heads/feature"),
        ("v1", "refusing refs/tags/v1"),
    ] {
        let pushed = p.push(refspec);
        assert!(!pushed.ok, "{pushed:?}");
        assert!(
            pushed
                .text
                .contains("remote: flynn: only main or master deploys"),
            "{}",
            pushed.text
        );
        assert!(pushed.text.contains(refused), "{}", pushed.text);
        assert!(
            pushed.text.contains("pre-receive hook declined"),
            "{}",
            pushed.text
        );
    }
    let pushed = p.push("refs/heads/main:refs/heads/main");
    let _ = pushed; // main builds (or fails to); the other refs never landed:
    let refs = git_ok(&p.client, &p.repo, &["ls-remote", "flynn"]);
    assert!(!refs.contains("feature") && !refs.contains("v1"), "{refs}");

    // main on the server (put there behind the endpoint's back), then a push deleting it.
    let info = p.client.run_in(&p.repo, &["info", "-o", "json"], &[]).await;
    let info: serde_json::Value = serde_json::from_str(info.ok()).expect("json");
    let id = info["id"].as_str().expect("id");
    let bare = p.server.data.path().join("git").join(format!("{id}.git"));
    let bare = bare.display().to_string();
    git_ok(
        &p.client,
        &p.repo,
        &[
            "--git-dir",
            &bare,
            "fetch",
            "-q",
            &p.repo.display().to_string(),
            "main:main",
        ],
    );
    let pushed = p.push(":main");
    assert!(!pushed.ok, "{pushed:?}");
    assert!(
        pushed.text.contains("deleting main is refused"),
        "{}",
        pushed.text
    );
    let refs = git_ok(&p.client, &p.repo, &["ls-remote", "flynn"]);
    assert!(refs.contains("refs/heads/main"), "{refs}");
}

#[tokio::test]
async fn a_push_while_a_build_runs_is_refused() {
    let p = Push::new("busy").await;
    p.commit(&[("README", b"hello\n")], "first");
    let key = p.server.key();
    let builds = format!("/apps/{}/builds", p.app);
    let controller = p.server.controller.to_string();
    // A build whose source never finishes arriving holds the app's build slot. A probe (a
    // build of nothing) must then get 409; if the probe reached the controller first, it took
    // the slot for a moment and the holder got the 409 instead: open another holder (keeping
    // every one open, so a holder that did take the slot keeps it).
    let busy = || async {
        let raw = format!(
            "POST {builds} HTTP/1.1\r\nHost: flynn\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/x-tar\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        client::send(&controller, raw.as_bytes())
            .await
            .is_ok_and(|r| r.status == 409)
    };
    let mut holders = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut holder = Conn::open(&controller).await.expect("connect");
        holder
            .write(
                format!(
                    "POST {builds} HTTP/1.1\r\nHost: flynn\r\nAuthorization: Bearer {key}\r\n\
                     Content-Type: application/x-tar\r\nContent-Length: 100000\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .expect("write");
        holders.push(holder);
        let taken = eventually(Duration::from_secs(2), "the build slot taken", busy).await;
        if taken.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no holder kept the build slot"
        );
    }

    let pushed = p.push("main");
    assert!(!pushed.ok, "{pushed:?}");
    let refused = format!("a build of {} is already running", p.app);
    assert!(pushed.text.contains(&refused), "{}", pushed.text);
    assert!(
        pushed.text.contains("push again when it ends"),
        "{}",
        pushed.text
    );

    // The first build's client goes: the slot is free, the next push gets to build.
    drop(holders);
    eventually(Duration::from_secs(5), "the build slot freed", || async {
        !busy().await
    })
    .await
    .expect("freed");
    let pushed = p.push("main");
    assert!(!pushed.text.contains("already running"), "{}", pushed.text);
    assert!(
        pushed.text.contains("remote: -----> Building"),
        "{}",
        pushed.text
    );
}
