//! What the tests of apps as containers share with other test binaries (`#[path]` module):
//! the Docker Engine (`docker`, [`require_engine`]), the FROM-scratch image of the static test
//! server ([`TestImage`]), a host agent's containers by label ([`Containers`]) and wrk through a
//! router ([`Wrk`]).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// `docker ARGS`; its stdout, or a panic with its stderr.
pub fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker {args:?}: {e} (the tests need Docker)"));
    assert!(
        output.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Fails the test when the Docker Engine does not answer.
pub fn require_engine() {
    let version = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output();
    match version {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the Docker Engine is required for these tests and does not answer: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("the Docker Engine is required for these tests: cannot run docker: {e}"),
    }
}

/// The test server binary, built once per run: std only, static, for a FROM-scratch image.
pub fn webapp() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/jobs/webapp.rs");
        let out = dir.join("webapp");
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
            .arg(source)
            .output()
            .expect("run rustc");
        assert!(
            built.status.success(),
            "building the test server failed: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        out
    })
}

/// An image of the test server in the engine, removed when dropped.
pub struct TestImage {
    pub tag: String,
}

impl TestImage {
    pub fn build() -> TestImage {
        TestImage::import("flynn-test-web", "")
    }

    /// The test server alone in an image tagged `name:<random>`; `changes` are more of
    /// `docker import`'s `--change` options (e.g. `--change 'ENV X=1'`).
    pub fn import(name: &str, changes: &str) -> TestImage {
        require_engine();
        let binary = webapp();
        let tag = format!("{name}:{}", uuid::Uuid::new_v4().simple());
        let dir = binary.parent().expect("dir").display().to_string();
        let imported = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C '{dir}' -c webapp | docker import --change 'ENTRYPOINT [\"/webapp\"]' \
                 {changes} - '{tag}'"
            ))
            .output()
            .expect("run docker import");
        assert!(
            imported.status.success(),
            "docker import failed: {}",
            String::from_utf8_lossy(&imported.stderr)
        );
        TestImage { tag }
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.tag])
            .output();
    }
}

/// Removes every container of a host agent when dropped (after its server is gone).
pub struct Containers {
    pub host: String,
}

impl Containers {
    pub fn new() -> Containers {
        Containers {
            host: format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        }
    }

    pub fn filter(&self) -> String {
        format!("label=flynn.host={}", self.host)
    }

    /// Ids of its running containers.
    pub fn running(&self) -> Vec<String> {
        docker(&["ps", "-q", "--no-trunc", "--filter", &self.filter()])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Ids of all its containers, running or not.
    pub fn all(&self) -> Vec<String> {
        docker(&["ps", "-aq", "--no-trunc", "--filter", &self.filter()])
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        let ids = Command::new("docker")
            .args(["ps", "-aq", "--filter", &self.filter()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.lines() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
    }
}

/// wrk against an app through a router, until [`Wrk::finish`].
pub struct Wrk {
    child: std::process::Child,
    _script: Option<tempfile::NamedTempFile>,
}

/// What wrk reported.
#[derive(Debug)]
pub struct WrkReport {
    pub requests: u64,
    pub non_2xx: u64,
    pub socket_errors: u64,
    pub text: String,
}

impl Wrk {
    /// `wrk -t1 -c8` against `http://<addr>/` with `Host: <host>`, as fast as it goes.
    pub fn start(addr: &str, host: &str) -> Wrk {
        Wrk::spawn(addr, host, 8, None)
    }

    /// With `connections` connections, each waiting `pause_ms` after every answer (a `delay`
    /// in a wrk script), so that a loaded machine still has CPU for what the test watches.
    pub fn paced(addr: &str, host: &str, connections: u32, pause_ms: u32) -> Wrk {
        Wrk::spawn(addr, host, connections, Some(pause_ms))
    }

    fn spawn(addr: &str, host: &str, connections: u32, pause_ms: Option<u32>) -> Wrk {
        let mut command = std::process::Command::new("wrk");
        command
            .args([
                "-t1",
                "-c",
                &connections.to_string(),
                "-d300s",
                "--timeout",
                "5s",
            ])
            .args(["-H", &format!("Host: {host}")]);
        let script = pause_ms.map(|ms| {
            let script = tempfile::Builder::new()
                .suffix(".lua")
                .tempfile()
                .expect("wrk script");
            std::fs::write(
                script.path(),
                format!("function delay()\n  return {ms}\nend\n"),
            )
            .expect("write wrk script");
            command.arg("-s").arg(script.path());
            script
        });
        let child = command
            .arg(format!("http://{addr}/"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run wrk (the tests need it)");
        Wrk {
            child,
            _script: script,
        }
    }

    /// Stops wrk (SIGINT: it prints its report) and reads its report.
    pub fn finish(mut self) -> WrkReport {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill -INT wrk");
        let child = std::mem::replace(
            &mut self.child,
            std::process::Command::new("true").spawn().expect("true"),
        );
        let out = child.wait_with_output().expect("wrk output");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let number_after = |label: &str| -> u64 {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(label))
                .and_then(|rest| rest.trim().split([' ', ',']).next()?.parse().ok())
                .unwrap_or(0)
        };
        let requests = text
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        // "Socket errors: connect 0, read 1, write 0, timeout 0"
        let socket_errors = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Socket errors:"))
            .map(|rest| {
                rest.split(',')
                    .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        WrkReport {
            requests,
            non_2xx: number_after("Non-2xx or 3xx responses:"),
            socket_errors,
            text,
        }
    }
}

impl Drop for Wrk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
