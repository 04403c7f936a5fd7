//! Artifacts and releases (both immutable once created), and an app's current release.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::apps;
use super::db;
use super::error::{ApiError, ApiResult};
use super::events;
use super::extract::Body;
use super::types::{App, Artifact, NewArtifact, NewRelease, Release, ReleaseRef};
use super::validate;
use super::{ApiState, Shared};

pub async fn create_artifact(
    State(state): State<ApiState>,
    Body(new): Body<NewArtifact>,
) -> ApiResult<(StatusCode, Json<Artifact>)> {
    if !matches!(new.kind.as_str(), "docker" | "file" | "flynn") {
        return Err(ApiError::invalid(
            "type",
            format!(
                "unknown artifact type {:?} (docker, file or flynn)",
                new.kind
            ),
        ));
    }
    if new.uri.trim().is_empty() {
        return Err(ApiError::invalid("uri", "an artifact needs a uri"));
    }
    let artifact = Artifact {
        id: uuid::Uuid::new_v4().to_string(),
        kind: new.kind,
        uri: new.uri,
        meta: new.meta,
        created_at: db::now(),
    };
    if !state
        .db
        .create(&state.db.artifact(&artifact.id), &artifact, None)
        .await?
    {
        return Err(ApiError::Internal("artifact id collision".to_owned()));
    }
    events::record(&state, None, "artifact", &artifact.id, &artifact).await;
    Ok((StatusCode::CREATED, Json(artifact)))
}

pub async fn list_artifacts(State(state): State<ApiState>) -> ApiResult<Json<Vec<Artifact>>> {
    let mut artifacts: Vec<Artifact> = state
        .db
        .list::<Artifact>(&state.db.artifacts())
        .await?
        .into_iter()
        .map(|v| v.value)
        .collect();
    artifacts.sort_by(|a, b| a.created_at.cmp(&b.created_at));
    Ok(Json(artifacts))
}

pub async fn get_artifact(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Artifact>> {
    let missing = || ApiError::not_found(format!("artifact {id:?} not found"));
    if validate::ident("artifact", &id, 100).is_err() {
        return Err(missing());
    }
    let artifact = state.db.get::<Artifact>(&state.db.artifact(&id)).await?;
    Ok(Json(artifact.ok_or_else(missing)?.value))
}

pub async fn create(
    State(state): State<ApiState>,
    Body(new): Body<NewRelease>,
) -> ApiResult<(StatusCode, Json<Release>)> {
    let app_id = match &new.app_id {
        Some(app) => Some(
            apps::find(&state, app)
                .await
                .map_err(|_| ApiError::invalid("app_id", format!("app {app:?} not found")))?,
        ),
        None => None,
    };
    for artifact in &new.artifacts {
        let exists = validate::ident("artifacts", artifact, 100).is_ok()
            && state
                .db
                .store
                .get(&state.db.artifact(artifact))
                .await?
                .is_some();
        if !exists {
            return Err(ApiError::invalid(
                "artifacts",
                format!("artifact {artifact:?} not found"),
            ));
        }
    }
    for (name, process) in &new.processes {
        validate::process_type(name)?;
        crate::scheduler::placement::check_process(name, process)
            .map_err(|e| ApiError::invalid("processes", e))?;
    }
    for key in new.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(ApiError::invalid(
                "env",
                format!("invalid environment variable name {key:?}"),
            ));
        }
    }
    let release = Release {
        id: uuid::Uuid::new_v4().to_string(),
        app_id: app_id.map(|a| a.value.id),
        artifacts: new.artifacts,
        env: new.env,
        meta: new.meta,
        processes: new.processes,
        created_at: db::now(),
    };
    if !state
        .db
        .create(&state.db.release(&release.id), &release, None)
        .await?
    {
        return Err(ApiError::Internal("release id collision".to_owned()));
    }
    events::record(
        &state,
        release.app_id.as_deref(),
        "release",
        &release.id,
        &release,
    )
    .await;
    Ok((StatusCode::CREATED, Json(release)))
}

pub async fn list(State(state): State<ApiState>) -> ApiResult<Json<Vec<Release>>> {
    Ok(Json(all(&state).await?))
}

async fn all(state: &Shared) -> ApiResult<Vec<Release>> {
    let mut releases: Vec<Release> = state
        .db
        .list::<Release>(&state.db.releases())
        .await?
        .into_iter()
        .map(|v| v.value)
        .collect();
    releases.sort_by(|a, b| a.created_at.cmp(&b.created_at));
    Ok(releases)
}

/// The release with this id.
pub async fn find(state: &Shared, id: &str) -> ApiResult<Release> {
    let missing = || ApiError::not_found(format!("release {id:?} not found"));
    if validate::ident("release", id, 100).is_err() {
        return Err(missing());
    }
    let release = state.db.get::<Release>(&state.db.release(id)).await?;
    Ok(release.ok_or_else(missing)?.value)
}

pub async fn get(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Release>> {
    Ok(Json(find(&state, &id).await?))
}

/// PUT, PATCH and DELETE on a release.
pub async fn immutable(Path(id): Path<String>) -> ApiError {
    ApiError::validation(format!(
        "release {id} cannot be changed: releases are immutable; create a new one"
    ))
}

/// The releases of an app: those created for it, and its current one.
pub async fn app_releases(
    State(state): State<ApiState>,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<Release>>> {
    let app = apps::find(&state, &app).await?.value;
    let mut releases = all(&state).await?;
    releases
        .retain(|r| r.app_id.as_ref() == Some(&app.id) || app.release_id.as_ref() == Some(&r.id));
    Ok(Json(releases))
}

pub async fn app_release(
    State(state): State<ApiState>,
    Path(app): Path<String>,
) -> ApiResult<Json<Release>> {
    let app = apps::find(&state, &app).await?.value;
    let Some(id) = &app.release_id else {
        return Err(ApiError::not_found(format!(
            "app {} has no release yet",
            app.name
        )));
    };
    Ok(Json(find(&state, id).await?))
}

pub async fn set_app_release(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    Body(to): Body<ReleaseRef>,
) -> ApiResult<Json<App>> {
    let release = find(&state, &to.id)
        .await
        .map_err(|_| ApiError::invalid("id", format!("release {:?} not found", to.id)))?;
    for _ in 0..100 {
        let current = apps::find(&state, &app).await?;
        if let Some(owner) = &release.app_id {
            if owner != &current.value.id {
                return Err(ApiError::invalid(
                    "id",
                    format!("release {} belongs to another app", release.id),
                ));
            }
        }
        let mut next = current.value.clone();
        next.release_id = Some(release.id.clone());
        next.updated_at = db::now();
        let key = state.db.app(&next.id);
        if state
            .db
            .swap(&key, current.mod_revision, &next, None)
            .await?
            .is_some()
        {
            events::record(
                &state,
                Some(&next.id),
                "app_release",
                &release.id,
                serde_json::json!({ "release": &release, "prev_release_id": current.value.release_id }),
            )
            .await;
            return Ok(Json(next));
        }
    }
    Err(ApiError::conflict("the app keeps changing; try again"))
}
