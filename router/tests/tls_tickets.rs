//! TLS session resumption by tickets sealed with keys shared through the store: a session
//! started with one router resumes on another router of the same store (TLS 1.3 and 1.2), on
//! any worker thread, for one more rotation period after its key was replaced and not after
//! two; a ticket that does not open (garbage, an unknown key) costs a full handshake, nothing
//! more. Checked with real `openssl s_client` sessions (`-sess_out`, `-sess_in`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Harness, Router};
use flynn_store::{Keys, Store};
use flynn_testkit::backend::Backend;
use flynn_testkit::eventually;
use tokio::process::Command;

const VERSIONS: [&str; 2] = ["-tls1_3", "-tls1_2"];

/// What one `openssl s_client` connection showed.
#[derive(Debug)]
struct Handshake {
    /// "Reused" (resumed) rather than "New" (a full handshake).
    reused: bool,
    /// The request through it was answered 200.
    ok: bool,
    output: String,
}

/// One HTTPS request to `router` with `openssl s_client`, resuming `sess_in` if given, saving
/// the session (with its ticket) to `sess_out` if given.
async fn s_client(
    router: &Router,
    version: &str,
    sess_in: Option<&Path>,
    sess_out: Option<&Path>,
) -> Handshake {
    let mut cmd = Command::new("timeout");
    cmd.args(["10", "openssl", "s_client", "-connect"])
        .arg(router.https.to_string())
        .args(["-servername", "localhost", version, "-ign_eof"]);
    if let Some(path) = sess_in {
        cmd.arg("-sess_in").arg(path);
    }
    if let Some(path) = sess_out {
        cmd.arg("-sess_out").arg(path);
    }
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("openssl is installed");
    let request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(request).await.expect("write to openssl");
    }
    let out = child.wait_with_output().await.expect("openssl runs");
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    let reused = output.lines().any(|l| l.starts_with("Reused, "));
    let new = output.lines().any(|l| l.starts_with("New, "));
    assert!(
        reused || new,
        "openssl s_client said neither New nor Reused:\n{output}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Handshake {
        reused,
        ok: output.contains("HTTP/1.1 200"),
        output,
    }
}

/// The session file's DER bytes (the ticket is in there as it was received).
async fn session_der(pem: &Path) -> Vec<u8> {
    let der = pem.with_extension("der");
    run_openssl(&[
        "sess_id",
        "-in",
        path(pem),
        "-outform",
        "DER",
        "-out",
        path(&der),
    ])
    .await;
    std::fs::read(der).expect("read DER session")
}

/// Writes `der` as a PEM session file at `pem`.
async fn write_session(der: &[u8], pem: &Path) {
    let file = pem.with_extension("in.der");
    std::fs::write(&file, der).expect("write DER session");
    run_openssl(&[
        "sess_id",
        "-inform",
        "DER",
        "-in",
        path(&file),
        "-out",
        path(pem),
    ])
    .await;
}

