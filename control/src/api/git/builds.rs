//! `POST /apps/{app}/builds?rev=<commit>`: the body is a tar of the tree to build (the
//! pre-receive hook sends `git archive` of the pushed commit). The tree is unpacked, built
//! ([`flynn_builder::build`]), released and deployed ([`super::release`]); the answer streams
//! as it happens, one JSON [`BuildMessage`] a line (`application/x-ndjson`): the output's
//! lines, a `tick` every [`TICK`] of silence, and at the end `done` or `failed`. A stream
//! that ends without either means the controller went away.
//!
//! One build per app at a time: another request while one runs gets 409. A client that
//! goes away cancels the build: the build's output channel closes, so the builder stops
//! and cleans up, and nothing is released; a build that has not stopped [`CANCEL_GRACE`]
//! later is aborted. Once the deploy has begun, it runs to its end (it keeps or rolls back
//! the old release on its own).

use std::path::{Path as FsPath, PathBuf};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::Response;
use bytes::Bytes;
use flynn_builder::git::{archive, refs, GitError};
use flynn_builder::{Build, Options, Output};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::super::apps;
use super::super::error::{ApiError, ApiResult};
use super::super::extract::Params;
use super::super::types::{App, Release};
use super::{release, slugs, GitState};

/// How often the stream says it is alive when the build is silent (a write to a client that
/// went away fails, which is how its departure is noticed).
pub const TICK: Duration = Duration::from_secs(2);

/// How long a cancelled build has to stop on its own before it is aborted.
pub const CANCEL_GRACE: Duration = Duration::from_secs(30);

/// One line of the build endpoint's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildMessage {
    /// A line of output, for the pusher.
    Line(String),
    /// Nothing new: the build is still running.
    Tick,
    /// Built, released and deployed.
    Done {
        release_id: String,
        url: Option<String>,
    },
    /// Why it failed; the previous release still serves.
    Failed(String),
}

#[derive(Debug, Default, Deserialize)]
pub struct BuildQuery {
    /// The commit being built (for the release's meta and the messages).
    #[serde(default)]
    rev: Option<String>,
}

