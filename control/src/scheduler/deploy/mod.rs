//! The deployer: runs the deployments the API stored, on the scheduler's leader, by moving
//! counts between the old release's formation and the new one's (the reconcile pass then
//! starts and stops the jobs):
//!
//! - `all-at-once`: the new formation gets every count; once all its jobs are up and served by
//!   every live router, the old formation goes to zero.
//! - `one-by-one`: per process type, one new job; once it is up and served, one old job less;
//!   and so on.
//!
//! A new job is up once its state is `up` and every router registered under
//! `<prefix>/routers/` serves it (backend-up, asked through [`routers`]). An old job is stopped
//! by its host agent, which deregisters it and waits until every router has drained it
//! (backend-drained) before SIGTERM. A new job that crashes, or is not up within the app's
//! deploy timeout, fails the deployment: the old formation gets its counts back, the new
//! one goes, and the old release keeps serving.
//!
//! Each step reads the formations as they are, so a new leader can take over a deployment
//! that its predecessor was running.

pub mod routers;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::api::db::Db;
use crate::api::deployments::{self, push_event, scale_text};
use crate::api::types::{Deployment, DeploymentStatus, Formation, Job, JobState};
use crate::api::{jobs, ApiResult};

/// How often a waiting deployment looks at the jobs and the routers.
const POLL: Duration = Duration::from_millis(100);
/// How long old jobs may take to stop (drained, SIGTERM, grace) before the deployment stops
/// waiting for them (they still stop).
const STOP_WAIT: Duration = Duration::from_secs(60);

/// The deployments this leader runs, one task each; dropped (leadership lost): all aborted.
#[derive(Default)]
pub struct Deployer {
    tasks: HashMap<String, JoinHandle<()>>,
}

impl Drop for Deployer {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

impl Deployer {
    /// Starts a task for each deployment in progress that has none.
    pub async fn start(&mut self, db: &Db) -> ApiResult<()> {
        self.tasks.retain(|_, task| !task.is_finished());
        let prefix = format!("{}/deploying/", db.keys.prefix());
        for lock in db.list::<String>(&prefix).await? {
            let id = lock.value;
            if self.tasks.contains_key(&id) {
                continue;
            }
            let Some(deployment) = db.get::<Deployment>(&db.deployment(&id)).await? else {
                continue;
            };
            if deployment.value.status.is_done() {
                continue;
            }
            tracing::info!(deployment = %id, app = %deployment.value.app_name, "running a deployment");
            let task = tokio::spawn(run(db.clone(), deployment.value));
            self.tasks.insert(id, task);
        }
        Ok(())
    }
}

/// Runs one deployment to its end.
async fn run(db: Db, deployment: Deployment) {
    let mut run = Run {
        db,
        d: deployment,
        reported: BTreeSet::new(),
    };
    let started = Instant::now();
    if run.d.status == DeploymentStatus::Pending {
        run.d.status = DeploymentStatus::Running;
    }
    run.event("running", None, None, None, "deploy started".to_owned())
        .await;
    let result = match run.d.strategy.as_str() {
        "one-by-one" => run.one_by_one().await,
        _ => run.all_at_once().await,
    };
    match result {
        Ok(()) => run.complete(started).await,
        Err(why) => run.fail(why).await,
    }
}

struct Run {
    db: Db,
    d: Deployment,
    /// (job id, state) already told as an event.
    reported: BTreeSet<(String, &'static str)>,
}

impl Run {
    fn new_release(&self) -> String {
        self.d.new_release_id.clone()
    }

    fn old_release(&self) -> Option<String> {
        self.d.old_release_id.clone()
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.d.deploy_timeout.max(1))
    }

