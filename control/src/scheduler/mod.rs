//! The scheduler: turns formations into jobs on hosts. Several may run (one per controller);
//! the one holding `<prefix>/scheduler/leader` (created on its lease) acts, the others wait for
//! that key to go. The leader plans ([`reconcile`]) whenever formations, jobs or hosts change,
//! every few seconds, and when a restart back-off ends, and applies the plan with
//! compare-and-swap writes, so a stale plan cannot undo a newer change. The leader also runs the
//! deployments in progress ([`deploy`]).

pub mod deploy;
pub mod placement;
pub mod reconcile;

use std::collections::HashMap;
use std::time::Duration;

use flynn_store::{LeaseId, StoreError};

use self::reconcile::{Plan, State};
use crate::api::db::{self, Db};
use crate::api::types::{App, Formation, Host, Job, JobState, Release};
use crate::api::{jobs, ApiResult};

/// The leader's lease by default: a follower acts within about this long (plus the store's
/// expiry check, half a second on etcd) of the leader's death; the target is 5 s.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(3);

/// How a scheduler runs.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// This scheduler's id (in the leader key).
    pub id: String,
    /// The leader's lease: a follower takes over within about this long of the leader's death.
    pub lease_ttl: Duration,
    /// A full pass at least this often, changes or not.
    pub resync: Duration,
}

impl SchedulerConfig {
    pub fn new(id: impl Into<String>) -> SchedulerConfig {
        SchedulerConfig {
            id: id.into(),
            lease_ttl: DEFAULT_LEASE_TTL,
            resync: Duration::from_secs(5),
        }
    }
}

