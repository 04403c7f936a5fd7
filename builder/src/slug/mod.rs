//! A slug and the image made of it.
//!
//! A slug is what a buildpack compiled: a gzipped tar whose entries all sit under `app/` (the
//! app's directory, `/app` at run time). The image is the slug layered on the stack image,
//! `/app` owned by the stack's `app` user (uid 1000), with the runner and this config: the
//! same image as the Dockerfile
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
//! made without a container: the layers are loaded into the engine ([`load`]). The slug's
//! dependencies (a virtualenv) get a layer of their own, reused while they do not change
//! ([`layers`]). `/runner/init` sources `/app/.profile.d/*.sh` and runs its one argument
//! with `sh -c`, so a process's argv is `["/runner/init", "<Procfile command>"]`.
//!
//! Only the slug and the stack are needed: a host agent whose engine lacks an app's image
//! (and has the stack image: `flynn stack build` there makes the same version) fetches the
//! slug tarball and calls [`image_from_slug`] to make the image locally.

mod layers;
mod load;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use bollard::Docker;
use bytes::Bytes;

use crate::engine::{self, ImageGuard, LABEL_BUILD};
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

/// The most a slug's tar may hold once uncompressed: a build refuses an app whose files are
/// over 2 GiB (`buildpack::MAX_SLUG`), and the tar's headers add at most 1 KiB a file. A slug
/// is fetched from the URL an artifact names: a larger one (a gzip bomb) must not be
/// decompressed into the host agent's memory without end.
pub const MAX_TAR: u64 = 3 << 30;

/// `slug` uncompressed; an error past `max` bytes.
fn gunzip(slug: &[u8], max: u64) -> std::io::Result<Vec<u8>> {
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(slug)
        .take(max.saturating_add(1))
        .read_to_end(&mut tar)
        .map_err(|e| std::io::Error::other(format!("not a gzipped tar: {e}")))?;
    if tar.len() as u64 > max {
        return Err(std::io::Error::other(format!(
            "it is over {max} bytes uncompressed (more than any build makes): rebuild the app \
             with a push"
        )));
    }
    Ok(tar)
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
    let tar = tokio::task::spawn_blocking(move || gunzip(&slug, MAX_TAR))
        .await
        .map_err(|e| BuildError::Source(format!("the slug: {e}")))?
        .map_err(|e| BuildError::Source(format!("the slug: {e}")))?;
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
    let (repo, _) = tag
        .rsplit_once(':')
        .ok_or_else(|| BuildError::Invalid(format!("{tag:?} is not a repo:tag name")))?;
    if !stack::exists(docker, stack).await? {
        return Err(BuildError::Stack(format!(
            "{stack} is not in the Docker Engine (flynn stack build makes it)"
        )));
    }
    let split = tokio::task::spawn_blocking(move || layers::split(&slug_tar, RUNNER.as_bytes()))
        .await
        .map_err(|e| BuildError::Source(format!("the slug: {e}")))?
        .map_err(|e| BuildError::Source(format!("the slug: {e}")))?;
    let procfile = split
        .procfile
        .map(|bytes| procfile::parse(&bytes))
        .transpose()?;
    let base = match split.deps {
        Some(deps) => {
            let mut labels = labels.clone();
            labels.remove(LABEL_BUILD);
            dependency_image(docker, stack, repo, deps, labels, out).await?
        }
        None => stack.to_owned(),
    };
    let guard = ImageGuard::new(docker, tag);
    let id = load::layer_on(docker, &base, split.app, tag, |config| {
        config.insert("User".to_owned(), stack::USER.into());
        config.insert("WorkingDir".to_owned(), stack::APP_DIR.into());
        load::set_env(config, "HOME", stack::APP_DIR);
        config.insert("Entrypoint".to_owned(), serde_json::json!([RUNNER_PATH]));
        config.insert("Cmd".to_owned(), serde_json::json!([]));
        config.insert("Labels".to_owned(), serde_json::json!(labels));
    })
    .await?;
    say(out, format!("       image {}", short(&id))).await?;
    Ok((id, procfile, guard))
}

/// The image of the stack and a slug's dependencies, `<repo>:deps-<hash>`: the one in the
/// engine if there is one, else made.
async fn dependency_image(
    docker: &Docker,
    stack: &str,
    repo: &str,
    deps: layers::Deps,
    labels: HashMap<String, String>,
    out: &Output,
) -> Result<String, BuildError> {
    let version = format!("deps-{}", &deps.hash[..16]);
    let tag = format!("{repo}:{version}");
    if stack::exists(docker, &tag).await? {
        say(out, format!("       dependencies unchanged ({version})")).await?;
        return Ok(tag);
    }
    let guard = ImageGuard::new(docker, &tag);
    let id = load::layer_on(docker, stack, deps.tar, &tag, |config| {
        config.insert("Labels".to_owned(), serde_json::json!(labels));
    })
    .await?;
    // Whole: other builds may use it.
    guard.keep();
    say(
        out,
        format!("       dependencies {version}: image {}", short(&id)),
    )
    .await?;
    Ok(tag)
}

fn short(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
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
    use crate::context::Tar;

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

    #[test]
    fn a_slug_past_the_limit_is_refused_uncompressed() {
        let slug = compress(&vec![0u8; 1 << 20]).expect("gzip");
        assert!(slug.len() < 16 << 10, "zeros compress well: {}", slug.len());
        assert_eq!(gunzip(&slug, 1 << 20).expect("at the limit").len(), 1 << 20);
        let err = gunzip(&slug, 64 << 10).expect_err("over the limit");
        assert!(err.to_string().contains("over 65536 bytes"), "{err}");
        let err = gunzip(b"not gzip", 1 << 20).expect_err("not gzip");
        assert!(err.to_string().starts_with("not a gzipped tar"), "{err}");
    }
}
