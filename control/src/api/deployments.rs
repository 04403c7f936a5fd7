//! Deployments: `POST /apps/{app}/deploy {"id": release}` deploys a release by the app's
//! strategy. An app with nothing running switches release at once (the deployment is created
//! complete); otherwise the deployment is stored `pending` and the scheduler's leader runs it
//! (`scheduler::deploy`), writing its events and status into it. One deployment per app at a
//! time: it holds `<prefix>/deploying/<app>` until it ends.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use super::apps;
use super::db::{self, Db};
use super::error::{ApiError, ApiResult};
use super::events;
use super::extract::Body;
use super::releases;
use super::types::{
    App, Deployment, DeploymentEvent, DeploymentStatus, Event, Formation, ReleaseRef,
};
use super::validate;
use super::ApiState;

/// Events kept per deployment at most (the newest).
const MAX_EVENTS: usize = 1000;

pub async fn create(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    Body(to): Body<ReleaseRef>,
) -> ApiResult<(StatusCode, Json<Deployment>)> {
    let app = apps::find(&state, &app).await?.value;
    let release = releases::find(&state, &to.id)
        .await
        .map_err(|_| ApiError::invalid("id", format!("release {:?} not found", to.id)))?;
    if release
        .app_id
        .as_ref()
        .is_some_and(|owner| owner != &app.id)
    {
        return Err(ApiError::invalid(
            "id",
            format!("release {} belongs to another app", release.id),
        ));
    }
    if app.release_id.as_deref() == Some(release.id.as_str()) {
        return Err(ApiError::invalid(
            "id",
            format!("release {} is already {}'s release", release.id, app.name),
        ));
    }
    let old = match &app.release_id {
        Some(old) => {
            state
                .db
                .get::<Formation>(&state.db.formation(&app.id, old))
                .await?
        }
        None => None,
    };
    let old_processes = old
        .as_ref()
        .map(|f| f.value.processes.clone())
        .unwrap_or_default();
    let processes: BTreeMap<String, i64> = release
        .processes
        .keys()
        .map(|t| (t.clone(), old_processes.get(t).copied().unwrap_or(0)))
        .collect();
    let now = db::now();
    let mut deployment = Deployment {
        id: uuid::Uuid::new_v4().to_string(),
        app_id: app.id.clone(),
        app_name: app.name.clone(),
        old_release_id: app.release_id.clone(),
        new_release_id: release.id.clone(),
        strategy: app.strategy.clone(),
        processes,
        old_processes,
        tags: old
            .as_ref()
            .map(|f| f.value.tags.clone())
            .unwrap_or_default(),
        deploy_timeout: app.deploy_timeout,
        status: DeploymentStatus::Pending,
        error: None,
        events: Vec::new(),
        created_at: now.clone(),
        finished_at: None,
    };
    let lock = state.db.deploying(&app.id);
    if !state.db.create(&lock, &deployment.id, None).await? {
        let holder = state.db.get::<String>(&lock).await?.map(|v| v.value);
        return Err(ApiError::conflict(format!(
            "a deployment of {} is in progress ({}); wait for it to end",
            app.name,
            holder.unwrap_or_default()
        )));
    }
    let running = deployment.old_processes.values().any(|n| *n > 0);
    if running {
        let message = format!(
            "deploying release {} ({}, {})",
            release.id,
            deployment.strategy,
            scale_text(&deployment.processes)
        );
        push_event(&mut deployment, "pending", None, None, None, message);
    } else {
        // Nothing runs: the release switches at once, and the (idle) formation moves to it.
        let switched = switch_now(&state.db, &app, &deployment).await;
        if let Err(e) = switched {
            state.db.delete(&lock).await?;
            return Err(e);
        }
        deployment.status = DeploymentStatus::Complete;
        deployment.finished_at = Some(db::now());
        push_event(
            &mut deployment,
            "complete",
            Some(&release.id),
            None,
            None,
            "nothing was running: release switched at once".to_owned(),
        );
    }
    let written = state
        .db
        .create(&state.db.deployment(&deployment.id), &deployment, None)
        .await;
    if !running || written.is_err() {
        state.db.delete(&lock).await?;
    }
    written?;
    events::record(
        &state,
        Some(&app.id),
        "deployment",
        &deployment.id,
        &deployment,
    )
    .await;
    if !running {
        events::record(
            &state,
            Some(&app.id),
            "app_release",
            &release.id,
            serde_json::json!({ "release": &release, "prev_release_id": app.release_id }),
        )
        .await;
    }
    Ok((StatusCode::CREATED, Json(deployment)))
}

