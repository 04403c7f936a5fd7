//! The real things the apps benchmark runs: the release `flynn` binary as a server, as
//! controller-only nodes and as the CLI; the test server's FROM-scratch image; Docker; wrk.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use flynn_testkit::{client, free_port};

/// Labels every container the benchmark's host agent starts (`flynn.host=<this>`).
pub fn host_id() -> String {
    format!("bench-{}", unique())
}

/// 16 hex digits that differ between runs (the clock's nanoseconds and the pid).
pub fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{:016x}",
        (nanos as u64) ^ (u64::from(std::process::id()) << 40)
    )
}

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

/// `docker ARGS`: stdout, or an error with stderr.
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .context("cannot run docker (the benchmark needs the Docker Engine)")?;
    if !out.status.success() {
        bail!(
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The test server (control/tests/jobs/webapp.rs, std only) built static, alone in an image;
/// removed when dropped.
pub struct Image {
    pub tag: String,
    _dir: tempfile::TempDir,
}

impl Image {
    pub fn build() -> anyhow::Result<Image> {
        let dir = tempfile::tempdir()?;
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../control/tests/jobs/webapp.rs");
        let out = dir.path().join("webapp");
        let built = Command::new("rustc")
            .args([
                "--edition",
                "2021",
                "-O",
                "-C",
                "target-feature=+crt-static",
            ])
            .args(["--target", "x86_64-unknown-linux-gnu", "-o"])
            .arg(&out)
            .arg(&source)
            .output()
            .context("run rustc")?;
        if !built.status.success() {
            bail!(
                "building the test server failed: {}",
                String::from_utf8_lossy(&built.stderr)
            );
        }
        let tag = format!("flynn-bench-web:{}", unique());
        let imported = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C '{}' -c webapp | docker import --change 'ENTRYPOINT [\"/webapp\"]' - '{tag}'",
                dir.path().display()
            ))
            .output()
            .context("run docker import")?;
        if !imported.status.success() {
            bail!(
                "docker import failed: {}",
                String::from_utf8_lossy(&imported.stderr)
            );
        }
        Ok(Image { tag, _dir: dir })
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.tag]);
    }
}

/// Every container of a host agent, removed when dropped.
pub struct Containers {
    pub host: String,
}

impl Containers {
    pub fn all(&self) -> anyhow::Result<usize> {
        let filter = format!("label=flynn.host={}", self.host);
        Ok(docker(&["ps", "-aq", "--filter", &filter])?.lines().count())
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        let filter = format!("label=flynn.host={}", self.host);
        if let Ok(ids) = docker(&["ps", "-aq", "--filter", &filter]) {
            for id in ids.lines() {
                let _ = docker(&["rm", "-f", id]);
            }
        }
    }
}

/// A process with its log, SIGKILLed when dropped.
pub struct Proc {
    child: Child,
    pub dir: tempfile::TempDir,
}

impl Proc {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
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
    let log = std::fs::File::create(dir.path().join("log"))?;
    let child = Command::new(flynn)
        .arg("server")
        .args(["--store", store, "--controller-key", key])
        .args(["--controller-addr", &controller.to_string()])
        .args(["--log", "info", "--data"])
        .arg(dir.path())
        .args(extra)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start flynn server")?;
    let proc = Proc { child, dir };
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

/// wrk through the router until [`Wrk::finish`].
pub struct Wrk {
    child: Option<Child>,
}

/// requests, non-2xx/3xx, socket errors, and wrk's text.
pub type WrkReport = (u64, u64, u64, String);

impl Wrk {
    pub fn start(addr: SocketAddr, host: &str) -> anyhow::Result<Wrk> {
        let child = Command::new("wrk")
            .args(["-t1", "-c8", "-d600s", "--timeout", "5s"])
            .args(["-H", &format!("Host: {host}")])
            .arg(format!("http://{addr}/"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("run wrk (the benchmark needs it)")?;
        Ok(Wrk { child: Some(child) })
    }

    pub fn finish(mut self) -> anyhow::Result<WrkReport> {
        let child = self.child.take().context("wrk already finished")?;
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()?;
        let out = child.wait_with_output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let requests = text
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let non_2xx = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
            .and_then(|r| r.trim().parse().ok())
            .unwrap_or(0);
        // "Socket errors: connect 0, read 1, write 0, timeout 0"
        let socket_errors = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Socket errors:"))
            .map(|rest| {
                rest.split(',')
                    .filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        Ok((requests, non_2xx, socket_errors, text))
    }
}

impl Drop for Wrk {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
