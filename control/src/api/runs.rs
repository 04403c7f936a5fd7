//! One-off jobs (`flynn run`, at `<prefix>/runs/<host>/<job>`, written by the host agent that
//! runs them), the hosts (where the CLI finds an agent's API), and `flynn kill`.

use axum::extract::{Path, State};
use axum::Json;

use super::apps;
use super::db::{Db, Versioned};
use super::error::{ApiError, ApiResult};
use super::jobs;
use super::types::{Host, Job};
use super::ApiState;

/// The one-off jobs of every host.
pub async fn all(db: &Db) -> ApiResult<Vec<Versioned<Job>>> {
    db.list::<Job>(&db.runs()).await
}

/// `GET /hosts`: the live host agents (their records go with their leases).
pub async fn hosts(State(state): State<ApiState>) -> ApiResult<Json<Vec<Host>>> {
    let hosts = state.db.list::<Host>(&state.db.hosts()).await?;
    Ok(Json(hosts.into_iter().map(|h| h.value).collect()))
}

/// Where a job's record is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Formation,
    OneOff,
    Blocked,
}

/// A job of the app (a formation's, a one-off or a blocked one), with its key and kind.
async fn find(state: &ApiState, app: &str, job: &str) -> ApiResult<(String, Kind, Job)> {
    let app = apps::find(state, app).await?.value;
    let formation = jobs::all(&state.db)
        .await?
        .into_iter()
        .map(|j| (Kind::Formation, j));
    let one_off = all(&state.db).await?.into_iter().map(|j| (Kind::OneOff, j));
    let blocked = jobs::blocked(&state.db)
        .await?
        .into_iter()
        .map(|j| (Kind::Blocked, j));
    formation
        .chain(one_off)
        .chain(blocked)
        .find(|(_, j)| j.value.id == job && j.value.app_id == app.id)
        .map(|(kind, j)| {
            let key = match kind {
                Kind::OneOff => state.db.run(&j.value.host_id, &j.value.id),
                Kind::Formation => state.db.job(&j.value.host_id, &j.value.id),
                Kind::Blocked => jobs::blocked_key(&state.db, &j.value.id),
            };
            (key, kind, j.value)
        })
        .ok_or_else(|| ApiError::not_found(format!("app {} has no job {job:?}", app.name)))
}

/// `GET /apps/{app}/jobs/{job}`.
pub async fn get(
    State(state): State<ApiState>,
    Path((app, job)): Path<(String, String)>,
) -> ApiResult<Json<Job>> {
    Ok(Json(find(&state, &app, &job).await?.2))
}

/// `DELETE /apps/{app}/jobs/{job}`: `flynn kill`. The job is marked `stop`: its host agent
/// deregisters and stops it, and the scheduler puts a new job in its place when its formation
/// still wants one (a one-off job is not replaced). The job as marked. A blocked job's record
/// is deleted (the scheduler blocks a new one while its formation still wants it).
pub async fn kill(
    State(state): State<ApiState>,
    Path((app, job)): Path<(String, String)>,
) -> ApiResult<Json<Job>> {
    let (key, kind, found) = find(&state, &app, &job).await?;
    if kind == Kind::Blocked {
        jobs::delete_if(&state.db, &key, |_| true).await?;
        let mut killed = found;
        killed.stop = true;
        return Ok(Json(killed));
    }
    match jobs::update(&state.db, &key, |j| j.stop = true).await? {
        Some(job) => Ok(Json(job)),
        None => Err(ApiError::not_found(format!("job {job:?} has ended"))),
    }
}
