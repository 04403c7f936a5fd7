//! The binary's flags: bad ones fail fast with one clear line, and `--help` explains each.

use std::process::Command;

fn router(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flynn-router"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run flynn-router");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn help_names_every_flag_and_its_env_var() {
    let (code, text) = router(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--store",
        "--store-prefix",
        "--http-addr",
        "--admin-addr",
        "--threads",
        "FLYNN_STORE",
        "FLYNN_HTTP_ADDR",
        "FLYNN_ADMIN_ADDR",
        "FLYNN_THREADS",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
}

#[test]
fn bad_flags_fail_with_a_clear_error() {
    let (code, text) = router(&["--store", "redis://x:1"]);
    assert_eq!(code, 1);
    assert!(text.contains("etcd://host:port"), "{text}");
    assert_eq!(
        text.trim().lines().count(),
        1,
        "one line, no backtrace: {text}"
    );

    let (code, text) = router(&["--threads", "0"]);
    assert_eq!(code, 1);
    assert!(text.contains("--threads"), "{text}");

    let (code, text) = router(&["--http-addr", "not-an-address"]);
    assert_eq!(code, 2);
    assert!(text.contains("--http-addr"), "{text}");
}

#[test]
fn a_busy_port_is_an_error_not_a_hang() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let admin = format!("127.0.0.1:{}", flynn_testkit::free_port());
    let (code, text) = router(&[
        "--store",
        "etcd://127.0.0.1:1",
        "--http-addr",
        &addr,
        "--admin-addr",
        &admin,
    ]);
    assert_eq!(code, 1);
    assert!(text.contains(&format!("cannot listen on {addr}")), "{text}");
}
