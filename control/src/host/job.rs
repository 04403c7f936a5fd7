//! One job on this host, from start (or adoption) to its end: container up, port answering,
//! registered as an instance of `<app>-<type>`; then, when asked to stop, deregistered, drained
//! (every live router serves it no more and has nothing in flight on it), SIGTERM, grace,
//! SIGKILL, removed; when its container exits by itself, deregistered, removed
//! and marked crashed with its exit status.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::docker::{
    Publish, Spec, LABEL_APP, LABEL_APP_NAME, LABEL_HOST, LABEL_JOB, LABEL_RELEASE, LABEL_TYPE,
};
use super::Ctx;
use crate::api::db;
use crate::api::jobs;
use crate::api::types::{Artifact, Job, JobState, ProcessType, Release};
use crate::scheduler::deploy::routers;

/// The container port of a web process that declares none (Flynn's).
const DEFAULT_PORT: u16 = 8080;
/// How often a starting job's port is tried.
const CHECK_EVERY: Duration = Duration::from_millis(50);

/// How a task begins.
pub enum Start {
    /// Create and start the container.
    New,
    /// The container (this id) already runs: check it and register it.
    Adopt(String),
}

/// Why a job ended.
enum End {
    /// Asked to (its job is marked stop, or deleted).
    Stopped,
    /// Its container exited (status, if known).
    Exited(Option<i64>),
    /// It could not be started.
    Failed(String),
}

pub async fn run(ctx: Arc<Ctx>, job: Job, start: Start, mut stop: watch::Receiver<bool>) {
    let key = ctx.db.job(&ctx.config.id, &job.id);
    let container = match start {
        Start::Adopt(container) => Some(container),
        Start::New => match create(&ctx, &job).await {
            Ok((container, addr)) => {
                let written = jobs::update(&ctx.db, &key, |j| {
                    j.state = JobState::Starting;
                    j.container_id = Some(container.clone());
                    j.addr = addr.map(|a| a.to_string());
                })
                .await;
                if let Err(e) = written {
                    tracing::warn!(job = %job.id, error = %e, "cannot write the job's state");
                }
                Some(container)
            }
            Err(reason) => {
                finish(&ctx, &key, &job, End::Failed(reason)).await;
                return;
            }
        },
    };
    let Some(container) = container else { return };
    let end = supervise(&ctx, &key, &job, &container, &mut stop).await;
    if matches!(end, End::Stopped) {
        let _ = jobs::update(&ctx.db, &key, |j| j.state = JobState::Stopping).await;
        if let Err(e) = ctx.engine.stop(&container, ctx.config.stop_grace).await {
            tracing::warn!(job = %job.id, error = %e, "cannot stop a job's container");
        }
    }
    let mut ended = ended(&job, &end);
    ended.container_id = Some(container.clone());
    ctx.tails.save(&ctx.engine, &ended, &container).await;
    ctx.engine.remove(&container).await;
    finish(&ctx, &key, &job, end).await;
}

/// Runs the container through starting and up until it exits or is asked to stop.
async fn supervise(
    ctx: &Ctx,
    key: &str,
    job: &Job,
    container: &str,
    stop: &mut watch::Receiver<bool>,
) -> End {
    let exit = ctx.engine.wait(container);
    tokio::pin!(exit);
    let running = match ctx.engine.running(container).await {
        Ok(Some(running)) => running,
        Ok(None) => return End::Exited(exit.await),
        Err(e) => return End::Failed(e.to_string()),
    };
    // Starting: until its port answers (on the engine's network: the published port is
    // accepted by the engine's proxy whether or not the process listens).
    if let Some(check) = running.inside.or(running.published) {
        loop {
            tokio::select! {
                status = &mut exit => return End::Exited(status),
                () = stopped(stop) => return End::Stopped,
                _ = tokio::time::sleep(CHECK_EVERY) => {}
            }
            let connect = tokio::net::TcpStream::connect(check);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), connect).await {
                break;
            }
        }
    }
    let up = jobs::update(&ctx.db, key, |j| {
        if j.state != JobState::Up {
            j.state = JobState::Up;
            j.up_at_ms = Some(db::now_ms());
        }
    })
    .await;
    match up {
        Ok(Some(_)) => {}
        // The job is gone: stop it.
        Ok(None) => return End::Stopped,
        Err(e) => tracing::warn!(job = %job.id, error = %e, "cannot write the job's state"),
    }
    let instance = running.published.map(|addr| Instance::new(ctx, job, addr));
    let mut lease = ctx.lease.clone();
    let mut lease_alive = true;
    loop {
        if let Some(instance) = &instance {
            let current = *lease.borrow_and_update();
            instance.register(ctx, current).await;
        }
        tokio::select! {
            status = &mut exit => {
                if let Some(instance) = &instance {
                    instance.deregister(ctx).await;
                }
                return End::Exited(status);
            }
            () = stopped(stop) => {
                if let Some(instance) = &instance {
                    instance.deregister(ctx).await;
                    let started = std::time::Instant::now();
                    let service = format!("{}-{}", job.app_name, job.process_type);
                    routers::wait_drained(&ctx.db, &service, &job.id, ctx.config.drain_timeout)
                        .await;
                    tracing::debug!(job = %job.id, took = ?started.elapsed(), "drained");
                    tokio::time::sleep(ctx.config.drain_delay.saturating_sub(started.elapsed()))
                        .await;
                }
                return End::Stopped;
            }
            // A new lease: register again under it.
            changed = lease.changed(), if lease_alive => lease_alive = changed.is_ok(),
        }
    }
}

