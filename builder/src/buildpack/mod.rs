//! Buildpack builds, Heroku's classic API: `bin/detect BUILD`, `bin/compile BUILD CACHE ENV`,
//! `bin/release BUILD` run in one container of the stack image as its unprivileged user, with
//! BUILD = `/app` (a copy of the pushed tree in a directory of the host, bound there:
//! [`appdir`]), CACHE = `/cache` (the app's build cache dir, kept between builds) and ENV =
//! `/tmp/env` (one file per variable of the app's env). The host's CA bundle is mounted
//! read-only over the stack's, for package registries behind a private CA.
//!
//! Which buildpack: `BUILDPACK_URL` in the app's env if set (see [`source`]), else the first of
//! the bundled ones whose `bin/detect` says yes, in this order: python, static, procfile.
//! After compile, `/app` is the slug; [`crate::slug`] layers it on the stack.

mod appdir;
mod source;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::UploadToContainerOptionsBuilder;
use bollard::Docker;

pub use self::source::{Buildpack, Files, BUNDLED};
use crate::context::Tar;
use crate::engine::{self, engine_error, exec, ContainerGuard, Stream};
use crate::{say, slug, stack, Build, BuildError, Built, Options, Output};

/// Where things are in the build container.
const CACHE_DIR: &str = "/cache";
const ENV_DIR: &str = "/tmp/env";
const BUILDPACKS_DIR: &str = "/tmp/buildpacks";
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The largest slug kept (the compiled `/app`, before compression).
const MAX_SLUG: u64 = 2 << 30;

/// What `bin/release` prints (YAML); other keys are ignored.
#[derive(Debug, Default, serde::Deserialize)]
struct Release {
    #[serde(default)]
    default_process_types: Option<BTreeMap<String, String>>,
}

