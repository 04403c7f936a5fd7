//! The real things the apps benchmark runs: the release `flynn` binary as a server, as
//! controller-only nodes and as the CLI; the test server's FROM-scratch image. (Processes,
//! Docker and wrk come from flynn-testkit.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use flynn_testkit::docker::{compile_static, StaticImage};
use flynn_testkit::process::Proc;
use flynn_testkit::{client, free_port};

/// The release `flynn` binary: `$FLYNN_BIN`, else `<workspace>/target/release/flynn`.
pub fn flynn_bin() -> anyhow::Result<PathBuf> {
    let bin = match std::env::var_os("FLYNN_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/flynn"),
    };
    if !bin.is_file() {
        bail!(
            "no flynn binary at {} (run `cargo build --release -p flynn-control --bin flynn`, \
             or set FLYNN_BIN)",
            bin.display()
        );
    }
    Ok(bin)
}

/// The test server (control/tests/jobs/webapp.rs, std only) built static, alone in an image;
/// removed when dropped.
pub fn image() -> anyhow::Result<StaticImage> {
    let dir = tempfile::tempdir()?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../control/tests/jobs/webapp.rs");
    let binary = dir.path().join("webapp");
    compile_static(&source, &binary);
    Ok(StaticImage::import(&binary, "flynn-bench-web", ""))
}

/// Runs `flynn server` (with `extra` flags) on `store`, its HOME `home`, its data in its own
/// dir; returns once its controller answers.
pub async fn server(
    flynn: &Path,
    store: &str,
    key: &str,
    home: &Path,
    extra: &[&str],
) -> anyhow::Result<(Proc, SocketAddr)> {
    let dir = tempfile::tempdir()?;
    let controller = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut command = Command::new(flynn);
    command
        .arg("server")
        .args(["--store", store, "--controller-key", key])
        .args(["--controller-addr", &controller.to_string()])
        .args(["--log", "info", "--data"])
        .arg(dir.path())
        .args(extra)
        .current_dir(dir.path())
        .env_clear()
        .env("HOME", home);
    let proc = Proc::spawn(command, dir);
    let target = controller.to_string();
    for _ in 0..600 {
        if client::get(&target, "/ping", "controller")
            .await
            .is_ok_and(|r| r.status == 200)
        {
            return Ok((proc, controller));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("flynn server did not answer within 30 s:\n{}", proc.log())
}

/// `flynn ARGS` with HOME `home`: its stdout, or an error with its stderr.
pub async fn flynn(bin: &Path, home: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(bin)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .current_dir(home)
        .stdin(Stdio::null())
        .output()
        .await
        .context("run flynn")?;
    if !out.status.success() {
        bail!(
            "flynn {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