    async fn save(&self) {
        for attempt in 0..10 {
            match self
                .db
                .put(&self.db.deployment(&self.d.id), &self.d, None)
                .await
            {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(deployment = %self.d.id, error = %e, attempt, "cannot save a deployment");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn event(
        &mut self,
        status: &str,
        release: Option<&str>,
        job_type: Option<&str>,
        job_id: Option<&str>,
        message: String,
    ) {
        tracing::info!(deployment = %self.d.id, app = %self.d.app_name, status, %message, "deploy");
        push_event(&mut self.d, status, release, job_type, job_id, message);
        self.save().await;
    }

    /// The current counts of a release's formation.
    async fn counts(&self, release: &str) -> ApiResult<BTreeMap<String, i64>> {
        Ok(self
            .db
            .get::<Formation>(&self.db.formation(&self.d.app_id, release))
            .await?
            .map(|f| f.value.processes)
            .unwrap_or_default())
    }

    async fn scale(&self, release: &str, counts: &BTreeMap<String, i64>) -> Result<(), String> {
        deployments::put_formation(&self.db, &self.d, release, counts)
            .await
            .map_err(|e| format!("cannot scale release {release}: {e}"))
    }

    async fn all_at_once(&mut self) -> Result<(), String> {
        let new = self.new_release();
        let target = self.d.processes.clone();
        self.scale(&new, &target).await?;
        self.event(
            "scale",
            Some(&new),
            None,
            None,
            format!("new release to {}", scale_text(&target)),
        )
        .await;
        let deadline = Instant::now() + self.timeout();
        for (job_type, count) in &target {
            self.wait_up(&new, job_type, *count, deadline, true).await?;
        }
        if let Some(old) = self.old_release() {
            let zero: BTreeMap<String, i64> = self
                .d
                .old_processes
                .keys()
                .map(|t| (t.clone(), 0))
                .collect();
            self.scale(&old, &zero).await?;
            self.event(
                "scale",
                Some(&old),
                None,
                None,
                "old release to zero".to_owned(),
            )
            .await;
            let deadline = Instant::now() + STOP_WAIT;
            for job_type in zero.keys() {
                self.wait_down(&old, job_type, 0, deadline).await;
            }
        }
        Ok(())
    }

    async fn one_by_one(&mut self) -> Result<(), String> {
        let new = self.new_release();
        let old = self.old_release();
        let mut new_counts = self.counts(&new).await.map_err(|e| e.to_string())?;
        let mut old_counts = match &old {
            Some(old) => self.counts(old).await.map_err(|e| e.to_string())?,
            None => BTreeMap::new(),
        };
        let target = self.d.processes.clone();
        for (job_type, want) in &target {
            loop {
                let have = new_counts.get(job_type).copied().unwrap_or(0);
                if have >= *want {
                    break;
                }
                new_counts.insert(job_type.clone(), have + 1);
                self.scale(&new, &new_counts).await?;
                let deadline = Instant::now() + self.timeout();
                self.wait_up(&new, job_type, have + 1, deadline, true)
                    .await?;
                if let Some(old) = &old {
                    let left = want - (have + 1);
                    if old_counts.get(job_type).copied().unwrap_or(0) > left {
                        old_counts.insert(job_type.clone(), left);
                        self.scale(old, &old_counts).await?;
                        let deadline = Instant::now() + STOP_WAIT;
                        self.wait_down(old, job_type, left, deadline).await;
                    }
                }
            }
        }
        // Old types the new release lacks, and anything left over.
        if let Some(old) = &old {
            let left: Vec<String> = old_counts
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(t, _)| t.clone())
                .collect();
            if !left.is_empty() {
                for job_type in &left {
                    old_counts.insert(job_type.clone(), 0);
                }
                self.scale(old, &old_counts).await?;
                let deadline = Instant::now() + STOP_WAIT;
                for job_type in &left {
                    self.wait_down(old, job_type, 0, deadline).await;
                }
            }
        }
        Ok(())
    }

    /// The app's jobs now.
    async fn jobs(&self) -> Result<Vec<Job>, String> {
        Ok(jobs::all(&self.db)
            .await
            .map_err(|e| format!("cannot read the jobs: {e}"))?
            .into_iter()
            .map(|j| j.value)
            .filter(|j| j.app_id == self.d.app_id)
            .collect())
    }

    /// Waits until `release` has `count` jobs of `job_type` up and served by every live
    /// router. With `strict`, a crash of one of them (or of one it replaced) fails at once.
    async fn wait_up(
        &mut self,
        release: &str,
        job_type: &str,
        count: i64,
        deadline: Instant,
        strict: bool,
    ) -> Result<(), String> {
        let service = format!("{}-{job_type}", self.d.app_name);
        loop {
            let jobs = match self.jobs().await {
                Ok(jobs) => jobs,
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(error = %e, "deploy: retrying");
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let of_type: Vec<&Job> = jobs
                .iter()
                .filter(|j| j.release_id == release && j.process_type == job_type && !j.stop)
                .collect();
            if strict {
                if let Some(crashed) = of_type
                    .iter()
                    .find(|j| j.state == JobState::Crashed || j.restarts > 0)
                {
                    let why = match (&crashed.error, crashed.exit_status) {
                        (Some(error), _) => error.clone(),
                        (None, Some(status)) => format!("exit status {status}"),
                        (None, None) if crashed.state == JobState::Crashed => "it ended".to_owned(),
                        (None, None) => "it was restarted after a crash".to_owned(),
                    };
                    let (id, job_type) = (crashed.id.clone(), crashed.process_type.clone());
                    self.event(
                        "crashed",
                        Some(release),
                        Some(&job_type),
                        Some(&id),
                        why.clone(),
                    )
                    .await;
                    return Err(format!("{job_type} job {id} crashed: {why}"));
                }
            }
            let up: Vec<&Job> = of_type
                .iter()
                .copied()
                .filter(|j| j.state == JobState::Up)
                .collect();
            let views = if up.iter().any(|j| j.addr.is_some()) {
                routers::ask_all(&self.db, &service).await.ok()
            } else {
                Some(Vec::new())
            };
            let mut ready = Vec::new();
            let mut waiting_on = BTreeSet::new();
            for job in &up {
                let routed = match (&job.addr, &views) {
                    (None, _) => true,
                    (Some(_), Some(views)) => {
                        for (router, view) in views {
                            if !view.as_ref().is_some_and(|v| v.serves.contains(&job.id)) {
                                waiting_on.insert(router.id.clone());
                            }
                        }
                        routers::all_serve(views, &job.id)
                    }
                    (Some(_), None) => false,
                };
                if routed {
                    ready.push((job.id.clone(), job.process_type.clone()));
                }
            }
            for (id, job_type) in &ready {
                if self.reported.insert((id.clone(), "up")) {
                    self.event(
                        "up",
                        Some(release),
                        Some(job_type),
                        Some(id),
                        format!("{job_type} job {id} up and served by every router"),
                    )
                    .await;
                }
            }
            if ready.len() as i64 >= count {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut why = format!(
                    "{job_type}: {} of {count} new jobs up and served by every router within {}s",
                    ready.len(),
                    self.d.deploy_timeout
                );
                if !waiting_on.is_empty() {
                    let routers: Vec<String> = waiting_on.into_iter().collect();
                    why.push_str(&format!(" (not yet served by {})", routers.join(", ")));
                }
                return Err(why);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `release` has at most `count` jobs of `job_type` left (a stopped job's
    /// record goes once its host agent has drained, stopped and removed it).
    async fn wait_down(&mut self, release: &str, job_type: &str, count: i64, deadline: Instant) {
        let mut before: Option<BTreeSet<String>> = None;
        loop {
            let Ok(jobs) = self.jobs().await else {
                tokio::time::sleep(POLL).await;
                continue;
            };
            let left: BTreeSet<String> = jobs
                .iter()
                .filter(|j| j.release_id == release && j.process_type == job_type)
                .filter(|j| !matches!(j.state, JobState::Crashed | JobState::Down))
                .map(|j| j.id.clone())
                .collect();
            for gone in before.iter().flatten().filter(|id| !left.contains(*id)) {
                if self.reported.insert((gone.clone(), "down")) {
                    let gone = gone.clone();
                    self.event(
                        "down",
                        Some(release),
                        Some(job_type),
                        Some(&gone),
                        format!("{job_type} job {gone} drained and stopped"),
                    )
                    .await;
                }
            }
            if left.len() as i64 <= count {
                return;
            }
            if Instant::now() >= deadline {
                self.event(
                    "warning",
                    Some(release),
                    Some(job_type),
                    None,
                    format!(
                        "{} old {job_type} jobs still stopping after {}s; going on",
                        left.len() as i64 - count,
                        STOP_WAIT.as_secs()
                    ),
                )
                .await;
                return;
            }
            before = Some(left);
            tokio::time::sleep(POLL).await;
        }
    }

    async fn complete(mut self, started: Instant) {
        let new = self.new_release();
        if let Err(e) = deployments::set_app_release(&self.db, &self.d.app_id, &new).await {
            // The new release runs and the old one is gone: say so, but it is deployed.
            tracing::error!(deployment = %self.d.id, error = %e, "cannot set the app's release");
        }
        if let Some(old) = self.old_release() {
            let _ = self
                .db
                .delete(&self.db.formation(&self.d.app_id, &old))
                .await;
        }
        deployments::record(
            &self.db,
            &self.d.app_id,
            "app_release",
            &new,
            serde_json::json!({ "release_id": &new, "prev_release_id": self.d.old_release_id }),
        )
        .await;
        self.d.status = DeploymentStatus::Complete;
        self.d.finished_at = Some(crate::api::db::now());
        let took = started.elapsed().as_secs_f64();
        self.event(
            "complete",
            Some(&new),
            None,
            None,
            format!("deployed in {took:.3}s"),
        )
        .await;
        self.end().await;
    }

    /// Puts the old release back as it was and removes the new one's jobs.
    async fn fail(mut self, why: String) {
        self.event(
            "rollback",
            self.d.old_release_id.clone().as_deref(),
            None,
            None,
            format!("rolling back: {why}"),
        )
        .await;
        let new = self.new_release();
        if let Some(old) = self.old_release() {
            let counts = self.d.old_processes.clone();
            if let Err(e) = self.scale(&old, &counts).await {
                tracing::error!(error = %e, "cannot restore the old formation");
            }
            let deadline = Instant::now() + self.timeout();
            for (job_type, count) in &counts {
                if let Err(e) = self.wait_up(&old, job_type, *count, deadline, false).await {
                    self.event(
                        "warning",
                        Some(&old),
                        Some(job_type),
                        None,
                        format!("old release not back to its scale: {e}"),
                    )
                    .await;
                }
            }
        }
        let _ = self
            .db
            .delete(&self.db.formation(&self.d.app_id, &new))
            .await;
        let deadline = Instant::now() + STOP_WAIT;
        for job_type in self.d.processes.clone().keys() {
            self.wait_down(&new, job_type, 0, deadline).await;
        }
        self.d.status = DeploymentStatus::Failed;
        self.d.error = Some(why.clone());
        self.d.finished_at = Some(crate::api::db::now());
        self.event(
            "failed",
            Some(&new),
            None,
            None,
            format!("deploy failed, the old release serves: {why}"),
        )
        .await;
        self.end().await;
    }

    /// Frees the app for the next deployment.
    async fn end(&self) {
        let lock = self.db.deploying(&self.d.app_id);
        if let Ok(Some(holder)) = self.db.get::<String>(&lock).await {
            if holder.value == self.d.id {
                let _ = self.db.delete_if(&lock, holder.mod_revision).await;
            }
        }
        deployments::record(&self.db, &self.d.app_id, "deployment", &self.d.id, &self.d).await;
    }
}
