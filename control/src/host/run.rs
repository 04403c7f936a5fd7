//! One-off jobs (`flynn run`): a container of the release's image running the given command,
//! outside any formation. Its record (`<prefix>/runs/<host>/<job>`, on the host's lease) shows
//! it in `flynn ps`; `flynn kill` marks it `stop`. It is never restarted: when its command
//! exits, its container and its record are removed.
//!
//! Attached, the container is created with stdin open, attached before it starts (so no output
//! is lost), and its output, then its exit status, go to the client as frames ([`Frame`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::container::{AttachContainerResults, LogOutput};
use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, LogsOptionsBuilder,
};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};

use super::docker::{DockerError, Engine};
use super::job::{image_of, labels, meta};
use super::Ctx;
use crate::api::db;
use crate::api::types::{App, Artifact, Job, JobState, Release};

/// The process type one-off jobs show as.
pub const RUN_TYPE: &str = "run";

/// `POST /runs` on a host agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub app_id: String,
    pub release_id: String,
    /// The command line (its first word is the executable).
    pub args: Vec<String>,
    /// Added to the release's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// What goes to an attached client: `[kind: u8][length: u32, big endian][payload]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Frame {
    Stdout = 1,
    Stderr = 2,
    /// The command's exit status as decimal text (empty: unknown); the last frame.
    Exit = 3,
    /// Why the job could not run or be followed (UTF-8); the last frame.
    Error = 4,
}

impl Frame {
    pub fn from_u8(kind: u8) -> Option<Frame> {
        Some(match kind {
            1 => Frame::Stdout,
            2 => Frame::Stderr,
            3 => Frame::Exit,
            4 => Frame::Error,
            _ => return None,
        })
    }
}

/// Writes one frame.
pub async fn write_frame(
    out: &mut (impl AsyncWrite + Unpin),
    kind: Frame,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut head = [0u8; 5];
    head[0] = kind as u8;
    head[1..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    out.write_all(&head).await?;
    out.write_all(payload).await?;
    out.flush().await
}

/// Reads one frame; None at the end of the stream.
pub async fn read_frame(
    input: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<Option<(Frame, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match input.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let kind = Frame::from_u8(head[0]).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "unknown frame kind")
    })?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut payload = vec![0u8; len];
    input.read_exact(&mut payload).await?;
    Ok(Some((kind, payload)))
}

/// Why a one-off job could not start: the client's mistake (400) or ours (500).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
}

/// The one-off jobs running here: how to stop each.
#[derive(Clone, Default)]
pub struct Runs(Arc<Mutex<HashMap<String, watch::Sender<bool>>>>);

