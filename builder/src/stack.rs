//! The stack image, `flynn/stack:<version>`: the Debian system that buildpacks compile on and
//! apps run on, built locally from Debian's packages (`mmdebstrap --variant=minbase bookworm`
//! streamed into the engine's import; there is no registry to pull it from).
//!
//! The version is a hash of the recipe below: change the recipe and the next build makes a new
//! image; an image of the current version already in the engine is reused. Builds on one
//! machine are serialised, so two first builds make it once.

use std::process::Stdio;
use std::time::Instant;

use bollard::query_parameters::{CreateImageOptionsBuilder, TagImageOptionsBuilder};
use bollard::Docker;
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::engine::{engine_error, is_not_found, remove_image};
use crate::{say, BuildError, Output};

pub const REPO: &str = "flynn/stack";
/// The unprivileged user buildpacks and apps run as (created in the stack as `app`).
pub const USER: &str = "1000:1000";
/// Its uid (and gid).
pub const UID: u32 = 1000;
/// The app's directory: where buildpacks compile (BUILD) and where the app runs.
pub const APP_DIR: &str = "/app";

/// The packages buildpacks need: Python with venv (pip comes from ensurepip's bundled wheel)
/// and the CA certificates. Recommends are not installed.
const PACKAGES: &[&str] = &["python3", "python3-venv", "ca-certificates"];

/// The recipe: mmdebstrap's arguments after the package list (the suite comes last).
const RECIPE: &[&str] = &[
    "--variant=minbase",
    "--mode=root",
    "--format=tar",
    // bookworm's minbase would otherwise pull usrmerge, and with it perl (50 MB).
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    "--aptopt=APT::Install-Recommends \"false\"",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--customize-hook=chroot \"$1\" useradd -u 1000 -U -d /app -s /bin/sh app",
    "--customize-hook=install -d -o 1000 -g 1000 \"$1/app\"",
    "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*",
    "bookworm",
];

/// The image's config, as `docker import --change` lines.
const CHANGES: &[&str] = &[
    "ENV LANG=C.UTF-8",
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "CMD [\"/bin/bash\"]",
];

/// The recipe's hash: the stack's version.
pub fn version() -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in PACKAGES.iter().chain(RECIPE).chain(CHANGES) {
        ctx.update(part.as_bytes());
        ctx.update(b"\0");
    }
    let digest = ctx.finish();
    let hex: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("bookworm-{hex}")
}

/// `flynn/stack:<version>`.
pub fn default_image() -> String {
    format!("{REPO}:{}", version())
}

/// Whether `image` is in the engine.
pub async fn exists(docker: &Docker, image: &str) -> Result<bool, BuildError> {
    match docker.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(engine_error(e)),
    }
}

/// One stack build at a time on this machine.
static BUILDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Makes sure `image` is in the engine: the builder's own stack is built when missing (saying
/// so); a user's own stack image must be there already.
pub async fn ensure(
    docker: &Docker,
    image: &str,
    own: bool,
    out: &Output,
) -> Result<(), BuildError> {
    if exists(docker, image).await? {
        return Ok(());
    }
    if !own {
        return Err(BuildError::Stack(format!(
            "{image} is not in the Docker Engine: load it there (docker pull/load) or unset \
             FLYNN_STACK_IMAGE to use the builder's own stack"
        )));
    }
    let _one = BUILDING.lock().await;
    if exists(docker, image).await? {
        return Ok(());
    }
    say(
        out,
        format!("-----> Building the stack image {image} (the first build on this machine; about a minute)"),
    )
    .await?;
    build(docker, image, out).await
}

/// Builds the stack image as `image` (replacing a tag of that name), streaming mmdebstrap's
/// progress to `out`. The import goes to a temporary tag first, so that a failed or cancelled
/// build never leaves a truncated root file system under the real name.
pub async fn build(docker: &Docker, image: &str, out: &Output) -> Result<(), BuildError> {
    let started = Instant::now();
    let (repo, tag) = image
        .rsplit_once(':')
        .filter(|(repo, tag)| !repo.is_empty() && !tag.is_empty() && !tag.contains('/'))
        .ok_or_else(|| BuildError::Stack(format!("{image:?} is not a repo:tag name")))?;
    let partial_tag = format!("{tag}-partial-{}", std::process::id());
    let partial = format!("{repo}:{partial_tag}");

    let mut child = Command::new("mmdebstrap")
        .arg(format!("--include={}", PACKAGES.join(",")))
        .args(RECIPE)
        .arg("-")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            BuildError::Stack(format!(
                "cannot run mmdebstrap ({e}): install it (apt-get install mmdebstrap) and run \
                 as root, or load a stack image yourself (see builder/README.md)"
            ))
        })?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(BuildError::Stack("mmdebstrap's pipes are missing".into()));
    };

    // mmdebstrap's stderr is its progress: shown, and its tail kept for errors.
    let progress_out = out.clone();
    let progress = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut tail = std::collections::VecDeque::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if tail.len() == crate::engine::TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.clone());
            if line.starts_with("I: ") || line.starts_with("E: ") || line.starts_with("W: ") {
                let _ = progress_out.send(format!("       {line}")).await;
            }
        }
        tail.into_iter().collect::<Vec<_>>()
    });

    let mut options = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(repo)
        .tag(&partial_tag);
    options = options.changes(CHANGES.iter().map(|c| c.to_string()).collect());
    let rootfs = tokio_util::io::ReaderStream::new(stdout);
    let mut import = docker.create_image(
        Some(options.build()),
        Some(bollard::body_try_stream(rootfs)),
        None,
    );
    let mut import_error = None;
    while let Some(item) = import.next().await {
        if let Err(e) = item {
            import_error = Some(e);
            break;
        }
    }
    drop(import);
    let status = child
        .wait()
        .await
        .map_err(|e| BuildError::Stack(format!("mmdebstrap: {e}")))?;
    let tail = progress.await.unwrap_or_default();
    if !status.success() {
        remove_image(docker, &partial).await;
        return Err(BuildError::Stack(format!(
            "mmdebstrap failed ({status}): {}",
            tail.join(" | ")
        )));
    }
    if let Some(e) = import_error {
        remove_image(docker, &partial).await;
        return Err(BuildError::Stack(format!(
            "the engine's import failed: {e}"
        )));
    }
    let replaced = docker.inspect_image(image).await.ok().and_then(|i| i.id);
    docker
        .tag_image(
            &partial,
            Some(
                TagImageOptionsBuilder::default()
                    .repo(repo)
                    .tag(tag)
                    .build(),
            ),
        )
        .await
        .map_err(engine_error)?;
    remove_image(docker, &partial).await;
    let built = docker.inspect_image(image).await.map_err(engine_error)?;
    let size = built.size.unwrap_or(0);
    // The image this one replaces (--force), unless app images still stand on it.
    if let Some(old) = replaced.filter(|old| built.id.as_ref() != Some(old)) {
        let keep_if_used = bollard::query_parameters::RemoveImageOptionsBuilder::default().build();
        let _ = docker.remove_image(&old, Some(keep_if_used), None).await;
    }
    say(
        out,
        format!(
            "-----> Stack image {image} built in {:.0} s ({} MB)",
            started.elapsed().as_secs_f64(),
            size / 1_000_000
        ),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_stable_and_named() {
        assert_eq!(version(), version());
        assert!(version().starts_with("bookworm-"));
        assert_eq!(version().len(), "bookworm-".len() + 12);
        assert_eq!(default_image(), format!("flynn/stack:{}", version()));
    }
}
