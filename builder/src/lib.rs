//! The builder: turns a pushed source tree into an image in the local Docker Engine.
//!
//! [`build`] is the one entry point: it picks how to build ([`Build::source`] holds a
//! `Dockerfile` → a Dockerfile build through the engine; otherwise a buildpack, chosen by
//! detection or `BUILDPACK_URL`, run in a container of the stack image), streams its progress
//! line by line to [`Output`], and returns the image with the process types it declares.
//! The git endpoint that receives pushes and the controller endpoint that runs a build and
//! deploys its release live beside it.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where a build's progress goes, one line per message (no trailing newline). A closed
/// receiver means the pusher went away: the build stops and cleans up.
pub type Output = tokio::sync::mpsc::Sender<String>;

/// One build of one app.
#[derive(Clone, Debug)]
pub struct Build {
    pub app_id: String,
    pub app_name: String,
    /// Unique per build; part of the image tag.
    pub build_id: String,
    /// A directory holding the pushed tree (no `.git`).
    pub source: PathBuf,
    /// The app's current release env (what buildpacks get in their ENV dir).
    pub env: BTreeMap<String, String>,
    /// Kept per app between builds (buildpack cache).
    pub cache_dir: PathBuf,
    /// The Docker Engine's socket (`unix:///var/run/docker.sock` when None).
    pub docker: Option<String>,
}

/// What a build made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Built {
    /// The image's tag in the engine, e.g. `flynn/app-<name>:<build id>`.
    pub image: String,
    /// The engine's id of that image (`sha256:…`).
    pub image_id: String,
    /// Process type → its command (argv), from the Procfile or the buildpack's defaults; a
    /// Dockerfile build gives `web` with an empty argv (the image's own CMD).
    pub processes: BTreeMap<String, Vec<String>>,
    /// How it was built, for humans: `buildpack python`, `Dockerfile`, …
    pub kind: String,
}

/// Why a build failed; the message is shown to the pusher as is.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the builder is not implemented yet")]
    NotImplemented,
}

/// Builds `build`, streaming progress to `out`.
pub async fn build(build: &Build, out: &Output) -> Result<Built, BuildError> {
    let _ = (build, out);
    Err(BuildError::NotImplemented)
}
