//! A slug and the image made of it.
//!
//! A slug is what a buildpack compiled: a gzipped tar whose entries all sit under `app/` (the
//! app's directory, `/app` at run time). The image is the slug layered on the stack image:
//! one layer holding `/app` (owned by the stack's `app` user, uid 1000) and the runner,
//! committed from a container of the stack with this config — the same image as the
//! Dockerfile
//!
//! ```text
//! FROM flynn/stack:<version>
//! COPY --chown=1000:1000 app /app
//! COPY runner /runner
//! USER 1000:1000
//! WORKDIR /app
//! ENV HOME=/app
//! ENTRYPOINT ["/runner/init"]
//! ```
//!
//! but without the classic builder's intermediate container per step (about 2 s each on a
//! busy machine). `/runner/init` sources `/app/.profile.d/*.sh` and runs its one argument
//! with `sh -c`, so a process's argv is `["/runner/init", "<Procfile command>"]`.
//!
//! Only the slug and the stack are needed: a host agent on another machine that has the stack
//! image (`flynn stack build` there makes the same version) fetches the slug tarball and calls
//! [`image_from_slug`] to get the same image locally.

mod layers;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use bollard::models::{ContainerConfig, ContainerCreateBody};
use bollard::query_parameters::{CommitContainerOptionsBuilder, UploadToContainerOptionsBuilder};
use bollard::Docker;
use bytes::Bytes;

use crate::context::Tar;
use crate::engine::{self, engine_error, ImageGuard, LABEL_BUILD};
use crate::{procfile, say, stack, BuildError, Output};

/// The runner, copied into every app image.
pub const RUNNER: &str = include_str!("../../runner/init");
pub const RUNNER_PATH: &str = "/runner/init";

/// A process's argv: its command line through the runner.
pub fn argv(command: &str) -> Vec<String> {
    vec![RUNNER_PATH.to_owned(), command.to_owned()]
}

/// The labels a build puts on its image (`flynn.builder.{app,app-name,build}`), for an image
/// rebuilt from the build's slug.
pub fn labels(app_id: &str, app_name: &str, build_id: &str) -> HashMap<String, String> {
    engine::labels(app_id, app_name, build_id)
}

/// What a slug image is: its id, and the Procfile's types when the slug has one.
#[derive(Debug)]
pub struct SlugImage {
    pub image_id: String,
    pub procfile: Option<BTreeMap<String, String>>,
}

/// Builds the image `tag` from a slug tarball (gzipped, entries under `app/`) on `stack`
/// (which must be in the engine), with `labels` (e.g. [`labels`]); the Procfile found in the
/// slug is parsed and returned. The tag is not left behind if this fails or is dropped
/// half-way.
pub async fn image_from_slug(
    docker: &Docker,
    stack: &str,
    slug: Vec<u8>,
    tag: &str,
    labels: HashMap<String, String>,
    out: &Output,
) -> Result<SlugImage, BuildError> {
    let tar = tokio::task::spawn_blocking(move || {
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(slug.as_slice()).read_to_end(&mut tar)?;
        Ok::<_, std::io::Error>(tar)
    })
    .await
    .map_err(|e| BuildError::Source(format!("the slug: {e}")))?
    .map_err(|e| BuildError::Source(format!("the slug is not a gzipped tar: {e}")))?;
    let (image_id, procfile, guard) = assemble(docker, stack, tar.into(), tag, labels, out).await?;
    guard.keep();
    Ok(SlugImage { image_id, procfile })
}

/// [`image_from_slug`] from the slug's tar itself (not compressed), keeping the image's guard
/// armed for the caller.
pub(crate) async fn assemble(
    docker: &Docker,
    stack: &str,
    slug_tar: Bytes,
    tag: &str,
    labels: HashMap<String, String>,
    out: &Output,
) -> Result<(String, Option<BTreeMap<String, String>>, ImageGuard), BuildError> {
    let (repo, version) = tag
        .rsplit_once(':')
        .ok_or_else(|| BuildError::Invalid(format!("{tag:?} is not a repo:tag name")))?;
    if !stack::exists(docker, stack).await? {
        return Err(BuildError::Stack(format!(
            "{stack} is not in the Docker Engine (flynn stack build makes it)"
        )));
    }
    let (slug_tar, split) = tokio::task::spawn_blocking(move || {
        let split = layers::split(&slug_tar)?;
        Ok::<_, std::io::Error>((slug_tar, split))
    })
    .await
    .map_err(|e| BuildError::Source(format!("the slug: {e}")))?
    .map_err(|e| BuildError::Source(format!("the slug: {e}")))?;
    let procfile = split
        .procfile
        .map(|bytes| procfile::parse(&bytes))
        .transpose()?;
    // Named after the tag, so that a leftover is easy to tell (build ids are unique).
    let name = format!("flynn-assemble-{}", tag.replace(['/', ':'], "-"));
    let base = match split.deps {
        Some(deps) => {
            let mut labels = labels.clone();
            labels.remove(LABEL_BUILD);
            dependency_image(docker, stack, repo, deps, labels, &name, out).await?
        }
        None => stack.to_owned(),
    };
    let app_tar = split.rest.map_or(slug_tar, Bytes::from);

    let body = ContainerCreateBody {
        image: Some(base),
        user: Some(stack::USER.to_owned()),
        working_dir: Some(stack::APP_DIR.to_owned()),
        env: Some(vec![format!("HOME={}", stack::APP_DIR)]),
        entrypoint: Some(vec![RUNNER_PATH.to_owned()]),
        cmd: Some(Vec::new()),
        labels: Some(labels),
        ..ContainerCreateBody::default()
    };
    let container = engine::create_container(docker, &name, body).await?;
    let result = async {
        let runner = runner_tar().map_err(|e| BuildError::Source(e.to_string()))?;
        for tar in [runner.into(), app_tar] {
            upload(docker, container.id(), tar).await?;
        }
        let guard = ImageGuard::new(docker, tag);
        let id = commit(
            docker,
            container.id(),
            (repo, version),
            "flynn: a slug on the stack",
        )
        .await?;
        Ok::<_, BuildError>((id, guard))
    }
    .await;
    container.remove().await;
    let (id, guard) = result?;
    say(out, format!("       image {}", short(&id))).await?;
    Ok((id, procfile, guard))
}