impl Runs {
    fn insert(&self, id: &str) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        self.lock().insert(id.to_owned(), tx);
        rx
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Asks the one-off job `id` to stop; whether it runs here.
    pub fn stop(&self, id: &str) -> bool {
        match self.lock().get(id) {
            Some(tx) => {
                tx.send_replace(true);
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<bool>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A one-off job whose container exists, not started yet.
pub struct Created {
    pub job: Job,
    pub container: String,
    key: String,
    stop: watch::Receiver<bool>,
}

/// Checks the request, creates the container (stdin open when `attach`) and the job's record.
pub(crate) async fn create(
    ctx: &Ctx,
    runs: &Runs,
    request: &RunRequest,
    attach: bool,
) -> Result<Created, RunError> {
    if request.args.first().is_none_or(|a| a.is_empty()) {
        return Err(RunError::Invalid("a command to run is required".to_owned()));
    }
    let failed = |e: crate::api::ApiError| RunError::Failed(e.to_string());
    let app = ctx
        .db
        .get::<App>(&ctx.db.app(&request.app_id))
        .await
        .map_err(failed)?
        .ok_or_else(|| RunError::Invalid(format!("app {:?} not found", request.app_id)))?
        .value;
    let release = ctx
        .db
        .get::<Release>(&ctx.db.release(&request.release_id))
        .await
        .map_err(failed)?
        .ok_or_else(|| RunError::Invalid(format!("release {:?} not found", request.release_id)))?
        .value;
    if release
        .app_id
        .as_ref()
        .is_some_and(|owner| owner != &app.id)
    {
        return Err(RunError::Invalid(format!(
            "release {} belongs to another app",
            release.id
        )));
    }
    let artifact_id = release
        .artifacts
        .first()
        .ok_or_else(|| RunError::Invalid(format!("release {} has no artifact", release.id)))?;
    let artifact = ctx
        .db
        .get::<Artifact>(&ctx.db.artifact(artifact_id))
        .await
        .map_err(failed)?
        .ok_or_else(|| RunError::Failed(format!("artifact {artifact_id} not found")))?
        .value;
    let image = image_of(&artifact).map_err(RunError::Invalid)?;
    let image = super::slugs::image(ctx, &artifact, image, (&app.id, &app.name))
        .await
        .map_err(RunError::Failed)?;
    let now = db::now();
    let job = Job {
        id: uuid::Uuid::new_v4().to_string(),
        app_id: app.id.clone(),
        app_name: app.name.clone(),
        release_id: release.id.clone(),
        process_type: RUN_TYPE.to_owned(),
        host_id: ctx.config.id.clone(),
        state: JobState::Starting,
        created_at: now.clone(),
        updated_at: now,
        ..Job::default()
    };
    let mut env = release.env.clone();
    env.extend(request.env.clone());
    env.extend(meta(&job));
    let labels = labels(&ctx.config.id, &job);
    let (entrypoint, cmd) = match request.args.split_first() {
        Some((first, rest)) => (Some(vec![first.clone()]), Some(rest.to_vec())),
        None => (None, None),
    };
    let body = ContainerCreateBody {
        image: Some(image.clone()),
        entrypoint,
        cmd,
        env: Some(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(labels),
        attach_stdin: Some(attach),
        attach_stdout: Some(attach),
        attach_stderr: Some(attach),
        open_stdin: Some(attach),
        stdin_once: Some(attach),
        tty: Some(false),
        host_config: Some(HostConfig {
            init: Some(true),
            memory: Some(ctx.config.default_memory),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    };
    let options = CreateContainerOptionsBuilder::default()
        .name(&format!("flynn-{}", job.id))
        .build();
    let container = match ctx
        .engine
        .docker
        .create_container(Some(options), body)
        .await
    {
        Ok(created) => created.id,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => return Err(RunError::Failed(DockerError::NoImage(image).to_string())),
        Err(e) => return Err(RunError::Failed(DockerError::from(e).to_string())),
    };
    let mut job = job;
    job.container_id = Some(container.clone());
    let key = ctx.db.run(&ctx.config.id, &job.id);
    let lease = *ctx.lease.borrow();
    if let Err(e) = ctx.db.put(&key, &job, Some(lease)).await {
        ctx.engine.remove(&container).await;
        return Err(RunError::Failed(e.to_string()));
    }
    let stop = runs.insert(&job.id);
    Ok(Created {
        job,
        container,
        key,
        stop,
    })
}

/// Attaches to the created container's stdin, stdout and stderr.
pub(crate) async fn attach(
    ctx: &Ctx,
    created: &Created,
) -> Result<AttachContainerResults, RunError> {
    let options = AttachContainerOptionsBuilder::default()
        .stream(true)
        .stdin(true)
        .stdout(true)
        .stderr(true)
        .build();
    ctx.engine
        .docker
        .attach_container(&created.container, Some(options))
        .await
        .map_err(|e| RunError::Failed(DockerError::from(e).to_string()))
}

/// Starts the container; on failure removes it and its record.
pub(crate) async fn start(ctx: &Ctx, runs: &Runs, created: &Created) -> Result<(), RunError> {
    if let Err(e) = ctx
        .engine
        .docker
        .start_container(&created.container, None)
        .await
    {
        ctx.engine.remove(&created.container).await;
        let _ = ctx.db.delete(&created.key).await;
        runs.remove(&created.job.id);
        return Err(RunError::Failed(DockerError::from(e).to_string()));
    }
    Ok(())
}

/// Runs a started job to its end: until its command exits or it is asked to stop (then
/// SIGTERM, grace, SIGKILL). Sends the exit status to `status`, waits for `pumped` (the
/// attached client got all the output) a little, then removes the container and the record.
pub(crate) async fn supervise(
    ctx: Arc<Ctx>,
    runs: Runs,
    created: Created,
    status: Option<oneshot::Sender<Option<i64>>>,
    pumped: Option<oneshot::Receiver<()>>,
) {
    let Created {
        job,
        container,
        key,
        mut stop,
    } = created;
    let _ = crate::api::jobs::update(&ctx.db, &key, |j| {
        j.state = JobState::Up;
        j.up_at_ms = Some(db::now_ms());
    })
    .await;
    let mut lease = ctx.lease.clone();
    let exit = ctx.engine.wait(&container);
    tokio::pin!(exit);
    let code = loop {
        tokio::select! {
            code = &mut exit => break code,
            () = stopped(&mut stop) => {
                tracing::info!(job = %job.id, "stopping a one-off job");
                if let Err(e) = ctx.engine.stop(&container, ctx.config.stop_grace).await {
                    tracing::warn!(job = %job.id, error = %e, "cannot stop a one-off job");
                }
                break exit.await;
            }
            // A new lease: the record goes under it (the old one expires with its lease).
            changed = lease.changed() => {
                if changed.is_err() {
                    break exit.await;
                }
                let current = *lease.borrow_and_update();
                if let Ok(Some(now)) = ctx.db.get::<Job>(&key).await {
                    let _ = ctx.db.put(&key, &now.value, Some(current)).await;
                }
            }
        }
    };
    tracing::info!(job = %job.id, status = ?code, "a one-off job exited");
    if let Some(status) = status {
        let _ = status.send(code);
    }
    if let Some(pumped) = pumped {
        let _ = tokio::time::timeout(Duration::from_secs(10), pumped).await;
    }
    let mut ended = job.clone();
    (ended.state, ended.exit_status) = (JobState::Down, code);
    ctx.tails.save(&ctx.engine, &ended, &container).await;
    ctx.engine.remove(&container).await;
    let _ = ctx.db.delete(&key).await;
    runs.remove(&job.id);
}

/// Until the job is asked to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Copies the container's output to `client` as frames and `client`'s bytes to its stdin
/// (closed when the client closes its side), then the exit status. A client that goes away
/// stops the job.
pub async fn pump(
    attached: AttachContainerResults,
    client: impl AsyncRead + AsyncWrite + Send + 'static,
    status: oneshot::Receiver<Option<i64>>,
    runs: Runs,
    job_id: String,
) {
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let AttachContainerResults {
        mut output,
        mut input,
    } = attached;
    let stdin = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_client, &mut input).await;
        let _ = input.shutdown().await;
        // Keep the engine's side of stdin until the output ends.
        std::future::pending::<()>().await;
    });
    let mut gone = false;
    while let Some(item) = output.next().await {
        let (kind, message) = match item {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                (Frame::Stdout, message)
            }
            Ok(LogOutput::StdErr { message }) => (Frame::Stderr, message),
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(e) => {
                tracing::debug!(job = %job_id, error = %e, "attach stream ended");
                break;
            }
        };
        if write_frame(&mut to_client, kind, &message).await.is_err() {
            gone = true;
            break;
        }
    }
    stdin.abort();
    if gone {
        runs.stop(&job_id);
        return;
    }
    let code = status.await.ok().flatten();
    let text = code.map(|c| c.to_string()).unwrap_or_default();
    let _ = write_frame(&mut to_client, Frame::Exit, text.as_bytes()).await;
    let _ = to_client.shutdown().await;
}

/// One line of a job's log, as the agent's `/jobs/{id}/logs` gives it (one JSON per line).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogLine {
    /// RFC 3339 with nanoseconds, from the engine.
    pub time: String,
    /// stdout or stderr.
    pub stream: String,
    pub msg: String,
}

/// The engine's log of `container` (with times), as [`LogLine`]s.
pub fn logs(
    engine: &Engine,
    container: &str,
    follow: bool,
    tail: Option<u64>,
) -> impl Stream<Item = LogLine> + Send + 'static {
    let tail = tail.map_or_else(|| "all".to_owned(), |n| n.to_string());
    let options = LogsOptionsBuilder::default()
        .follow(follow)
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .tail(&tail)
        .build();
    engine
        .docker
        .logs(container, Some(options))
        .take_while(|item| std::future::ready(item.is_ok()))
        .filter_map(|item| {
            std::future::ready(match item {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                    Some(line("stdout", &message))
                }
                Ok(LogOutput::StdErr { message }) => Some(line("stderr", &message)),
                _ => None,
            })
        })
}

