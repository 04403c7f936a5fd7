//! The Docker Engine as the builder uses it: a client pinned to API 1.41, build containers
//! removed by a guard however the build ends, commands run in them with their output streamed
//! line by line, and an image tag removed unless the build that made it finished.

use std::collections::{HashMap, VecDeque};

use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, ImageInspect};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, BuilderVersion, CreateContainerOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
};
use bollard::{ClientVersion, Docker};
use futures::StreamExt;

use crate::{say, BuildError, Output};

/// Docker Engine 20.10 speaks API 1.41 at most; bollard's default is newer.
const API_VERSION: &ClientVersion = &ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// The labels on every container and image the builder makes (an app image's containers
/// inherit them: they are the builder's own, apart from the host agent's `flynn.*`).
pub const LABEL_APP: &str = "flynn.builder.app";
pub const LABEL_APP_NAME: &str = "flynn.builder.app-name";
pub const LABEL_BUILD: &str = "flynn.builder.build";

/// How many lines of a failed step's output an error carries.
pub const TAIL_LINES: usize = 20;

/// Connects (lazily) to the engine's unix socket (a path or `unix://` URL; None: the default).
pub fn connect(socket: Option<&str>) -> Result<Docker, BuildError> {
    let socket = socket.unwrap_or("unix:///var/run/docker.sock");
    // Builds are long: the client's timeout bounds a whole request (a compile, an import).
    Docker::connect_with_unix(socket, 3600, API_VERSION)
        .map_err(|e| BuildError::Docker(format!("cannot reach the engine at {socket}: {e}")))
}

pub fn engine_error(e: BollardError) -> BuildError {
    match e {
        BollardError::DockerResponseServerError { message, .. } => BuildError::Docker(message),
        other => BuildError::Docker(other.to_string()),
    }
}

pub fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The labels of what one build makes.
pub fn labels(app_id: &str, app_name: &str, build_id: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_APP.to_owned(), app_id.to_owned()),
        (LABEL_APP_NAME.to_owned(), app_name.to_owned()),
        (LABEL_BUILD.to_owned(), build_id.to_owned()),
    ])
}

/// A container removed (forcibly) when the guard goes, unless [`ContainerGuard::remove`]
/// already did: a build dropped half-way leaves no container behind.
pub struct ContainerGuard {
    docker: Docker,
    id: Option<String>,
}

impl ContainerGuard {
    pub fn new(docker: &Docker, id: String) -> ContainerGuard {
        ContainerGuard {
            docker: docker.clone(),
            id: Some(id),
        }
    }

    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or_default()
    }

    /// Removes the container now and waits for it.
    pub async fn remove(mut self) {
        if let Some(id) = self.id.take() {
            remove_container(&self.docker, &id).await;
        }
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let docker = self.docker.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move { remove_container(&docker, &id).await });
            }
            Err(_) => tracing::warn!(container = %id, "no runtime to remove a build container"),
        }
    }
}

/// Creates (does not start) the container `name` from `body`, guarded.
pub async fn create_container(
    docker: &Docker,
    name: &str,
    body: ContainerCreateBody,
) -> Result<ContainerGuard, BuildError> {
    let created = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(name).build()),
            body,
        )
        .await
        .map_err(engine_error)?;
    Ok(ContainerGuard::new(docker, created.id))
}

async fn remove_container(docker: &Docker, id: &str) {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => tracing::debug!(container = %id, "build container removed"),
        Err(e) if is_not_found(&e) => {}
        Err(e) => tracing::warn!(container = %id, error = %e, "cannot remove a build container"),
    }
}

/// An image tag untagged when the guard goes, unless [`ImageGuard::keep`] says the build
/// finished: a cancelled build leaves no half-made image tagged.
pub struct ImageGuard {
    docker: Docker,
    tag: Option<String>,
}

impl ImageGuard {
    pub fn new(docker: &Docker, tag: &str) -> ImageGuard {
        ImageGuard {
            docker: docker.clone(),
            tag: Some(tag.to_owned()),
        }
    }

    pub fn keep(mut self) {
        self.tag = None;
    }
}

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let Some(tag) = self.tag.take() else { return };
        let docker = self.docker.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { remove_image(&docker, &tag).await });
        }
    }
}

/// Removes an image by tag or id (not its parents' other tags); absent is fine.
pub async fn remove_image(docker: &Docker, image: &str) {
    let options = RemoveImageOptionsBuilder::default().force(true).build();
    match docker.remove_image(image, Some(options), None).await {
        Ok(_) => tracing::debug!(image, "image removed"),
        Err(e) if is_not_found(&e) => {}
        Err(e) => tracing::warn!(image, error = %e, "cannot remove an image"),
    }
}

/// What a command run in a container ended with.
pub struct Ran {
    pub exit_code: i64,
    /// Its stdout (only when captured).
    pub stdout: String,
    /// The last lines of its output, for errors.
    pub tail: Vec<String>,
}

