//! The builder: turns a pushed source tree into an image in the local Docker Engine.
//!
//! [`build`] is the one entry point: it picks how to build ([`Build::source`] holds a
//! `Dockerfile` → a Dockerfile build through the engine; otherwise a buildpack, chosen by
//! detection or `BUILDPACK_URL`, run in a container of the stack image), streams its progress
//! line by line to [`Output`], and returns the image with the process types it declares.
//! The git endpoint that receives pushes and the controller endpoint that runs a build and
//! deploys its release live beside it.
//!
//! The parts: [`stack`] (the `flynn/stack:<version>` image built from Debian packages),
//! [`buildpack`] (Heroku's classic buildpack API run in a container of the stack),
//! [`slug`] (a compiled slug tarball + the stack → an app image; what a host agent whose
//! engine lacks an app's image runs to rebuild it from the slug the controller keeps), [`dockerfile`] (builds through the
//! engine's build API, its context filtered by [`dockerignore`]), [`procfile`] (the Procfile parser). `builder/README.md` has the
//! detection order, the slug format and how to use your own stack image.

pub mod buildpack;
mod context;
pub mod dockerfile;
pub mod dockerignore;
mod engine;
pub mod git;
pub mod procfile;
pub mod slug;
pub mod stack;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use self::engine::connect;

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
    /// The port `web` listens on when the image says so: a Dockerfile image's first
    /// `EXPOSE`d TCP port (the release should declare it, so that `PORT` is set to it). None:
    /// the platform's default; buildpack apps listen on `$PORT`.
    pub port: Option<u16>,
    /// The slug tarball (buildpack builds, when [`Options::slug_dir`] is set): from it and the
    /// stack image, [`slug::image_from_slug`] rebuilds the same image on another machine.
    pub slug: Option<PathBuf>,
    /// The stack image a buildpack build's image is layered on (and a slug must be rebuilt
    /// on); None for a Dockerfile build.
    pub stack: Option<String>,
}

/// How the builder is set up on this machine (the defaults suit `flynn server`).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The stack image buildpack apps are built and run on; None: `$FLYNN_STACK_IMAGE`, else
    /// [`stack::default_image`], built locally the first time it is needed.
    pub stack_image: Option<String>,
    /// Where to keep each buildpack build's slug tarball (`<dir>/<build id>.tgz`); None: the
    /// slug is only used to assemble the image.
    pub slug_dir: Option<PathBuf>,
}

impl Options {
    /// The stack image to use and whether it is the builder's own (built when missing).
    pub fn stack(&self) -> (String, bool) {
        let custom = self
            .stack_image
            .clone()
            .or_else(|| std::env::var("FLYNN_STACK_IMAGE").ok())
            .filter(|s| !s.trim().is_empty());
        match custom {
            Some(image) => {
                let own = image == stack::default_image();
                (image, own)
            }
            None => (stack::default_image(), true),
        }
    }
}

/// Why a build failed; the message is shown to the pusher as is.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the Docker Engine: {0}")]
    Docker(String),
    #[error("the stack image: {0}")]
    Stack(String),
    #[error(
        "no buildpack can build this app: add a Procfile, a requirements.txt (Python), an \
         index.html, public/ or static.json (static files) or a Dockerfile, or set BUILDPACK_URL"
    )]
    NoBuildpack,
    #[error("BUILDPACK_URL {url:?}: {reason}")]
    BuildpackUrl { url: String, reason: String },
    #[error("buildpack {buildpack}: {stage} failed: {reason}{}", tail_text(.tail))]
    Buildpack {
        buildpack: String,
        stage: &'static str,
        reason: String,
        tail: Vec<String>,
    },
    #[error("{0}")]
    Procfile(#[from] procfile::ProcfileError),
    #[error("the Dockerfile build failed: {reason}{}", tail_text(.tail))]
    Dockerfile { reason: String, tail: Vec<String> },
    #[error(
        "the Dockerfile needs the image {0:?}, which is not in the Docker Engine (there is no \
         registry here: build or load it first)"
    )]
    MissingBaseImage(String),
    #[error("the source tree: {0}")]
    Source(String),
    /// A `.dockerignore` line Docker would refuse (the push fails, as `docker build` does).
    #[error(transparent)]
    Dockerignore(#[from] dockerignore::DockerignoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("the build was cancelled")]
    Cancelled,
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        return String::new();
    }
    let mut s = String::from("; the last lines of its output:");
    for line in tail {
        s.push_str("\n  ");
        s.push_str(line);
    }
    s
}

/// Builds `build` with `options`, streaming progress to `out`. A `Dockerfile` at the root of
/// the tree (and no `BUILDPACK_URL` in the env) → a Dockerfile build; otherwise buildpacks. If
/// `out`'s receiver goes away the build stops: its containers are removed and no image is
/// left tagged.
pub async fn build(build: &Build, options: &Options, out: &Output) -> Result<Built, BuildError> {
    let tag = image_tag(&build.app_name, &build.build_id)?;
    let docker = engine::connect(build.docker.as_deref())?;
    let work = async {
        let has_url = build
            .env
            .get("BUILDPACK_URL")
            .is_some_and(|u| !u.trim().is_empty());
        if !has_url && build.source.join("Dockerfile").is_file() {
            dockerfile::build(&docker, build, &tag, out).await
        } else {
            buildpack::build(&docker, build, options, &tag, out).await
        }
    };
    tokio::select! {
        result = work => result,
        () = out.closed() => Err(BuildError::Cancelled),
    }
}

/// `flynn/app-<app name>:<build id>`, checked against the engine's naming rules.
pub fn image_tag(app_name: &str, build_id: &str) -> Result<String, BuildError> {
    let name_ok = !app_name.is_empty()
        && app_name.len() <= 100
        && app_name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && app_name.as_bytes()[0].is_ascii_alphanumeric();
    if !name_ok {
        return Err(BuildError::Invalid(format!(
            "app name {app_name:?} cannot name an image (lowercase letters, digits, - and _)"
        )));
    }
    let id_ok = !build_id.is_empty()
        && build_id.len() <= 128
        && build_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && build_id.as_bytes()[0] != b'.'
        && build_id.as_bytes()[0] != b'-';
    if !id_ok {
        return Err(BuildError::Invalid(format!(
            "build id {build_id:?} cannot tag an image (letters, digits, -, _ and .)"
        )));
    }
    Ok(format!("flynn/app-{app_name}:{build_id}"))
}

/// Sends one line; [`BuildError::Cancelled`] when the receiver is gone (the build stops).
pub(crate) async fn say(out: &Output, line: impl Into<String>) -> Result<(), BuildError> {
    out.send(line.into())
        .await
        .map_err(|_| BuildError::Cancelled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        assert_eq!(
            image_tag("web-1", "b0c1").ok().as_deref(),
            Some("flynn/app-web-1:b0c1")
        );
        assert!(image_tag("Web", "x").is_err());
        assert!(image_tag("a/b", "x").is_err());
        assert!(image_tag("a", "x:y").is_err());
        assert!(image_tag("a", "").is_err());
    }

    #[test]
    fn error_tail_is_shown() {
        let e = BuildError::Buildpack {
            buildpack: "python".into(),
            stage: "compile",
            reason: "exit status 1".into(),
            tail: vec!["ERROR: No matching distribution".into()],
        };
        let text = e.to_string();
        assert!(text.starts_with("buildpack python: compile failed: exit status 1"));
        assert!(text.ends_with("\n  ERROR: No matching distribution"));
    }
}
