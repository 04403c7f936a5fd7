//! HTTPS: certificates by SNI from the store, rotation, bad certificates, the default keypair,
//! TLS versions, HTTP/2 by ALPN and h2c — checked with real curl and openssl clients (many
//! concurrent HTTP/2 streams, with h2load: tests/h2.rs, on both engines).
//! (They run as blocking subprocesses, so the backends need a second runtime thread.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Harness, APPLY};
use flynn_testkit::backend::Backend;
use flynn_testkit::eventually;

/// A self-signed certificate for `names`, written to a file for clients to trust.
struct TestCert {
    cert: String,
    key: String,
    file: PathBuf,
}

fn test_cert(dir: &Path, file: &str, names: &[&str]) -> TestCert {
    let (cert, key) = flynn_testkit::tls::self_signed(names);
    let file = dir.join(file);
    std::fs::write(&file, &cert).expect("write certificate");
    TestCert { cert, key, file }
}

/// Runs curl; returns its exit code and stdout. `host` resolves to the router's HTTPS port.
fn curl(h: &Harness, host: &str, path: &str, extra: &[&str]) -> (i32, String) {
    let port = h.router.https.port();
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .args(extra)
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("curl is installed");
    if !out.status.success() {
        eprintln!(
            "curl {host}{path} {extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Whether a client trusting only `cert` completes a request to `host` (so `cert` was served).
fn served_with(h: &Harness, host: &str, cert: &TestCert) -> bool {
    let (code, out) = curl(
        h,
        host,
        "/",
        &["--cacert", cert.file.to_str().unwrap_or("")],
    );
    code == 0 && out.starts_with("200")
}

async fn wait_served_with(h: &Harness, host: &str, cert: &TestCert) {
    let waited = eventually(
        APPLY,
        &format!("{host} served with its certificate"),
        || async { served_with(h, host, cert) },
    )
    .await;
    if let Err(e) = waited {
        panic!("{e}\nrouter log:\n{}", h.router.log());
    }
}

async fn web(h: &Harness) -> Backend {
    let b = Backend::start("web").await;
    h.instance("web", "i1", b.addr).await;
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_chosen_by_sni_exact_then_wildcard_then_default() {
    let h = Harness::start(&[]).await;
    let _b = web(&h).await;
    let dir = tempfile::tempdir().expect("dir");
    let exact = test_cert(dir.path(), "exact.pem", &["shop.test"]);
    let wild = test_cert(dir.path(), "wild.pem", &["*.shop.test", "*.eu.shop.test"]);
    let deeper = test_cert(dir.path(), "deeper.pem", &["*.eu.shop.test"]);
    h.cert("c-exact", &exact.cert, &exact.key).await;
    h.cert("c-wild", &wild.cert, &wild.key).await;
    h.cert("c-deeper", &deeper.cert, &deeper.key).await;
    let with_cert = |c: &str| serde_json::json!({ "certificate_id": c });
    h.route_with("http-1", "shop.test", "/", "web", with_cert("c-exact"))
        .await;
    h.route_with("http-2", "*.shop.test", "/", "web", with_cert("c-wild"))
        .await;
    h.route_with(
        "http-3",
        "*.eu.shop.test",
        "/",
        "web",
        with_cert("c-deeper"),
    )
    .await;
    h.route("http-4", "plain.test", "/", "web").await;

    wait_served_with(&h, "shop.test", &exact).await;
    wait_served_with(&h, "www.shop.test", &wild).await;
    wait_served_with(&h, "paris.eu.shop.test", &deeper).await;
    assert!(!served_with(&h, "shop.test", &wild), "exact beats wildcard");
    assert!(
        !served_with(&h, "paris.eu.shop.test", &wild),
        "most specific wildcard wins"
    );

    // No route certificate: the generated default (self-signed for localhost) is served.
    let (code, out) = curl(&h, "plain.test", "/", &["-k"]);
    assert_eq!((code, out.as_str()), (0, "200 2"));
    let subject = server_cert_subject(&h, "plain.test");
    assert!(
        subject.contains("localhost") || subject.contains("rcgen"),
        "{subject}"
    );
    assert!(
        h.router.log().contains("self-signed"),
        "the default cert is announced in the log"
    );
    assert_eq!(h.router.metric("flynn_router_certificates").await, 3.0);
}

/// The subject line of the certificate the router presents for `server_name`.
fn server_cert_subject(h: &Harness, server_name: &str) -> String {
    let script = format!(
        "openssl s_client -connect {} -servername {server_name} </dev/null 2>/dev/null \
         | openssl x509 -noout -subject -ext subjectAltName",
        h.router.https
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_live_and_bad_ones_are_refused() {
    let h = Harness::start(&[]).await;
    let _b = web(&h).await;
    let dir = tempfile::tempdir().expect("dir");
    let first = test_cert(dir.path(), "first.pem", &["rotate.test"]);
    let second = test_cert(dir.path(), "second.pem", &["rotate.test"]);
    h.cert("c1", &first.cert, &first.key).await;
    h.route_with(
        "http-1",
        "rotate.test",
        "/",
        "web",
        serde_json::json!({"certificate_id": "c1"}),
    )
    .await;
    wait_served_with(&h, "rotate.test", &first).await;

    // Rotation: the next handshake gets the new certificate, no restart.
    h.cert("c1", &second.cert, &second.key).await;
    wait_served_with(&h, "rotate.test", &second).await;

    // A key that does not match, and a PEM that does not parse: refused, counted, and the
    // last good certificate keeps serving.
    let invalid_before = h
        .router
        .metric("flynn_router_store_invalid_entries_total")
        .await;
    h.cert("c1", &first.cert, &second.key).await;
    h.cert(
        "c1",
        "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
        &first.key,
    )
    .await;
    h.put_raw(&h.keys.cert("c1"), "not json").await;
    let waited = eventually(APPLY, "three refused certificates", || async {
        h.router
            .metric("flynn_router_store_invalid_entries_total")
            .await
            >= invalid_before + 3.0
    })
    .await;
    waited.expect("bad certificates counted");
    assert!(
        served_with(&h, "rotate.test", &second),
        "the last good certificate serves"
    );
    assert!(
        h.router.log().contains("does not match"),
        "the reason is logged"
    );

    // Removed: back to the default certificate.
    h.store.delete(&h.keys.cert("c1")).await.expect("delete");
    let waited = eventually(APPLY, "default certificate after removal", || async {
        !served_with(&h, "rotate.test", &second) && curl(&h, "rotate.test", "/", &["-k"]).0 == 0
    })
    .await;
    waited.expect("removal applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_default_an_unknown_name_fails_the_handshake() {
    let h = Harness::start(&["--no-default-cert"]).await;
    let _b = web(&h).await;
    let dir = tempfile::tempdir().expect("dir");
    let known = test_cert(dir.path(), "known.pem", &["known.test"]);
    h.cert("c1", &known.cert, &known.key).await;
    h.route_with(
        "http-1",
        "known.test",
        "/",
        "web",
        serde_json::json!({"certificate_id": "c1"}),
    )
    .await;
    wait_served_with(&h, "known.test", &known).await;
    h.route("http-2", "nocert.test", "/", "web").await;
    // curl's exit code 35: the TLS handshake failed.
    assert_eq!(curl(&h, "nocert.test", "/", &["-k"]).0, 35);
    assert_eq!(curl(&h, "unknown.test", "/", &["-k"]).0, 35);
    assert!(
        h.router
            .metric("flynn_router_tls_no_certificate_total")
            .await
            >= 2.0
    );
    // The listener is fine for everyone else.
    assert!(served_with(&h, "known.test", &known));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_is_the_minimum_and_alpn_offers_h2_and_http_1_1() {
    let h = Harness::start(&[]).await;
    let _b = web(&h).await;
    h.route("http-1", "alpn.test", "/", "web").await;
    h.wait_status("alpn.test", "/", 200).await;

    assert_eq!(curl(&h, "alpn.test", "/", &["-k", "--http2"]).1, "200 2");
    assert_eq!(
        curl(&h, "alpn.test", "/", &["-k", "--http1.1"]).1,
        "200 1.1"
    );
    assert_eq!(curl(&h, "alpn.test", "/", &["-k", "--tlsv1.3"]).1, "200 2");
    assert_eq!(
        curl(
            &h,
            "alpn.test",
            "/",
            &["-k", "--tlsv1.2", "--tls-max", "1.2"]
        )
        .1,
        "200 2"
    );
    let (code, _) = curl(&h, "alpn.test", "/", &["-k", "--tlsv1", "--tls-max", "1.1"]);
    assert_ne!(code, 0, "TLS 1.1 must be refused");

    // Over HTTP/2 the backend still gets HTTP/1.1, and learns the client used https.
    let port = h.router.https.port();
    let out = Command::new("curl")
        .args(["-sk", "--http2", "--resolve"])
        .arg(format!("alpn.test:{port}:127.0.0.1"))
        .arg(format!("https://alpn.test:{port}/h2?x=1"))
        .output()
        .expect("curl");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("echo JSON");
    assert_eq!(json["uri"], "/h2?x=1");
    let proto = flynn_testkit::backend::echoed_header(&json, "x-forwarded-proto");
    assert_eq!(proto, vec!["https".to_owned()]);
    let host = flynn_testkit::backend::echoed_header(&json, "host");
    assert_eq!(host, vec![format!("alpn.test:{port}")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge_behind_a_flag() {
    let h = Harness::start(&["--h2c"]).await;
    let _b = web(&h).await;
    h.route("http-1", "h2c.test", "/", "web").await;
    h.wait_status("h2c.test", "/", 200).await;
    let out = Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .args(["-H", "Host: h2c.test"])
        .arg(format!("http://{}/", h.router.http))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 2");
    // HTTP/1.1 still works on the same listener, on the HTTP/1.1 fast path: a connection that
    // starts with the HTTP/2 preface goes to pingora from the start, not by a hand-over.
    assert_eq!(h.get("/", "h2c.test").await.status, 200);
    assert_eq!(
        h.router.metric("flynn_router_h1_handed_over_total").await,
        0.0
    );
}
