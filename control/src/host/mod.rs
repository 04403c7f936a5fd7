//! The host agent: runs the jobs the scheduler assigns to this host as containers on the local
//! Docker Engine ([`docker`]), registers the host and each job that is up under one lease, and
//! writes each job's state to the store ([`job`]).
//!
//! It is level-triggered: it lists its jobs (`<prefix>/jobs/<host>/`) whenever they change (and
//! every few seconds), starts a task for each pending job, and tells a task to stop when its job
//! is marked `stop` or deleted. On start it adopts the running containers carrying its label
//! whose job is still wanted, and removes every other container carrying it. An image its
//! engine lacks is rebuilt from the build's slug, fetched from the controller ([`slugs`]).

pub mod api;
pub mod cmd;
pub mod docker;
mod job;
pub mod run;
mod slugs;
pub mod tails;

pub use self::job::memory_limit as job_memory_limit;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use flynn_store::{LeaseId, StoreError};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use self::docker::{Engine, EngineInfo, LABEL_HOST, LABEL_JOB};
use crate::api::db::{self, Db};
use crate::api::types::{Host, HostCapacity, Job, JobState};
use crate::api::{jobs, ApiResult};

/// The host agent's flags (`flynn host`, and `flynn server`'s in-process agent).
#[derive(clap::Args, Debug, Clone)]
pub struct HostArgs {
    /// This host's id [default: <data>/host-id, generated on first start]
    #[arg(long = "host-id", env = "FLYNN_HOST_ID")]
    pub host_id: Option<String>,

    /// The address the jobs' ports are published on; instances are registered at it.
    #[arg(
        long = "external-ip",
        env = "FLYNN_EXTERNAL_IP",
        default_value = "127.0.0.1"
    )]
    pub external_ip: IpAddr,

    /// The agent's HTTP API (job list, logs, `flynn run`), with the cluster key
    /// [default: the external IP, on a free port]; its address goes into the host's record.
    #[arg(long = "host-api-addr", env = "FLYNN_HOST_API_ADDR")]
    pub api_addr: Option<SocketAddr>,

    /// A tag of this host, KEY=VALUE (repeatable); a formation may ask for tags per process
    /// type (`flynn scale --tag web:KEY=VALUE`), and its jobs then run only on hosts that have them.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,

    /// The Docker Engine's socket.
    #[arg(
        long = "docker-socket",
        env = "FLYNN_DOCKER_SOCKET",
        default_value = "/var/run/docker.sock"
    )]
    pub docker_socket: String,

    /// The TTL of the host's lease (its registration and its jobs' instances).
    #[arg(long = "host-lease-ttl", env = "FLYNN_HOST_LEASE_TTL", default_value = "5s",
        value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,

    /// After SIGTERM, how long a job has to exit before SIGKILL.
    #[arg(long = "stop-grace", env = "FLYNN_STOP_GRACE", default_value = "10s",
        value_parser = humantime::parse_duration)]
    pub stop_grace: Duration,

    /// The least a job keeps running after it is deregistered, before SIGTERM. It also waits
    /// until every live router (under <prefix>/routers/) has stopped serving it and has no
    /// request in flight on it.
    #[arg(long = "drain-delay", env = "FLYNN_DRAIN_DELAY", default_value = "0s",
        value_parser = humantime::parse_duration)]
    pub drain_delay: Duration,

    /// The most a deregistered job waits for the routers to drain it before SIGTERM.
    #[arg(long = "job-drain-timeout", env = "FLYNN_JOB_DRAIN_TIMEOUT", default_value = "30s",
        value_parser = humantime::parse_duration)]
    pub job_drain_timeout: Duration,

    /// Where this host reaches the controller, e.g. http://10.0.0.2:8081, when not at the URL
    /// the controller put in its artifacts (the slugs of buildpack builds are fetched from it
    /// to rebuild an image the engine lacks) [default: the artifact's URL]
    #[arg(long = "controller-url", env = "FLYNN_HOST_CONTROLLER_URL")]
    pub controller_url: Option<String>,
}

fn parse_tag(raw: &str) -> anyhow::Result<(String, String)> {
    raw.split_once('=')
        .filter(|(k, _)| !k.trim().is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| anyhow::anyhow!("--tag {raw:?}: expected KEY=VALUE (e.g. disk=ssd)"))
}

/// How a host agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub id: String,
    pub external_ip: IpAddr,
    pub tags: BTreeMap<String, String>,
    pub docker_socket: String,
    pub lease_ttl: Duration,
    pub stop_grace: Duration,
    pub drain_delay: Duration,
    /// The most a job waits for the routers to drain it.
    pub drain_timeout: Duration,
    /// Memory limit of a job whose process type sets none (Flynn's default: 1 GiB).
    pub default_memory: i64,
    /// Where the agent's API listens (None: the external IP, a free port).
    pub api_addr: Option<SocketAddr>,
    /// The cluster key the agent's API asks for (empty: the API refuses every request).
    pub key: String,
    /// Where the last output of finished jobs is kept ([`tails`]).
    pub job_logs: PathBuf,
    /// The controller's URL, for slugs (None: the one in the artifact).
    pub controller_url: Option<String>,
}