/// "2024-01-01T00:00:00.123456789Z text\n" → a [`LogLine`].
fn line(stream: &str, message: &[u8]) -> LogLine {
    let text = String::from_utf8_lossy(message);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let (time, msg) = text.split_once(' ').unwrap_or(("", text));
    LogLine {
        time: time.to_owned(),
        stream: stream.to_owned(),
        msg: msg.to_owned(),
    }
}

/// Stops the one-off jobs whose records are marked `stop` (`flynn kill`), for the life of the
/// agent.
pub(crate) async fn watch_kills(ctx: Arc<Ctx>, runs: Runs) {
    let prefix = ctx.db.host_runs(&ctx.config.id);
    let mut changes = super::changes(&ctx.db, prefix.clone());
    while changes.recv().await.is_some() {
        match ctx.db.list::<Job>(&prefix).await {
            Ok(jobs) => {
                for job in jobs.into_iter().map(|j| j.value).filter(|j| j.stop) {
                    runs.stop(&job.id);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the one-off jobs"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, Frame::Stdout, b"hello\n")
            .await
            .unwrap();
        write_frame(&mut buf, Frame::Exit, b"3").await.unwrap();
        let mut input = &buf[..];
        let first = read_frame(&mut input).await.unwrap();
        assert_eq!(first, Some((Frame::Stdout, b"hello\n".to_vec())));
        let second = read_frame(&mut input).await.unwrap();
        assert_eq!(second, Some((Frame::Exit, b"3".to_vec())));
        assert_eq!(read_frame(&mut input).await.unwrap(), None);
    }

    #[test]
    fn log_lines() {
        let l = line("stderr", b"2024-01-01T00:00:00.5Z oops: a b\n");
        assert_eq!(l.time, "2024-01-01T00:00:00.5Z");
        assert_eq!(l.msg, "oops: a b");
        assert_eq!(l.stream, "stderr");
    }
}
