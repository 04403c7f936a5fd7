//! Jobs: the processes the scheduler placed on hosts (`<prefix>/jobs/<host>/<job>`), read by the
//! API, written by the scheduler and the host agents through [`update`]; and the jobs no host
//! matches (`<prefix>/blocked/<job>`, state `blocked`), written by the scheduler.
//!
//! Every change of a job's state is also an event (`object_type` `job`, the job as data, like
//! Flynn's job events), on the controller's `/events`: [`update`] records it, and so do the
//! scheduler (a new job: pending or blocked) and the host agent (a stopped job: down, before
//! its record goes).

use axum::extract::{Path, State};
use axum::Json;

use super::apps;
use super::db::{self, Db, Versioned};
use super::error::{ApiError, ApiResult};
use super::types::Job;
use super::ApiState;

/// Every job of every host.
pub async fn all(db: &Db) -> ApiResult<Vec<Versioned<Job>>> {
    db.list::<Job>(&db.jobs()).await
}

/// Where the blocked jobs are (no host matches them).
pub fn blocked_prefix(db: &Db) -> String {
    format!("{}/blocked/", db.keys.prefix())
}

/// The key of a blocked job.
pub fn blocked_key(db: &Db, job_id: &str) -> String {
    format!("{}{job_id}", blocked_prefix(db))
}

/// Every blocked job.
pub async fn blocked(db: &Db) -> ApiResult<Vec<Versioned<Job>>> {
    db.list::<Job>(&blocked_prefix(db)).await
}

/// Records the job as it is now as an event (`job`). The change itself has happened, so a
/// failure here is logged, not returned.
pub async fn record(db: &Db, job: &Job) {
    super::deployments::record(db, &job.app_id, "job", &job.id, job).await;
}

/// `GET /apps/{app}/jobs`: the app's jobs, oldest first.
pub async fn list(
    State(state): State<ApiState>,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<Job>>> {
    let app = apps::find(&state, &app).await?.value;
    // The formations' jobs, those no host matches, and the one-off jobs (`flynn run`).
    let mut jobs: Vec<Job> = all(&state.db)
        .await?
        .into_iter()
        .chain(blocked(&state.db).await?)
        .chain(super::runs::all(&state.db).await?)
        .map(|j| j.value)
        .filter(|j| j.app_id == app.id)
        .collect();
    jobs.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
    Ok(Json(jobs))
}

/// Changes the job at `key` with `change`, compare-and-swap, retrying on a concurrent write;
/// the new job, or None when there is no job at `key` (any more). A new state is recorded as
/// an event.
pub async fn update(db: &Db, key: &str, change: impl Fn(&mut Job)) -> ApiResult<Option<Job>> {
    for _ in 0..100 {
        let Some(current) = db.get::<Job>(key).await? else {
            return Ok(None);
        };
        let mut next = current.value.clone();
        change(&mut next);
        if next == current.value {
            return Ok(Some(next));
        }
        next.updated_at = db::now();
        if db
            .swap(key, current.mod_revision, &next, None)
            .await?
            .is_some()
        {
            if next.state != current.value.state {
                record(db, &next).await;
            }
            return Ok(Some(next));
        }
    }
    Err(ApiError::conflict(format!("job {key} keeps changing")))
}

/// Deletes the job at `key` if it still is as `check` wants; whether it did.
pub async fn delete_if(db: &Db, key: &str, check: impl Fn(&Job) -> bool) -> ApiResult<bool> {
    for _ in 0..100 {
        let Some(current) = db.get::<Job>(key).await? else {
            return Ok(false);
        };
        if !check(&current.value) {
            return Ok(false);
        }
        if db.delete_if(key, current.mod_revision).await? {
            return Ok(true);
        }
    }
    Err(ApiError::conflict(format!("job {key} keeps changing")))
}
