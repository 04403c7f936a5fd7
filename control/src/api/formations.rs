//! Formations: how many processes of each type of a release an app wants. The scheduler
//! (to come) reads them; the API stores and serves them.

use axum::extract::{Path, State};
use axum::Json;

use super::apps;
use super::db;
use super::error::{ApiError, ApiResult};
use super::events;
use super::extract::Body;
use super::releases;
use super::types::{Formation, NewFormation};
use super::validate;
use super::ApiState;

/// Most processes of one type a formation may ask for.
const MAX_COUNT: i64 = 10_000;

pub async fn list(
    State(state): State<ApiState>,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<Formation>>> {
    let app = apps::find(&state, &app).await?.value;
    let formations = state
        .db
        .list::<Formation>(&state.db.formations(&app.id))
        .await?;
    Ok(Json(formations.into_iter().map(|f| f.value).collect()))
}

pub async fn get(
    State(state): State<ApiState>,
    Path((app, release)): Path<(String, String)>,
) -> ApiResult<Json<Formation>> {
    let app = apps::find(&state, &app).await?.value;
    let missing = || {
        ApiError::not_found(format!(
            "app {} has no formation for release {release:?}",
            app.name
        ))
    };
    if validate::ident("release", &release, 100).is_err() {
        return Err(missing());
    }
    let formation = state
        .db
        .get::<Formation>(&state.db.formation(&app.id, &release))
        .await?;
    Ok(Json(formation.ok_or_else(missing)?.value))
}

pub async fn put(
    State(state): State<ApiState>,
    Path((app, release)): Path<(String, String)>,
    Body(new): Body<NewFormation>,
) -> ApiResult<Json<Formation>> {
    let app = apps::find(&state, &app).await?.value;
    let release = releases::find(&state, &release).await?;
    if release
        .app_id
        .as_ref()
        .is_some_and(|owner| owner != &app.id)
    {
        return Err(ApiError::invalid(
            "release",
            format!("release {} belongs to another app", release.id),
        ));
    }
    for (process, count) in &new.processes {
        if !release.processes.contains_key(process) {
            let known: Vec<&str> = release.processes.keys().map(String::as_str).collect();
            return Err(ApiError::invalid(
                "processes",
                format!(
                    "release {} has no process type {process:?} (it has: {})",
                    release.id,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        if !(0..=MAX_COUNT).contains(count) {
            return Err(ApiError::invalid(
                "processes",
                format!("{process}={count}: a count must be 0-{MAX_COUNT}"),
            ));
        }
    }
    crate::scheduler::placement::check_tags(&new.tags, &release)
        .map_err(|e| ApiError::invalid("tags", e))?;
    let key = state.db.formation(&app.id, &release.id);
    let created_at = match state.db.get::<Formation>(&key).await? {
        Some(existing) => existing.value.created_at,
        None => db::now(),
    };
    let formation = Formation {
        app: app.id.clone(),
        release: release.id.clone(),
        processes: new.processes,
        tags: new.tags,
        created_at,
        updated_at: db::now(),
    };
    state.db.put(&key, &formation, None).await?;
    events::record(&state, Some(&app.id), "scale", &release.id, &formation).await;
    Ok(Json(formation))
}

pub async fn delete(
    State(state): State<ApiState>,
    Path((app, release)): Path<(String, String)>,
) -> ApiResult<Json<Formation>> {
    let Json(formation) = get(State(state.clone()), Path((app, release.clone()))).await?;
    state
        .db
        .delete(&state.db.formation(&formation.app, &formation.release))
        .await?;
    let mut scaled_down = formation.clone();
    scaled_down.processes.clear();
    events::record(
        &state,
        Some(&formation.app),
        "scale",
        &release,
        &scaled_down,
    )
    .await;
    Ok(Json(formation))
}
