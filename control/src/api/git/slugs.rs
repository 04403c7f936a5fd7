//! The slugs of buildpack builds, kept so that a host agent whose engine lacks an app's image
//! can rebuild it (`flynn_builder::slug::image_from_slug`; see `crate::host::slugs`).
//!
//! Each build keeps its slug as `<data>/slugs/<app id>/<build id>.tgz` (the builder writes it
//! there, [`flynn_builder::Options::slug_dir`]); a build that is not released loses it at
//! once, and after each release only the app's [`KEPT`] newest slugs stay. The release's
//! artifact records where to get it, in its meta: [`META_URL`] (`<controller URL>/apps/<app
//! id>/slugs/<build id>`), [`META_STACK`] (the stack image it goes on) and [`META_BUILD`].
//! `GET /apps/{app}/slugs/{build}` (the cluster key) streams it; 404 when it is not kept.

use std::path::{Path as FsPath, PathBuf};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::HeaderValue;
use axum::response::Response;
use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use super::super::apps;
use super::super::error::{ApiError, ApiResult};
use super::GitState;

/// Artifact meta: the URL of the slug the image was made of.
pub const META_URL: &str = "slug.url";
/// Artifact meta: the stack image the slug goes on.
pub const META_STACK: &str = "slug.stack";
/// Artifact meta: the build that made it (its images' `flynn.builder.build` label).
pub const META_BUILD: &str = "build.id";
/// Artifact meta: the image's tag, `flynn/app-<app>:<build id>` (also what a host agent
/// tags the image it rebuilds from the slug).
pub const META_IMAGE: &str = "docker.image";

/// How many slugs an app keeps (its newest releases').
pub const KEPT: usize = 5;

/// Where an app's slugs are kept.
pub fn dir(data: &FsPath, app_id: &str) -> PathBuf {
    data.join("slugs").join(app_id)
}

/// The path of the slug API for one build (appended to the controller's URL).
pub fn url_path(app_id: &str, build_id: &str) -> String {
    format!("/apps/{app_id}/slugs/{build_id}")
}

/// `GET /apps/{app}/slugs/{build}`: the slug tarball (gzip), streamed.
pub async fn get(
    State(state): State<GitState>,
    Path((app, build)): Path<(String, String)>,
) -> ApiResult<Response> {
    let app = apps::find(&state.api, &app).await?.value;
    let missing = || ApiError::not_found(not_kept(&build, &app.name));
    let id_ok = !build.is_empty()
        && build.len() <= 128
        && build
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !id_ok {
        return Err(missing());
    }
    let path = dir(&state.git.config.data, &app.id).join(format!("{build}.tgz"));
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
        Err(e) => {
            return Err(ApiError::Internal(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let len = file
        .metadata()
        .await
        .map_err(|e| ApiError::Internal(format!("cannot read {}: {e}", path.display())))?
        .len();
    let chunks = futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = BytesMut::with_capacity(256 * 1024);
        match file.read_buf(&mut buf).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(buf.freeze()), Some(file))),
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut response = Response::new(Body::from_stream(chunks));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/gzip"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    Ok(response)
}

/// Why a slug is not served, and what to do about it.
fn not_kept(build: &str, app: &str) -> String {
    format!(
        "no slug of build {build:?} of {app} is kept here (only the slugs of its {KEPT} newest \
         releases are): push {app} again, or deploy a newer release, to run it on a host \
         whose engine lacks its image"
    )
}

/// Removes a slug that will not be released.
pub async fn discard(slug: &FsPath) {
    if let Err(e) = tokio::fs::remove_file(slug).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(slug = %slug.display(), error = %e, "cannot remove a slug");
        }
    }
}

/// Keeps the [`KEPT`] newest slugs in `dir` and removes the others.
pub async fn prune(dir: &FsPath) {
    let dir = dir.to_path_buf();
    let pruned = tokio::task::spawn_blocking(move || prune_now(&dir, KEPT)).await;
    match pruned {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot prune the slugs"),
        Err(e) => tracing::warn!(error = %e, "cannot prune the slugs"),
    }
}

fn prune_now(dir: &FsPath, keep: usize) -> std::io::Result<()> {
    let mut slugs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "tgz") {
            slugs.push((entry.metadata()?.modified()?, path));
        }
    }
    // Newest first.
    slugs.sort_by_key(|slug| std::cmp::Reverse(slug.0));
    for (_, path) in slugs.into_iter().skip(keep) {
        tracing::debug!(slug = %path.display(), "an old slug removed");
        std::fs::remove_file(&path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_are_kept() {
        let dir = tempfile::tempdir().expect("dir");
        for i in 0..7 {
            let path = dir.path().join(format!("b{i}.tgz"));
            std::fs::write(&path, b"x").expect("write");
            let when = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(100 + i);
            let file = std::fs::File::options()
                .write(true)
                .open(&path)
                .expect("open");
            file.set_modified(when).expect("mtime");
        }
        std::fs::write(dir.path().join("notes.txt"), b"x").expect("write");
        prune_now(dir.path(), 3).expect("prune");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["b4.tgz", "b5.tgz", "b6.tgz", "notes.txt"]);
        assert_eq!(url_path("a1", "b2"), "/apps/a1/slugs/b2");
        let message = not_kept("b2", "web");
        assert!(
            message.starts_with("no slug of build \"b2\" of web is kept here")
                && message.contains("push web again"),
            "{message}"
        );
    }
}