/// The image of the stack and a slug's dependencies, `<repo>:deps-<hash>`: the one in the
/// engine if there is one, else made (from a container named `<name>-deps`).
async fn dependency_image(
    docker: &Docker,
    stack: &str,
    repo: &str,
    deps: layers::Deps,
    labels: HashMap<String, String>,
    name: &str,
    out: &Output,
) -> Result<String, BuildError> {
    let version = format!("deps-{}", deps.hash);
    let tag = format!("{repo}:{version}");
    if stack::exists(docker, &tag).await? {
        say(out, format!("       dependencies unchanged ({version})")).await?;
        return Ok(tag);
    }
    let body = ContainerCreateBody {
        image: Some(stack.to_owned()),
        labels: Some(labels),
        ..ContainerCreateBody::default()
    };
    let container = engine::create_container(docker, &format!("{name}-deps"), body).await?;
    let result = async {
        upload(docker, container.id(), deps.tar.into()).await?;
        let guard = ImageGuard::new(docker, &tag);
        let id = commit(
            docker,
            container.id(),
            (repo, &version),
            "flynn: a slug's dependencies",
        )
        .await?;
        Ok::<_, BuildError>((id, guard))
    }
    .await;
    container.remove().await;
    let (id, guard) = result?;
    // Whole: another build may use it.
    guard.keep();
    say(
        out,
        format!("       dependencies {version}: image {}", short(&id)),
    )
    .await?;
    Ok(tag)
}

/// Extracts `tar` at `/` in a container.
async fn upload(docker: &Docker, container: &str, tar: Bytes) -> Result<(), BuildError> {
    docker
        .upload_to_container(
            container,
            Some(UploadToContainerOptionsBuilder::default().path("/").build()),
            bollard::body_full(tar),
        )
        .await
        .map_err(engine_error)
}

/// Commits a container as `repo:version` (its config as created); the image's id.
async fn commit(
    docker: &Docker,
    container: &str,
    (repo, version): (&str, &str),
    comment: &str,
) -> Result<String, BuildError> {
    let options = CommitContainerOptionsBuilder::default()
        .container(container)
        .repo(repo)
        .tag(version)
        .comment(comment)
        .pause(false)
        .build();
    let committed = docker
        .commit_container(options, ContainerConfig::default())
        .await
        .map_err(engine_error)?;
    Ok(committed.id)
}

fn short(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

/// The runner at `runner/init`.
fn runner_tar() -> std::io::Result<Vec<u8>> {
    let mut tar = Tar::new();
    tar.dir("runner", 0o755, 0)?;
    tar.file("runner/init", RUNNER.as_bytes(), 0o755, 0)?;
    tar.finish()
}

/// Gzips a slug's tar (what the engine's archive download of `/app` gives) into a slug
/// tarball.
pub fn compress(tar: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut gz = flate2::read::GzEncoder::new(tar, flate2::Compression::fast());
    let mut slug = Vec::new();
    gz.read_to_end(&mut slug)?;
    Ok(slug)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slug_is_compressed_and_back() {
        let mut app = Tar::new();
        app.dir("app", 0o755, 1000).expect("dir");
        app.file("app/Procfile", b"web: python app.py\n", 0o644, 1000)
            .expect("file");
        let tar = app.finish().expect("tar");
        let slug = compress(&tar).expect("gzip");
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(slug.as_slice())
            .read_to_end(&mut back)
            .expect("gunzip");
        assert_eq!(back, tar);
        assert_eq!(argv("python app.py"), ["/runner/init", "python app.py"]);
    }
}