/// Runs for the life of the process: waits to lead, then leads until its lease is lost. A
/// follower tries again as soon as the leader key changes (watched; it goes when the leader's
/// lease expires), and every second anyway.
pub async fn run(db: Db, config: SchedulerConfig) {
    let mut leader_changes = crate::host::changes(&db, db.scheduler_leader());
    loop {
        // A change from now on wakes the wait below.
        while leader_changes.try_recv().is_ok() {}
        match try_lead(&db, &config).await {
            Ok(Some(lease)) => {
                tracing::info!(scheduler = %config.id, "leading the scheduler");
                lead(&db, &config, lease).await;
                tracing::warn!(scheduler = %config.id, "no longer leading the scheduler");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "scheduler election failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        let changed = tokio::time::timeout(Duration::from_secs(1), leader_changes.recv()).await;
        if let Ok(None) = changed {
            // The watch is gone (never, in practice): poll.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Becomes the leader if there is none; its lease.
async fn try_lead(db: &Db, config: &SchedulerConfig) -> ApiResult<Option<LeaseId>> {
    let key = db.scheduler_leader();
    if db.store.get(&key).await?.is_some() {
        return Ok(None);
    }
    let lease = db.store.grant_lease(config.lease_ttl).await?;
    if db.create(&key, &config.id, Some(lease)).await? {
        return Ok(Some(lease));
    }
    let _ = db.store.revoke_lease(lease).await;
    Ok(None)
}

/// Plans and applies until the lease is lost.
async fn lead(db: &Db, config: &SchedulerConfig, lease: LeaseId) {
    let mut changes = [
        crate::host::changes(db, db.all_formations()),
        crate::host::changes(db, db.jobs()),
        crate::host::changes(db, db.hosts()),
        crate::host::changes(db, format!("{}/deploying/", db.keys.prefix())),
        crate::host::changes(db, jobs::blocked_prefix(db)),
    ];
    // Aborts the deployments it runs when leadership ends (a new leader takes them over).
    let mut deployer = deploy::Deployer::default();
    // The lease is kept on its own task, so that a slow pass (a store that retries through an
    // election) cannot let it lapse; the task ends when the store has lost it.
    let mut lease_lost = Renewal(tokio::spawn(keep_alive(
        db.clone(),
        lease,
        config.lease_ttl,
    )));
    let mut wake_at: Option<u64> = None;
    let mut blocked_before = Vec::new();
    let mut releases = HashMap::new();
    loop {
        let passed = tokio::select! {
            _ = &mut lease_lost.0 => return,
            passed = pass(db, &mut releases) => passed,
        };
        match passed {
            Ok(plan) => {
                wake_at = plan.wake_at;
                if plan.blocked != blocked_before {
                    for (app, release, process_type, missing) in &plan.blocked {
                        tracing::warn!(%app, %release, %process_type, missing,
                            "no host for jobs: blocked until a host comes");
                    }
                    blocked_before = plan.blocked;
                }
            }
            Err(e) => tracing::warn!(error = %e, "scheduler pass failed"),
        }
        if let Err(e) = deployer.start(db).await {
            tracing::warn!(error = %e, "cannot start the deployments");
        }
        let until_wake = wake_at.map_or(config.resync, |at| {
            Duration::from_millis(at.saturating_sub(db::now_ms())).min(config.resync)
        });
        let [formations, jobs, hosts, deploying, blocked] = &mut changes;
        tokio::select! {
            _ = formations.recv() => {}
            _ = jobs.recv() => {}
            _ = hosts.recv() => {}
            _ = deploying.recv() => {}
            _ = blocked.recv() => {}
            () = tokio::time::sleep(until_wake) => {}
            _ = &mut lease_lost.0 => return,
        }
        // Let a burst of changes settle into one pass.
        tokio::time::sleep(Duration::from_millis(10)).await;
        for rx in changes.iter_mut() {
            while rx.try_recv().is_ok() {}
        }
    }
}

/// The task keeping the leader's lease alive, aborted with the leadership.
struct Renewal(tokio::task::JoinHandle<()>);

impl Drop for Renewal {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps `lease` alive every third of `ttl`; returns when the store no longer has it.
async fn keep_alive(db: Db, lease: LeaseId, ttl: Duration) {
    let mut every = tokio::time::interval(ttl / 3);
    loop {
        every.tick().await;
        match db.store.keep_alive(lease).await {
            Ok(()) => {}
            Err(StoreError::LeaseNotFound(_)) => return,
            Err(e) => tracing::warn!(error = %e, "cannot keep the scheduler's lease"),
        }
    }
}

/// Reads everything, plans, applies. `releases` keeps the releases read before (they never
/// change once created).
async fn pass(db: &Db, releases: &mut HashMap<String, Release>) -> ApiResult<Plan> {
    let formations: Vec<Formation> = values(db.list(&db.all_formations()).await?);
    let apps: HashMap<String, App> = values::<App>(db.list(&db.apps()).await?)
        .into_iter()
        .map(|a| (a.id.clone(), a))
        .collect();
    let mut jobs: Vec<Job> = values(jobs::all(db).await?);
    jobs.extend(values(jobs::blocked(db).await?));
    let hosts: Vec<Host> = values(db.list(&db.hosts()).await?);
    releases.retain(|id, _| formations.iter().any(|f| &f.release == id));
    for formation in &formations {
        if !releases.contains_key(&formation.release) {
            if let Some(release) = db.get::<Release>(&db.release(&formation.release)).await? {
                releases.insert(formation.release.clone(), release.value);
            }
        }
    }
    let now = db::now();
    let plan = reconcile::plan(
        &State {
            formations: &formations,
            apps: &apps,
            releases,
            jobs: &jobs,
            hosts: &hosts,
            now_ms: db::now_ms(),
        },
        &mut || uuid::Uuid::new_v4().to_string(),
        &now,
    );
    apply(db, &plan).await?;
    Ok(plan)
}

fn values<T>(listed: Vec<db::Versioned<T>>) -> Vec<T> {
    listed.into_iter().map(|v| v.value).collect()
}

async fn apply(db: &Db, plan: &Plan) -> ApiResult<()> {
    for (host, id) in &plan.forget {
        jobs::delete_if(db, &db.job(host, id), |_| true).await?;
    }
    for (host, id) in &plan.stop {
        jobs::update(db, &db.job(host, id), |j| j.stop = true).await?;
    }
    for job in &plan.start {
        tracing::info!(job = %job.id, app = %job.app_name, process_type = %job.process_type,
            host = %job.host_id, restarts = job.restarts, "placing a job");
        if db.create(&db.job(&job.host_id, &job.id), job, None).await? {
            jobs::record(db, job).await;
        }
    }
    // After the placed ones exist, so that a blocked job never vanishes from the listing.
    for id in &plan.unblock {
        jobs::delete_if(db, &jobs::blocked_key(db, id), |j| {
            j.state == JobState::Blocked
        })
        .await?;
    }
    for job in &plan.block {
        if db
            .create(&jobs::blocked_key(db, &job.id), job, None)
            .await?
        {
            jobs::record(db, job).await;
        }
    }
    for job in &plan.reblock {
        let error = job.error.clone();
        jobs::update(db, &jobs::blocked_key(db, &job.id), |j| {
            j.error = error.clone()
        })
        .await?;
    }
    Ok(())
}