/// Builds `build` with a buildpack into the image `tag`.
pub async fn build(
    docker: &Docker,
    build: &Build,
    options: &Options,
    tag: &str,
    out: &Output,
) -> Result<Built, BuildError> {
    let (stack_image, own) = options.stack();
    stack::ensure(docker, &stack_image, own, out).await?;
    let (candidates, _checkout) = source::candidates(build, out).await?;
    prepare_cache(&build.cache_dir)?;

    let (app, upload) = {
        let build = build.clone();
        let candidates = candidates.clone();
        tokio::task::spawn_blocking(move || {
            let app = appdir::AppDir::new(&build.source)?;
            Ok::<_, std::io::Error>((app, upload_tar(&build, &candidates)?))
        })
        .await
        .map_err(|e| BuildError::Source(e.to_string()))?
        .map_err(|e| BuildError::Source(e.to_string()))?
    };

    let labels = engine::labels(&build.app_id, &build.app_name, &build.build_id);
    let container =
        start_container(docker, build, &stack_image, labels.clone(), app.path()).await?;
    // The container goes whatever happens; on a drop, its guard removes it.
    let result = compile(docker, container.id(), upload, &candidates, out).await;
    container.remove().await;
    let (pack, release) = result?;
    let slug_tar = {
        let path = app.path().to_owned();
        tokio::task::spawn_blocking(move || appdir::slug(&path, MAX_SLUG))
            .await
            .map_err(|e| BuildError::Source(e.to_string()))?
            .map_err(|e| BuildError::Source(format!("the compiled app: {e}")))?
    };
    drop(app);
    say(
        out,
        format!(
            "-----> Slug compiled: {:.1} MB",
            slug_tar.len() as f64 / 1e6
        ),
    )
    .await?;
    // The slug is compressed and kept while the image is made of it.
    let slug_tar = bytes::Bytes::from(slug_tar);
    let keep = async {
        match &options.slug_dir {
            Some(dir) => keep_slug(dir, &build.build_id, slug_tar.clone())
                .await
                .map(Some),
            None => Ok(None),
        }
    };
    let assemble = async {
        say(out, format!("-----> Building the image {tag}")).await?;
        slug::assemble(docker, &stack_image, slug_tar.clone(), tag, labels, out).await
    };
    let (kept, assembled) = tokio::join!(keep, assemble);
    let (image_id, procfile, guard, slug_path) = match (assembled, kept) {
        (Ok((id, procfile, guard)), Ok(path)) => (id, procfile, guard, path),
        (Err(e), Ok(Some(path))) => {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
        (Err(e), _) | (Ok(_), Err(e)) => return Err(e),
    };
    let processes = processes(release.default_process_types, procfile);
    say(
        out,
        format!(
            "-----> Releasing: process types {}",
            if processes.is_empty() {
                "(none)".to_owned()
            } else {
                processes.keys().cloned().collect::<Vec<_>>().join(", ")
            }
        ),
    )
    .await?;
    guard.keep();
    Ok(Built {
        image: tag.to_owned(),
        image_id,
        processes,
        kind: format!("buildpack {}", pack.name),
        port: None,
        slug: slug_path,
        stack: Some(stack_image),
    })
}

/// Detect, compile and release in the running build container; the compiled `/app` as a tar.
async fn compile(
    docker: &Docker,
    id: &str,
    upload: Vec<u8>,
    candidates: &[Buildpack],
    out: &Output,
) -> Result<(Buildpack, Release), BuildError> {
    docker
        .upload_to_container(
            id,
            Some(UploadToContainerOptionsBuilder::default().path("/").build()),
            bollard::body_full(upload.into()),
        )
        .await
        .map_err(engine_error)?;

    say(out, "-----> Detecting the buildpack").await?;
    let pack = detect(docker, id, candidates, out).await?;

    say(
        out,
        format!("-----> Compiling with the {} buildpack", pack.name),
    )
    .await?;
    let dir = format!("{BUILDPACKS_DIR}/{}", pack.name);
    let compile = format!("{dir}/bin/compile");
    let argv = [compile.as_str(), stack::APP_DIR, CACHE_DIR, ENV_DIR];
    let ran = exec(docker, id, &argv, &[], Stream::Show, out).await?;
    if ran.exit_code != 0 {
        return Err(BuildError::Buildpack {
            buildpack: pack.name.clone(),
            stage: "compile",
            reason: format!("exit status {}", ran.exit_code),
            tail: ran.tail,
        });
    }

    let release = format!("{dir}/bin/release");
    let argv = [release.as_str(), stack::APP_DIR];
    let ran = exec(docker, id, &argv, &[], Stream::Capture, out).await?;
    if ran.exit_code != 0 {
        return Err(BuildError::Buildpack {
            buildpack: pack.name.clone(),
            stage: "release",
            reason: format!("exit status {}", ran.exit_code),
            tail: ran.tail,
        });
    }
    let release: Release = if ran.stdout.trim().is_empty() {
        Release::default()
    } else {
        serde_yaml::from_str(&ran.stdout).map_err(|e| BuildError::Buildpack {
            buildpack: pack.name.clone(),
            stage: "release",
            reason: format!("its output is not the expected YAML: {e}"),
            tail: Vec::new(),
        })?
    };
    Ok((pack, release))
}

/// Writes the slug tarball (gzipped) as `<dir>/<build id>.tgz`.
async fn keep_slug(dir: &Path, build_id: &str, tar: bytes::Bytes) -> Result<PathBuf, BuildError> {
    let slug = tokio::task::spawn_blocking(move || slug::compress(&tar))
        .await
        .map_err(|e| BuildError::Source(e.to_string()))?
        .map_err(|e| BuildError::Source(format!("compressing the slug: {e}")))?;
    let path = dir.join(format!("{build_id}.tgz"));
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| BuildError::Source(format!("cannot keep the slug: {e}")))?;
    tokio::fs::write(&path, &slug)
        .await
        .map_err(|e| BuildError::Source(format!("cannot keep the slug: {e}")))?;
    Ok(path)
}

/// The Procfile's types over the buildpack's defaults, each as an argv through the runner.
fn processes(
    defaults: Option<BTreeMap<String, String>>,
    procfile: Option<BTreeMap<String, String>>,
) -> BTreeMap<String, Vec<String>> {
    let mut types = defaults.unwrap_or_default();
    types.extend(procfile.unwrap_or_default());
    types
        .into_iter()
        .map(|(name, command)| (name, slug::argv(&command)))
        .collect()
}

/// The cache dir exists and belongs to the build user (when we may chown; else it is opened
/// to everyone, as a cache holds nothing secret the app's code could not fetch again).
fn prepare_cache(dir: &Path) -> Result<(), BuildError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| BuildError::Source(format!("the build cache {}: {e}", dir.display())))?;
    if std::os::unix::fs::chown(dir, Some(1000), Some(1000)).is_err() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| BuildError::Source(format!("the build cache {}: {e}", dir.display())))?;
    }
    Ok(())
}