async fn run_openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .await
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// The names of the stored ticket keys, newest first (the names, not the keys, are public:
/// every ticket starts with its key's name).
async fn key_names(store: &dyn Store, keys: &Keys) -> Vec<Vec<u8>> {
    let Some(kv) = store.get(&keys.tls_ticket_keys()).await.expect("store get") else {
        return Vec::new();
    };
    let json: serde_json::Value = serde_json::from_slice(&kv.value).expect("ticket keys JSON");
    json["keys"]
        .as_array()
        .expect("keys list")
        .iter()
        .map(|k| {
            let hex = k["name"].as_str().expect("name");
            (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
                .collect()
        })
        .collect()
}

/// Where `name` starts in `der`, if the session's ticket is one of that key's.
fn find(der: &[u8], name: &[u8]) -> Option<usize> {
    der.windows(name.len()).position(|w| w == name)
}

/// A fresh session from `router` (saved at `file`) whose ticket is sealed with the store's
/// current key; returns that key's name. Waits for the router to have the current keys.
async fn session_under_current_key(
    h: &Harness,
    router: &Router,
    version: &str,
    file: &Path,
) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let names = key_names(h.store.as_ref(), &h.keys).await;
        if let Some(current) = names.first() {
            let hs = s_client(router, version, None, Some(file)).await;
            assert!(!hs.reused && hs.ok, "a first connection:\n{}", hs.output);
            if find(&session_der(file).await, current).is_some() {
                return current.clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no ticket under the current key (store: {names:?})\nrouter log:\n{}",
            router.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn web(h: &Harness) -> Backend {
    let b = Backend::start("web").await;
    h.instance("web", "i1", b.addr).await;
    h.route("http-1", "localhost", "/", "web").await;
    h.wait_status("localhost", "/", 200).await;
    b
}

fn temp_file(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_from_one_router_resumes_on_another_and_on_every_thread() {
    let h = Harness::start(&[]).await;
    // A second router, on the same store, started (and so creating or finding the keys) while
    // the first one also is new.
    let b = Router::start(&h.etcd.url(), &[]).await;
    let _web = web(&h).await;
    // B applies the route on its own time: A answering says nothing about B.
    b.wait_status("localhost", "/", 200).await;
    let dir = tempfile::tempdir().expect("dir");
    let a = &h.router;

    for version in VERSIONS {
        let file = temp_file(&dir, &format!("a{version}.pem"));
        session_under_current_key(&h, a, version, &file).await;
        let hs = s_client(&b, version, Some(&file), None).await;
        assert!(
            hs.reused && hs.ok,
            "{version}: A's session on B:\n{}",
            hs.output
        );
        // Connections land on either worker thread of a router (two each here): every one
        // resumes.
        for i in 0..6 {
            let hs = s_client(a, version, Some(&file), None).await;
            assert!(
                hs.reused && hs.ok,
                "{version}: resumption {i} on A:\n{}",
                hs.output
            );
        }

        let file = temp_file(&dir, &format!("b{version}.pem"));
        session_under_current_key(&h, &b, version, &file).await;
        let hs = s_client(a, version, Some(&file), None).await;
        assert!(
            hs.reused && hs.ok,
            "{version}: B's session on A:\n{}",
            hs.output
        );
    }
    // Both routers agreed on the first key: nobody replaced it.
    assert_eq!(key_names(h.store.as_ref(), &h.keys).await.len(), 1);
    // The tickets say how long they live: the rotation period (12 h by default).
    let text = run_openssl(&[
        "sess_id",
        "-in",
        path(&temp_file(&dir, "a-tls1_3.pem")),
        "-text",
        "-noout",
    ])
    .await;
    assert!(
        text.contains("lifetime hint: 43200 (seconds)"),
        "ticket lifetime:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_resumes_for_one_rotation_more_and_not_after_two() {
    let rotate = ["--tls-ticket-rotate", "5s"];
    let h = Harness::start(&rotate).await;
    let b = Router::start(&h.etcd.url(), &rotate).await;
    let _web = web(&h).await;
    b.wait_status("localhost", "/", 200).await;
    let dir = tempfile::tempdir().expect("dir");
    let a = &h.router;

    // Sessions of both TLS versions under one key (the test starts over if a rotation comes
    // between the two).
    let (old, files) = loop {
        let files = VERSIONS.map(|v| temp_file(&dir, &format!("old{v}.pem")));
        let first = session_under_current_key(&h, a, VERSIONS[0], &files[0]).await;
        let second = session_under_current_key(&h, a, VERSIONS[1], &files[1]).await;
        if first == second {
            break (first, files);
        }
    };

    // One rotation: a new key seals, the old one still opens.
    let rotated = eventually(Duration::from_secs(15), "a rotation", || async {
        key_names(h.store.as_ref(), &h.keys).await.get(1) == Some(&old)
    })
    .await;
    rotated.unwrap_or_else(|e| panic!("{e}\nrouter log:\n{}", a.log()));
    // B has the new keys once it seals with the new current key.
    let probe = temp_file(&dir, "probe.pem");
    let current = session_under_current_key(&h, &b, VERSIONS[0], &probe).await;
    assert_ne!(current, old);
    for (version, file) in VERSIONS.iter().zip(&files) {
        for router in [&b, a] {
            let hs = s_client(router, version, Some(file), None).await;
            assert!(
                hs.reused && hs.ok,
                "{version}: a ticket of the previous key:\n{}",
                hs.output
            );
        }
    }

    // Two rotations: the old key is gone, its tickets get a full handshake (and a working
    // connection).
    let gone = eventually(Duration::from_secs(15), "a second rotation", || async {
        let names = key_names(h.store.as_ref(), &h.keys).await;
        names.len() == 2 && !names.contains(&old)
    })
    .await;
    gone.unwrap_or_else(|e| panic!("{e}\nrouter log:\n{}", a.log()));
    for router in [&b, a] {
        session_under_current_key(&h, router, VERSIONS[0], &probe).await;
        for (version, file) in VERSIONS.iter().zip(&files) {
            let hs = s_client(router, version, Some(file), None).await;
            assert!(
                !hs.reused && hs.ok,
                "{version}: a ticket two rotations old:\n{}",
                hs.output
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_that_does_not_open_gets_a_full_handshake() {
    let h = Harness::start(&[]).await;
    let _web = web(&h).await;
    let dir = tempfile::tempdir().expect("dir");
    let a = &h.router;

    for version in VERSIONS {
        let file = temp_file(&dir, &format!("s{version}.pem"));
        let name = session_under_current_key(&h, a, version, &file).await;
        let der = session_der(&file).await;
        let at = find(&der, &name).expect("the ticket in the session");
        // The sealed state changed, then the key name (a key this router does not have).
        for (what, offset) in [("sealed state", name.len() + 12 + 5), ("key name", 3)] {
            let mut bad = der.clone();
            bad[at + offset] ^= 0x55;
            let bad_file = temp_file(&dir, &format!("bad{version}.pem"));
            write_session(&bad, &bad_file).await;
            let hs = s_client(a, version, Some(&bad_file), None).await;
            assert!(
                !hs.reused && hs.ok,
                "{version}: a ticket with a bad {what}:\n{}",
                hs.output
            );
        }
        // The untouched session still resumes.
        let hs = s_client(a, version, Some(&file), None).await;
        assert!(hs.reused && hs.ok, "{version}:\n{}", hs.output);
    }
    assert!(!a.log().contains("panicked"), "{}", a.log());
}