impl AgentConfig {
    /// From the flags; the id from `--host-id`, else `<data>/host-id` (written once).
    pub fn from_args(args: &HostArgs, data: &Path) -> anyhow::Result<AgentConfig> {
        let id = match &args.host_id {
            Some(id) if !id.trim().is_empty() => id.trim().to_owned(),
            _ => host_id(data)?,
        };
        crate::api::validate::ident("host-id", &id, 100)
            .map_err(|e| anyhow::anyhow!("--host-id: {e}"))?;
        Ok(AgentConfig {
            id,
            external_ip: args.external_ip,
            tags: args
                .tags
                .iter()
                .map(|t| parse_tag(t))
                .collect::<anyhow::Result<_>>()?,
            docker_socket: args.docker_socket.clone(),
            lease_ttl: args.lease_ttl.max(Duration::from_secs(1)),
            stop_grace: args.stop_grace,
            drain_delay: args.drain_delay,
            drain_timeout: args.job_drain_timeout,
            default_memory: 1 << 30,
            api_addr: args.api_addr,
            key: String::new(),
            job_logs: data.join("job-logs"),
            controller_url: args.controller_url.clone().filter(|u| !u.trim().is_empty()),
        })
    }
}

/// The host id kept in the data directory, generated on first use.
fn host_id(data: &Path) -> anyhow::Result<String> {
    let path = data.join("host-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        if !id.trim().is_empty() {
            return Ok(id.trim().to_owned());
        }
    }
    let id = format!("host-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    std::fs::write(&path, format!("{id}\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

/// What the agent's job tasks share.
pub(crate) struct Ctx {
    pub db: Db,
    pub engine: Engine,
    pub config: AgentConfig,
    /// The current lease of the host (a new one after the store lost the old one).
    pub lease: watch::Receiver<LeaseId>,
    /// The finished jobs' output.
    pub tails: tails::Tails,
    /// Images being rebuilt from their slugs.
    pub slugs: slugs::Slugs,
}

/// A running job task.
struct Task {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

/// Runs the agent until the process ends: waits for the Docker Engine (logging while it is
/// missing), registers the host, then runs its jobs.
pub async fn run(db: Db, config: AgentConfig) {
    let engine = match Engine::connect(&config.docker_socket) {
        Ok(engine) => engine,
        Err(e) => {
            tracing::error!(error = %e, "the host agent cannot run");
            return;
        }
    };
    let mut warned = false;
    let info = loop {
        match engine.info().await {
            Ok(info) => break info,
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "the host agent waits for the Docker Engine");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let api_listener = match api::bind(config.api_addr, config.external_ip)
        .and_then(tokio::net::TcpListener::from_std)
    {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, addr = ?config.api_addr, "the host agent cannot listen for its API");
            return;
        }
    };
    let api_addr = match api_listener.local_addr() {
        Ok(bound) => api::advertised(bound, config.external_ip),
        Err(e) => {
            tracing::error!(error = %e, "the host agent's API has no address");
            return;
        }
    };
    let host = Host {
        id: config.id.clone(),
        external_ip: config.external_ip,
        api: api_addr,
        tags: config.tags.clone(),
        capacity: HostCapacity {
            memory: info.memory,
            cpus: info.cpus,
        },
        docker_version: info.version.clone(),
        registered_at: db::now(),
    };
    let lease = loop {
        match register(&db, &host, config.lease_ttl).await {
            Ok(lease) => break lease,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register the host; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let (lease_tx, lease_rx) = watch::channel(lease);
    tokio::spawn(keep_alive(
        db.clone(),
        host.clone(),
        config.lease_ttl,
        lease_tx,
    ));
    log_up(&config, &info);
    let key = config.key.clone();
    let tails = tails::Tails::new(config.job_logs.clone());
    let ctx = Arc::new(Ctx {
        db,
        engine,
        config,
        lease: lease_rx,
        tails,
        slugs: slugs::Slugs::default(),
    });
    tokio::spawn(api::serve(ctx.clone(), api_listener, key));
    let mut tasks = HashMap::new();
    while let Err(e) = adopt(&ctx, &mut tasks).await {
        tracing::warn!(error = %e, "cannot reconcile with the engine's containers; retrying");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut changes = changes(&ctx.db, ctx.db.host_jobs(&ctx.config.id));
    loop {
        if let Err(e) = reconcile(&ctx, &mut tasks).await {
            tracing::warn!(error = %e, "the host agent cannot read its jobs");
        }
        tokio::select! {
            _ = changes.recv() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        // A burst of changes is one reconcile.
        while changes.try_recv().is_ok() {}
    }
}

fn log_up(config: &AgentConfig, info: &EngineInfo) {
    tracing::info!(host = %config.id, external_ip = %config.external_ip,
        docker = %info.version, "host agent up");
}

/// Writes the host's key under a new lease.
async fn register(db: &Db, host: &Host, ttl: Duration) -> ApiResult<LeaseId> {
    let lease = db.store.grant_lease(ttl).await?;
    db.put(&db.host(&host.id), host, Some(lease)).await?;
    Ok(lease)
}

/// Keeps the host's lease alive; when the store lost it, registers again under a new one (the
/// job tasks then register their instances again).
async fn keep_alive(db: Db, host: Host, ttl: Duration, lease: watch::Sender<LeaseId>) {
    let every = ttl / 3;
    loop {
        tokio::time::sleep(every).await;
        let current = *lease.borrow();
        match db.store.keep_alive(current).await {
            Ok(()) => {}
            Err(StoreError::LeaseNotFound(_)) => {
                tracing::warn!(host = %host.id, "the host's lease expired; registering again");
                match register(&db, &host, ttl).await {
                    Ok(new) => {
                        let _ = lease.send(new);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot register the host again"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot keep the host's lease alive"),
        }
    }
}

/// Starts: adopts each running container whose job is still wanted and was started, removes
/// every other container carrying this host's label.
async fn adopt(ctx: &Arc<Ctx>, tasks: &mut HashMap<String, Task>) -> anyhow::Result<()> {
    let containers = ctx.engine.find(LABEL_HOST, &ctx.config.id).await?;
    let jobs: HashMap<String, Job> = ctx
        .db
        .list::<Job>(&ctx.db.host_jobs(&ctx.config.id))
        .await?
        .into_iter()
        .map(|j| (j.value.id.clone(), j.value))
        .collect();
    for container in containers {
        let wanted = container
            .labels
            .get(LABEL_JOB)
            .and_then(|id| jobs.get(id))
            .filter(|job| {
                container.running
                    && !job.stop
                    && matches!(job.state, JobState::Starting | JobState::Up)
                    && job.container_id.as_deref() == Some(container.id.as_str())
                    && !tasks.contains_key(&job.id)
            });
        match wanted {
            Some(job) => {
                tracing::info!(job = %job.id, container = %container.id, "adopting a running job");
                let start = job::Start::Adopt(container.id.clone());
                tasks.insert(job.id.clone(), spawn(ctx, job.clone(), start));
            }
            None => {
                tracing::info!(container = %container.id, "removing a container no job wants");
                ctx.engine.remove(&container.id).await;
            }
        }
    }
    Ok(())
}

/// One pass over this host's jobs.
async fn reconcile(ctx: &Arc<Ctx>, tasks: &mut HashMap<String, Task>) -> ApiResult<()> {
    tasks.retain(|_, task| !task.handle.is_finished());
    let listed = jobs_of(ctx).await?;
    let mut seen = HashSet::new();
    for job in listed {
        seen.insert(job.id.clone());
        if let Some(task) = tasks.get(&job.id) {
            if job.stop {
                task.stop.send_replace(true);
            }
            continue;
        }
        let key = ctx.db.job(&ctx.config.id, &job.id);
        if job.stop {
            // Nothing runs it here (any container of it was removed at start).
            jobs::delete_if(&ctx.db, &key, |j| j.stop).await?;
            continue;
        }
        match job.state {
            JobState::Pending => {
                tasks.insert(job.id.clone(), spawn(ctx, job, job::Start::New));
            }
            JobState::Starting | JobState::Up | JobState::Stopping => {
                // Its task is gone without saying how it ended: the container went with the
                // agent's previous life.
                jobs::update(&ctx.db, &key, |j| {
                    if j.state.is_active() || j.state == JobState::Stopping {
                        j.state = JobState::Crashed;
                        j.error = Some("the host agent lost its container".to_owned());
                        j.ended_at_ms = Some(db::now_ms());
                    }
                })
                .await?;
            }
            // Its task wrote it down and ended before deleting it: delete it now.
            JobState::Down => {
                jobs::delete_if(&ctx.db, &key, |j| j.state == JobState::Down).await?;
            }
            // Crashed: the scheduler forgets it. Blocked: never on a host.
            JobState::Crashed | JobState::Blocked => {}
        }
    }
    for (id, task) in tasks.iter() {
        if !seen.contains(id) {
            // Its job was deleted: stop it.
            task.stop.send_replace(true);
        }
    }
    Ok(())
}

async fn jobs_of(ctx: &Ctx) -> ApiResult<Vec<Job>> {
    Ok(ctx
        .db
        .list::<Job>(&ctx.db.host_jobs(&ctx.config.id))
        .await?
        .into_iter()
        .map(|j| j.value)
        .collect())
}

fn spawn(ctx: &Arc<Ctx>, job: Job, start: job::Start) -> Task {
    let (stop, stopped) = watch::channel(false);
    let handle = tokio::spawn(job::run(ctx.clone(), job, start, stopped));
    Task { stop, handle }
}

/// A signal for every change under `prefix` (coalesced: a full channel already says "changed").
pub(crate) fn changes(db: &Db, prefix: String) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    let (events_tx, mut events) = mpsc::channel(64);
    flynn_store::mirror::spawn(
        db.store.clone(),
        prefix,
        events_tx,
        flynn_store::mirror::Options::default(),
    );
    tokio::spawn(async move {
        while events.recv().await.is_some() {
            match tx.try_send(()) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {}
                Err(mpsc::error::TrySendError::Closed(())) => return,
            }
        }
    });
    rx
}