pub async fn create(
    State(state): State<GitState>,
    Path(app): Path<String>,
    Params(query): Params<BuildQuery>,
    request: Request,
) -> ApiResult<Response> {
    let app = apps::find(&state.api, &app).await?.value;
    let rev = match query.rev {
        Some(rev) if refs::is_object_id(&rev) => Some(rev),
        Some(rev) => {
            return Err(ApiError::invalid(
                "rev",
                format!("{rev:?} is not a commit id"),
            ))
        }
        None => None,
    };
    let lock = BuildLock::take(&state, &app)?;
    let build_id = uuid::Uuid::new_v4().simple().to_string();
    let work = Workdir(state.git.config.data.join("builds").join(&build_id));
    let source = work.0.join("source");
    tokio::fs::create_dir_all(&source)
        .await
        .map_err(|e| ApiError::Internal(format!("cannot make {}: {e}", source.display())))?;
    let cache_dir = state.git.config.data.join("build-cache").join(&app.id);
    tokio::fs::create_dir_all(&cache_dir)
        .await
        .map_err(|e| ApiError::Internal(format!("cannot make {}: {e}", cache_dir.display())))?;
    let max = state.git.config.max_source;
    let size = archive::extract(request.into_body().into_data_stream(), &source, max)
        .await
        .map_err(|e| match e {
            GitError::TooLarge(_) => ApiError::PayloadTooLarge(e.to_string()),
            e => ApiError::validation(format!("cannot unpack the source: {e}")),
        })?;
    let previous = release::current(&state.api, &app).await?;
    let build = Build {
        app_id: app.id.clone(),
        app_name: app.name.clone(),
        build_id,
        source,
        env: previous.as_ref().map(|r| r.env.clone()).unwrap_or_default(),
        cache_dir,
        docker: state.git.config.docker.clone(),
    };
    tracing::info!(app = %app.name, build = %build.build_id, bytes = size, rev = ?rev, "build started");
    let (out, lines) = mpsc::channel::<String>(256);
    let task = tokio::spawn(run(
        state.clone(),
        app,
        previous,
        build,
        rev,
        out,
        (lock, work),
    ));
    let cancel = CancelOnDrop(Some(task.abort_handle()));
    let stream = futures::stream::unfold(
        Streaming {
            lines,
            task: Some(task),
            _cancel: cancel,
        },
        next_message,
    );
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

/// The answer's state: the build's lines, then its result.
struct Streaming {
    lines: mpsc::Receiver<String>,
    task: Option<JoinHandle<Result<release::Deployed, String>>>,
    _cancel: CancelOnDrop,
}

async fn next_message(mut s: Streaming) -> Option<(Result<Bytes, std::io::Error>, Streaming)> {
    let task = s.task.as_mut()?;
    let message = match tokio::time::timeout(TICK, s.lines.recv()).await {
        Ok(Some(line)) => BuildMessage::Line(line),
        Err(_) => BuildMessage::Tick,
        Ok(None) => {
            let result = task.await;
            s.task = None;
            match result {
                Ok(Ok(deployed)) => BuildMessage::Done {
                    release_id: deployed.release_id,
                    url: deployed.url,
                },
                Ok(Err(reason)) => BuildMessage::Failed(reason),
                Err(e) => BuildMessage::Failed(format!("the build stopped: {e}")),
            }
        }
    };
    let mut line = serde_json::to_vec(&message).unwrap_or_default();
    line.push(b'\n');
    Some((Ok(Bytes::from(line)), s))
}

/// Builds, releases and deploys; the lines go to `out`. The app's build slot and the build's
/// directory are `held` until it ends.
async fn run(
    state: GitState,
    app: App,
    previous: Option<Release>,
    build: Build,
    rev: Option<String>,
    out: Output,
    _held: (BuildLock, Workdir),
) -> Result<release::Deployed, String> {
    let started = Instant::now();
    let short = rev.as_deref().map(|r| &r[..r.len().min(10)]);
    say(
        &out,
        format!(
            "-----> Building {}{}",
            app.name,
            short.map(|r| format!(" ({r})")).unwrap_or_default()
        ),
    )
    .await;
    let slug_dir = slugs::dir(&state.git.config.data, &app.id);
    let options = Options {
        slug_dir: Some(slug_dir.clone()),
        ..Options::default()
    };
    // Where the builder keeps the slug: removed unless a release is made of it.
    let slug = slug_dir.join(format!("{}.tgz", build.build_id));
    let built = match flynn_builder::build(&build, &options, &out).await {
        Ok(built) => built,
        Err(e) => {
            slugs::discard(&slug).await;
            tracing::info!(app = %app.name, build = %build.build_id, error = %e, "build failed");
            return Err(format!("build failed: {e}"));
        }
    };
    if out.is_closed() {
        slugs::discard(&slug).await;
        tracing::info!(app = %app.name, build = %build.build_id, "push went away after the build: not released");
        return Err("the push went away: not released".to_owned());
    }
    say(
        &out,
        format!(
            "-----> Built {} ({}) in {:.1}s",
            built.image,
            built.kind,
            started.elapsed().as_secs_f64()
        ),
    )
    .await;
    let deployed = release::release_and_deploy(
        &state,
        &app,
        previous,
        (&build.build_id, &built),
        rev.as_deref(),
        &out,
    )
    .await;
    // A release may be made of it even when the deploy failed: kept, then pruned.
    slugs::prune(&slug_dir).await;
    match &deployed {
        Ok(d) => tracing::info!(app = %app.name, release = %d.release_id,
            seconds = started.elapsed().as_secs_f64(), "build deployed"),
        Err(e) => tracing::info!(app = %app.name, error = %e, "build not deployed"),
    }
    deployed
}

/// Sends a line to the pusher (gone: ignored; the build notices the closed channel).
pub async fn say(out: &Output, line: String) {
    let _ = out.send(line).await;
}

/// The app's build slot: taken for one build, freed when dropped.
struct BuildLock {
    state: GitState,
    app_id: String,
}

impl BuildLock {
    fn take(state: &GitState, app: &App) -> ApiResult<BuildLock> {
        let mut building = state.git.building.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(since) = building.get(&app.id) {
            return Err(ApiError::conflict(format!(
                "a build of {} is already running (started {}s ago): push again when it ends",
                app.name,
                since.elapsed().as_secs()
            )));
        }
        building.insert(app.id.clone(), Instant::now());
        Ok(BuildLock {
            state: state.clone(),
            app_id: app.id.clone(),
        })
    }
}

impl Drop for BuildLock {
    fn drop(&mut self) {
        self.state
            .git
            .building
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.app_id);
    }
}

/// A build's directory, removed when dropped.
struct Workdir(PathBuf);

impl Drop for Workdir {
    fn drop(&mut self) {
        remove_soon(&self.0);
    }
}

fn remove_soon(dir: &FsPath) {
    let dir = dir.to_path_buf();
    // Off the async threads: a source tree can be big.
    std::thread::spawn(move || {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a build directory");
            }
        }
    });
}

/// Aborts the build [`CANCEL_GRACE`] after the answer is dropped, if it is still running
/// then (it should have stopped on its own when its output channel closed).
struct CancelOnDrop(Option<tokio::task::AbortHandle>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(task) = self.0.take() else {
            return;
        };
        if task.is_finished() {
            return;
        }
        tracing::info!("build client went away: cancelling the build");
        tokio::spawn(async move {
            tokio::time::sleep(CANCEL_GRACE).await;
            if !task.is_finished() {
                tracing::warn!("the build did not stop within {CANCEL_GRACE:?}: aborted");
                task.abort();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::BuildMessage;

    #[test]
    fn messages_are_one_json_line_each() {
        let line = serde_json::to_string(&BuildMessage::Line("hi".into())).expect("json");
        assert_eq!(line, r#"{"line":"hi"}"#);
        assert_eq!(
            serde_json::to_string(&BuildMessage::Tick).expect("json"),
            r#""tick""#
        );
        let done: BuildMessage =
            serde_json::from_str(r#"{"done":{"release_id":"r","url":null}}"#).expect("parse");
        assert_eq!(
            done,
            BuildMessage::Done {
                release_id: "r".into(),
                url: None
            }
        );
    }
}