/// Until the job is asked to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The job as it ended (for its kept output).
fn ended(job: &Job, end: &End) -> Job {
    let mut job = job.clone();
    job.ended_at_ms = Some(db::now_ms());
    match end {
        End::Stopped => job.state = JobState::Down,
        End::Exited(status) => {
            job.state = JobState::Crashed;
            job.exit_status = *status;
        }
        End::Failed(reason) => {
            job.state = JobState::Crashed;
            job.error = Some(reason.clone());
        }
    }
    job
}

/// Writes how the job ended: a stopped job is written `down` (an event) and its record
/// deleted; a crashed one stays for the scheduler (which restarts it).
async fn finish(ctx: &Ctx, key: &str, job: &Job, end: End) {
    let result = match end {
        End::Stopped => {
            let down = jobs::update(&ctx.db, key, |j| {
                j.state = JobState::Down;
                j.ended_at_ms.get_or_insert_with(db::now_ms);
            })
            .await;
            match down {
                Ok(_) => jobs::delete_if(&ctx.db, key, |_| true).await.map(|_| ()),
                Err(e) => Err(e),
            }
        }
        End::Exited(status) => {
            tracing::info!(job = %job.id, status = ?status, "a job exited");
            // Exited while being stopped: as good as stopped.
            let down = jobs::update(&ctx.db, key, |j| {
                if j.stop {
                    j.state = JobState::Down;
                    j.exit_status = status;
                    j.ended_at_ms.get_or_insert_with(db::now_ms);
                }
            })
            .await;
            if let Err(e) = down {
                tracing::warn!(job = %job.id, error = %e, "cannot write the job's state");
            }
            match jobs::delete_if(&ctx.db, key, |j| j.stop).await {
                Ok(true) => Ok(()),
                Ok(false) => jobs::update(&ctx.db, key, |j| {
                    j.state = JobState::Crashed;
                    j.exit_status = status;
                    j.ended_at_ms = Some(db::now_ms());
                })
                .await
                .map(|_| ()),
                Err(e) => Err(e),
            }
        }
        End::Failed(reason) => {
            tracing::warn!(job = %job.id, error = %reason, "a job could not start");
            jobs::update(&ctx.db, key, |j| {
                j.state = JobState::Crashed;
                j.error = Some(reason.clone());
                j.ended_at_ms = Some(db::now_ms());
            })
            .await
            .map(|_| ())
        }
    };
    if let Err(e) = result {
        // The next pass of the agent sees a job without a task and marks it crashed.
        tracing::warn!(job = %job.id, error = %e, "cannot write how a job ended");
    }
}