/// How a command's output is handled.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Every line goes to the build's output.
    Show,
    /// stdout is captured (returned), stderr shown.
    Capture,
}

/// Runs `cmd` in the running container `id` as `user`, in `dir`, with `env`.
pub async fn exec(
    docker: &Docker,
    id: &str,
    cmd: &[&str],
    env: &[String],
    stream: Stream,
    out: &Output,
) -> Result<Ran, BuildError> {
    let exec = docker
        .create_exec(
            id,
            CreateExecOptions {
                cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                env: Some(env.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                user: Some(crate::stack::USER.to_owned()),
                working_dir: Some(crate::stack::APP_DIR.to_owned()),
                ..Default::default()
            },
        )
        .await
        .map_err(engine_error)?;
    let started = docker
        .start_exec(&exec.id, None)
        .await
        .map_err(engine_error)?;
    let mut captured = Vec::new();
    let mut lines = Lines::default();
    if let StartExecResults::Attached { mut output, .. } = started {
        while let Some(chunk) = output.next().await {
            let chunk = chunk.map_err(engine_error)?;
            let is_stdout = matches!(chunk, bollard::container::LogOutput::StdOut { .. });
            let bytes = chunk.into_bytes();
            if stream == Stream::Capture && is_stdout {
                captured.extend_from_slice(&bytes);
                continue;
            }
            for line in lines.push(&bytes) {
                say(out, line).await?;
            }
        }
    }
    if let Some(line) = lines.finish() {
        say(out, line).await?;
    }
    let inspect = docker.inspect_exec(&exec.id).await.map_err(engine_error)?;
    Ok(Ran {
        exit_code: inspect.exit_code.unwrap_or(-1),
        stdout: String::from_utf8_lossy(&captured).into_owned(),
        tail: lines.tail.into_iter().collect(),
    })
}

/// Builds an image through the engine's build API (the classic builder: no BuildKit, no
/// `# syntax=` front ends) from a tar `context`, tagged `tag`, streaming the build's output
/// to `out`. The tag is removed again unless the build finishes (see [`ImageGuard`]). Returns
/// the image's inspection (its id and config) with the guard.
pub async fn build_image(
    docker: &Docker,
    context: Vec<u8>,
    tag: &str,
    labels: HashMap<String, String>,
    out: &Output,
) -> Result<(String, ImageInspect, ImageGuard), BuildError> {
    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(tag)
        .rm(true)
        .forcerm(true)
        .labels(&labels)
        .version(BuilderVersion::BuilderV1)
        .build();
    let guard = ImageGuard::new(docker, tag);
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    let mut lines = Lines::default();
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(BollardError::DockerStreamError { error }) => {
                return Err(BuildError::Dockerfile {
                    reason: error.trim().to_owned(),
                    tail: lines.tail.into_iter().collect(),
                })
            }
            Err(e) => return Err(engine_error(e)),
        };
        if let Some(text) = info.stream.as_deref() {
            for line in lines.push(text.as_bytes()) {
                say(out, format!("       {line}")).await?;
            }
        }
        if let Some(detail) = info.error_detail {
            return Err(BuildError::Dockerfile {
                reason: detail.message.unwrap_or_default().trim().to_owned(),
                tail: lines.tail.into_iter().collect(),
            });
        }
    }
    if let Some(line) = lines.finish() {
        say(out, format!("       {line}")).await?;
    }
    let inspect = docker.inspect_image(tag).await.map_err(engine_error)?;
    let id = inspect
        .id
        .clone()
        .ok_or_else(|| BuildError::Docker(format!("the engine has no id for {tag}")))?;
    Ok((id, inspect, guard))
}

/// Splits a byte stream into lines (`\n` or `\r`), keeping the last [`TAIL_LINES`].
#[derive(Default)]
pub struct Lines {
    partial: Vec<u8>,
    pub tail: VecDeque<String>,
}

impl Lines {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut done = Vec::new();
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                if !self.partial.is_empty() {
                    let line = String::from_utf8_lossy(&self.partial).into_owned();
                    self.partial.clear();
                    self.keep(&line);
                    done.push(line);
                }
            } else {
                self.partial.push(b);
            }
        }
        done
    }

    pub fn finish(&mut self) -> Option<String> {
        if self.partial.is_empty() {
            return None;
        }
        let line = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        self.keep(&line);
        Some(line)
    }

    fn keep(&mut self, line: &str) {
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks() {
        let mut lines = Lines::default();
        assert_eq!(lines.push(b"Collect"), Vec::<String>::new());
        assert_eq!(
            lines.push(b"ing six\r\nDone\n\npart"),
            ["Collecting six", "Done"]
        );
        assert_eq!(lines.finish().as_deref(), Some("part"));
        assert_eq!(lines.tail, ["Collecting six", "Done", "part"]);
        for i in 0..30 {
            lines.push(format!("{i}\n").as_bytes());
        }
        assert_eq!(lines.tail.len(), TAIL_LINES);
        assert_eq!(lines.tail.back().map(String::as_str), Some("29"));
    }
}
