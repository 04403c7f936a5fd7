//! What the tests of apps as containers share with other test binaries (`#[path]` module):
//! the Docker Engine ([`require_engine`]), the FROM-scratch image of the static test server
//! ([`TestImage`], on testkit's `StaticImage`) and wrk through a router ([`Wrk`], testkit's).
//! The rest (`docker`, a host agent's `Containers`) is in `flynn_testkit::docker`, which the
//! benchmarks use too.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

pub use flynn_testkit::wrk::Wrk;

use flynn_testkit::docker::{compile_static, StaticImage};

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
        compile_static(source.as_ref(), &out);
        out
    })
}

/// An image of the test server in the engine (its `tag`), removed when dropped.
pub struct TestImage(StaticImage);

impl TestImage {
    pub fn build() -> TestImage {
        TestImage::import("flynn-test-web", "")
    }

    /// The test server alone in an image tagged `name:<unique>`; `changes` are more of
    /// `docker import`'s `--change` options (e.g. `--change 'ENV X=1'`).
    pub fn import(name: &str, changes: &str) -> TestImage {
        require_engine();
        TestImage(StaticImage::import(webapp(), name, changes))
    }
}

impl std::ops::Deref for TestImage {
    type Target = StaticImage;

    fn deref(&self) -> &StaticImage {
        &self.0
    }
}