/// The app's formation moves to the new release (its counts, for the types it has) and the
/// app's release becomes the new one.
async fn switch_now(db: &Db, app: &App, deployment: &Deployment) -> ApiResult<()> {
    if let Some(old) = &deployment.old_release_id {
        let key = db.formation(&app.id, old);
        if db.get::<Formation>(&key).await?.is_some() {
            put_formation(
                db,
                deployment,
                &deployment.new_release_id,
                &deployment.processes,
            )
            .await?;
            db.delete(&key).await?;
        }
    }
    set_app_release(db, &app.id, &deployment.new_release_id).await
}

/// Writes the formation of `release` with these counts (the deployment's tags).
pub async fn put_formation(
    db: &Db,
    deployment: &Deployment,
    release: &str,
    processes: &BTreeMap<String, i64>,
) -> ApiResult<()> {
    let key = db.formation(&deployment.app_id, release);
    let created_at = match db.get::<Formation>(&key).await? {
        Some(existing) => existing.value.created_at,
        None => db::now(),
    };
    let formation = Formation {
        app: deployment.app_id.clone(),
        release: release.to_owned(),
        processes: processes.clone(),
        tags: deployment.tags.clone(),
        created_at,
        updated_at: db::now(),
    };
    db.put(&key, &formation, None).await?;
    Ok(())
}

/// Sets the app's current release (compare-and-swap).
pub async fn set_app_release(db: &Db, app_id: &str, release: &str) -> ApiResult<()> {
    for _ in 0..100 {
        let Some(current) = db.get::<App>(&db.app(app_id)).await? else {
            return Err(ApiError::not_found(format!("app {app_id:?} not found")));
        };
        let mut next = current.value.clone();
        next.release_id = Some(release.to_owned());
        next.updated_at = db::now();
        if db
            .swap(&db.app(app_id), current.mod_revision, &next, None)
            .await?
            .is_some()
        {
            return Ok(());
        }
    }
    Err(ApiError::conflict("the app keeps changing; try again"))
}

/// Adds an event to the deployment (in memory; the caller saves it).
pub fn push_event(
    deployment: &mut Deployment,
    status: &str,
    release_id: Option<&str>,
    job_type: Option<&str>,
    job_id: Option<&str>,
    message: String,
) {
    if deployment.events.len() >= MAX_EVENTS {
        deployment.events.remove(0);
    }
    deployment.events.push(DeploymentEvent {
        created_at: db::now(),
        status: status.to_owned(),
        release_id: release_id.map(str::to_owned),
        job_type: job_type.map(str::to_owned),
        job_id: job_id.map(str::to_owned),
        message,
    });
}

/// Records a controller event (`GET /events`) from outside a request (the scheduler).
pub async fn record(db: &Db, app: &str, object_type: &str, object_id: &str, data: impl Serialize) {
    let event = Event {
        id: 0,
        app: Some(app.to_owned()),
        object_type: object_type.to_owned(),
        object_id: object_id.to_owned(),
        data: serde_json::to_value(data).unwrap_or(serde_json::Value::Null),
        created_at: db::now(),
    };
    let key = format!("{}{}", db.events(), uuid::Uuid::new_v4());
    if let Err(e) = db.put(&key, &event, None).await {
        tracing::error!(error = %e, object_type, object_id, "cannot record an event");
    }
}

/// `web=3 worker=1`.
pub fn scale_text(processes: &BTreeMap<String, i64>) -> String {
    processes
        .iter()
        .map(|(t, n)| format!("{t}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `GET /apps/{app}/deployments`: newest first.
pub async fn list_app(
    State(state): State<ApiState>,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<Deployment>>> {
    let app = apps::find(&state, &app).await?.value;
    let mut deployments: Vec<Deployment> = state
        .db
        .list::<Deployment>(&state.db.deployments())
        .await?
        .into_iter()
        .map(|v| v.value)
        .filter(|d| d.app_id == app.id)
        .collect();
    deployments.sort_by(|a, b| (&b.created_at, &b.id).cmp(&(&a.created_at, &a.id)));
    Ok(Json(deployments))
}

pub async fn get(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Deployment>> {
    let missing = || ApiError::not_found(format!("deployment {id:?} not found"));
    if validate::ident("deployment", &id, 100).is_err() {
        return Err(missing());
    }
    let found = state
        .db
        .get::<Deployment>(&state.db.deployment(&id))
        .await?;
    Ok(Json(found.ok_or_else(missing)?.value))
}