/// Creates and starts the job's container; its id and published address.
async fn create(ctx: &Ctx, job: &Job) -> Result<(String, Option<SocketAddr>), String> {
    let release = ctx
        .db
        .get::<Release>(&ctx.db.release(&job.release_id))
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("release {} not found", job.release_id))?
        .value;
    let process = release
        .processes
        .get(&job.process_type)
        .ok_or_else(|| {
            format!(
                "release {} has no process type {:?}",
                release.id, job.process_type
            )
        })?
        .clone();
    let artifact_id = release
        .artifacts
        .first()
        .ok_or_else(|| format!("release {} has no artifact", release.id))?;
    let artifact = ctx
        .db
        .get::<Artifact>(&ctx.db.artifact(artifact_id))
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("artifact {artifact_id} not found"))?
        .value;
    let container_port = container_port(&job.process_type, &process);
    let mut env: BTreeMap<String, String> = release.env.clone();
    env.extend(process.env.clone());
    if let Some(port) = container_port {
        env.insert("PORT".to_owned(), port.to_string());
    }
    env.extend(meta(job));
    let labels = labels(&ctx.config.id, job);
    let image = image_of(&artifact)?;
    let image = super::slugs::image(ctx, &artifact, image, (&job.app_id, &job.app_name)).await?;
    let mut spec = Spec {
        name: format!("flynn-{}", job.id),
        image,
        args: process.args.clone(),
        env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        labels,
        memory: Some(memory_limit(&process).unwrap_or(ctx.config.default_memory)),
        publish: None,
    };
    // A port another process took between the check and the engine's bind: try another.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let publish = match container_port {
            Some(container_port) => Some(Publish {
                container_port,
                ip: ctx.config.external_ip,
                host_port: free_port(ctx.config.external_ip)
                    .map_err(|e| format!("no free port on {}: {e}", ctx.config.external_ip))?,
            }),
            None => None,
        };
        spec.publish = publish;
        match ctx.engine.run(&spec).await {
            Ok(id) => {
                let addr = publish.map(|p| SocketAddr::new(p.ip, p.host_port));
                return Ok((id, addr));
            }
            Err(e) if attempt < 3 && e.to_string().contains("already") => {
                tracing::debug!(job = %job.id, error = %e, "publishing failed; another port");
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The image of a docker artifact (its uri: an image id or name, `docker:` prefix optional).
pub(super) fn image_of(artifact: &Artifact) -> Result<String, String> {
    if artifact.kind != "docker" {
        return Err(format!(
            "artifact {} is of type {:?}; only docker artifacts run",
            artifact.id, artifact.kind
        ));
    }
    let uri = artifact.uri.trim();
    Ok(uri
        .strip_prefix("docker://")
        .or_else(|| uri.strip_prefix("docker:"))
        .unwrap_or(uri)
        .to_owned())
}

/// The port a process listens on: its first declared one, else 8080 for `web`; None: no port.
pub fn container_port(process_type: &str, process: &ProcessType) -> Option<u16> {
    match process.ports.first() {
        Some(port) if port.port != 0 => Some(port.port),
        Some(_) => Some(DEFAULT_PORT),
        None if process_type == "web" => Some(DEFAULT_PORT),
        None => None,
    }
}

/// Flynn's `resources.memory.limit` (bytes) of a process type.
pub fn memory_limit(process: &ProcessType) -> Option<i64> {
    process
        .extra
        .get("resources")?
        .get("memory")?
        .get("limit")?
        .as_i64()
        .filter(|l| *l > 0)
}

/// The labels of a job's container on `host`.
pub(super) fn labels(host: &str, job: &Job) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_HOST.to_owned(), host.to_owned()),
        (LABEL_JOB.to_owned(), job.id.clone()),
        (LABEL_APP.to_owned(), job.app_id.clone()),
        (LABEL_APP_NAME.to_owned(), job.app_name.clone()),
        (LABEL_RELEASE.to_owned(), job.release_id.clone()),
        (LABEL_TYPE.to_owned(), job.process_type.clone()),
    ])
}

/// The job's FLYNN_* variables, also the meta of its instance.
pub(super) fn meta(job: &Job) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("FLYNN_APP_ID".to_owned(), job.app_id.clone()),
        ("FLYNN_APP_NAME".to_owned(), job.app_name.clone()),
        ("FLYNN_RELEASE_ID".to_owned(), job.release_id.clone()),
        ("FLYNN_PROCESS_TYPE".to_owned(), job.process_type.clone()),
        ("FLYNN_JOB_ID".to_owned(), job.id.clone()),
    ])
}

/// A port nothing listens on at `ip` now.
fn free_port(ip: std::net::IpAddr) -> std::io::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// The job's registration as an instance of `<app>-<type>`.
struct Instance {
    key: String,
    value: serde_json::Value,
}

impl Instance {
    fn new(ctx: &Ctx, job: &Job, addr: SocketAddr) -> Instance {
        let service = format!("{}-{}", job.app_name, job.process_type);
        Instance {
            key: ctx.db.keys.instance(&service, &job.id),
            value: serde_json::json!({
                "id": job.id,
                "addr": addr,
                "meta": meta(job),
                "ttl_seconds": ctx.config.lease_ttl.as_secs().max(1),
                "registered_at": db::now(),
            }),
        }
    }

    async fn register(&self, ctx: &Ctx, lease: flynn_store::LeaseId) {
        for attempt in 0..10 {
            match ctx.db.put(&self.key, &self.value, Some(lease)).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(key = %self.key, error = %e, attempt, "cannot register an instance");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn deregister(&self, ctx: &Ctx) {
        for attempt in 0..10 {
            match ctx.db.delete(&self.key).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(key = %self.key, error = %e, attempt, "cannot deregister an instance");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::Port;

    #[test]
    fn ports_and_limits() {
        let mut web = ProcessType::default();
        assert_eq!(container_port("web", &web), Some(8080));
        assert_eq!(container_port("worker", &web), None);
        web.ports.push(Port {
            port: 5000,
            proto: "tcp".to_owned(),
        });
        assert_eq!(container_port("worker", &web), Some(5000));
        assert_eq!(memory_limit(&web), None);
        web.extra.insert(
            "resources".to_owned(),
            serde_json::json!({"memory": {"limit": 67108864}}),
        );
        assert_eq!(memory_limit(&web), Some(64 << 20));
    }
}