/// What goes into the build container at `/` (its `/app` is bound to the build's own
/// directory): the env at `tmp/env/`, the candidate buildpacks at `tmp/buildpacks/<name>/`.
fn upload_tar(build: &Build, candidates: &[Buildpack]) -> std::io::Result<Vec<u8>> {
    let mut tar = Tar::new();
    tar.dir("tmp/env", 0o755, 0)?;
    for (key, value) in &build.env {
        let valid = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if valid {
            tar.file(&format!("tmp/env/{key}"), value.as_bytes(), 0o644, 0)?;
        }
    }
    for pack in candidates {
        let dir = format!("tmp/buildpacks/{}", pack.name);
        match &pack.files {
            Files::Bundled(files) => {
                tar.dir(&dir, 0o755, 0)?;
                tar.dir(&format!("{dir}/bin"), 0o755, 0)?;
                for (name, text) in files.iter() {
                    tar.file(&format!("{dir}/bin/{name}"), text.as_bytes(), 0o755, 0)?;
                }
            }
            Files::Dir(path) => tar.tree(path, &dir, 0)?,
        }
    }
    tar.finish()
}

async fn start_container(
    docker: &Docker,
    build: &Build,
    stack_image: &str,
    labels: HashMap<String, String>,
    app: &Path,
) -> Result<ContainerGuard, BuildError> {
    let mut binds = vec![
        format!("{}:{}:rw", app.display(), stack::APP_DIR),
        format!("{}:{CACHE_DIR}:rw", build.cache_dir.display()),
    ];
    if Path::new(CA_BUNDLE).is_file() {
        binds.push(format!("{CA_BUNDLE}:{CA_BUNDLE}:ro"));
    }
    let env = vec![
        format!("HOME={}", stack::APP_DIR),
        format!("STACK={stack_image}"),
        format!("SSL_CERT_FILE={CA_BUNDLE}"),
        format!("PIP_CERT={CA_BUNDLE}"),
        format!("REQUESTS_CA_BUNDLE={CA_BUNDLE}"),
        format!("GIT_SSL_CAINFO={CA_BUNDLE}"),
    ];
    let body = ContainerCreateBody {
        image: Some(stack_image.to_owned()),
        cmd: Some(vec!["sleep".into(), "infinity".into()]),
        user: Some(stack::USER.to_owned()),
        working_dir: Some(stack::APP_DIR.to_owned()),
        env: Some(env),
        labels: Some(labels),
        host_config: Some(HostConfig {
            init: Some(true),
            binds: Some(binds),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    };
    let name = format!("flynn-build-{}", build.build_id);
    let guard = engine::create_container(docker, &name, body).await?;
    docker
        .start_container(guard.id(), None)
        .await
        .map_err(engine_error)?;
    Ok(guard)
}

/// The first candidate whose `bin/detect` exits 0 (a single candidate from `BUILDPACK_URL`
/// without a `bin/detect` is taken as is).
async fn detect(
    docker: &Docker,
    id: &str,
    candidates: &[Buildpack],
    out: &Output,
) -> Result<Buildpack, BuildError> {
    for pack in candidates {
        let detect = format!("{BUILDPACKS_DIR}/{}/bin/detect", pack.name);
        let ran = exec(
            docker,
            id,
            &[&detect, stack::APP_DIR],
            &[],
            Stream::Capture,
            out,
        )
        .await?;
        // 126/127: there is no bin/detect (or it cannot run).
        let missing = matches!(ran.exit_code, 126 | 127);
        if ran.exit_code == 0 || (pack.custom && missing) {
            let said = ran.stdout.trim();
            let shown = if said.is_empty() { &pack.name } else { said };
            say(out, format!("-----> {shown} app detected")).await?;
            return Ok(pack.clone());
        }
        if pack.custom {
            return Err(BuildError::Buildpack {
                buildpack: pack.name.clone(),
                stage: "detect",
                reason: format!(
                    "the BUILDPACK_URL buildpack cannot build this app (bin/detect exit status {})",
                    ran.exit_code
                ),
                tail: ran.tail,
            });
        }
    }
    Err(BuildError::NoBuildpack)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procfile_types_win_over_defaults() {
        let defaults = BTreeMap::from([
            ("web".to_owned(), "python app.py".to_owned()),
            ("clock".to_owned(), "python clock.py".to_owned()),
        ]);
        let procfile = BTreeMap::from([("web".to_owned(), "gunicorn app".to_owned())]);
        let got = processes(Some(defaults), Some(procfile));
        assert_eq!(got["web"], ["/runner/init", "gunicorn app"]);
        assert_eq!(got["clock"], ["/runner/init", "python clock.py"]);
        assert!(processes(None, None).is_empty());
    }

    #[test]
    fn release_yaml() {
        let r: Release =
            serde_yaml::from_str("---\ndefault_process_types:\n  web: python app.py\n")
                .expect("yaml");
        assert_eq!(
            r.default_process_types.expect("types")["web"],
            "python app.py"
        );
        let r: Release =
            serde_yaml::from_str("---\ndefault_process_types: {}\naddons: []\n").expect("yaml");
        assert_eq!(r.default_process_types, Some(BTreeMap::new()));
    }
}
