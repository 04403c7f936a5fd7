//! The Docker Engine through the `docker` CLI: a static binary alone in an image (nothing can
//! be pulled here, so tests and benchmarks build their images from local files), and the
//! containers a host agent labelled, removed when dropped. Panics when the engine cannot be
//! used: the tests and benchmarks that use this need it.

use std::path::Path;
use std::process::Command;

/// `docker ARGS`; its stdout, or a panic with its stderr.
pub fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run docker {args:?}: {e} (the Docker Engine is needed)")
        });
    assert!(
        output.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Compiles `source` (one Rust file, std only) into `out`, optimised and static, so that it
/// runs alone in a FROM-scratch image.
pub fn compile_static(source: &Path, out: &Path) {
    let built = Command::new("rustc")
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
        ])
        .args(["--target", "x86_64-unknown-linux-gnu", "-o"])
        .arg(out)
        .arg(source)
        .output()
        .unwrap_or_else(|e| panic!("cannot run rustc: {e}"));
    assert!(
        built.status.success(),
        "compiling {} failed: {}",
        source.display(),
        String::from_utf8_lossy(&built.stderr)
    );
}

/// An image holding one static binary as its entrypoint, removed when dropped.
pub struct StaticImage {
    pub tag: String,
}

impl StaticImage {
    /// `binary` alone in an image tagged `<name>:<unique>`, `/<file name>` its entrypoint;
    /// `changes` are more of `docker import`'s options (e.g. `--change 'ENV X=1'`).
    pub fn import(binary: &Path, name: &str, changes: &str) -> StaticImage {
        let tag = format!("{name}:{}", crate::unique());
        let dir = binary.parent().expect("the binary's directory").display();
        let file = binary
            .file_name()
            .expect("the binary's name")
            .to_string_lossy();
        let imported = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C '{dir}' -c '{file}' | docker import --change 'ENTRYPOINT [\"/{file}\"]' \
                 {changes} - '{tag}'"
            ))
            .output()
            .unwrap_or_else(|e| panic!("cannot run docker import: {e}"));
        assert!(
            imported.status.success(),
            "docker import failed: {}",
            String::from_utf8_lossy(&imported.stderr)
        );
        StaticImage { tag }
    }
}

impl Drop for StaticImage {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.tag])
            .output();
    }
}

/// The containers of one host agent (label `flynn.host=<host>`), all removed when dropped
/// (drop it after the agent is gone).
pub struct Containers {
    pub host: String,
}

impl Containers {
    /// A new host id, `<prefix>-<unique>`, for an agent to label its containers with.
    pub fn new(prefix: &str) -> Containers {
        Containers {
            host: format!("{prefix}-{}", crate::unique()),
        }
    }

    /// `label=flynn.host=<host>`, for `docker ps --filter`.
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
