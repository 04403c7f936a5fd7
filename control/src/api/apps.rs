//! Apps: create (named or with a generated name), list, get by id or name, delete (with their
//! routes and formations). Names are unique through a claim.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::claims;
use super::db::{self, Versioned};
use super::error::{ApiError, ApiResult};
use super::events;
use super::extract::Body;
use super::routes;
use super::types::{App, AppUpdate, NewApp, NewRoute, RouteKind};
use super::validate;
use super::{ApiState, Shared};

pub async fn list(State(state): State<ApiState>) -> ApiResult<Json<Vec<App>>> {
    let mut apps: Vec<App> = state
        .db
        .list::<App>(&state.db.apps())
        .await?
        .into_iter()
        .map(|v| v.value)
        .collect();
    apps.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(apps))
}

pub async fn get(State(state): State<ApiState>, Path(app): Path<String>) -> ApiResult<Json<App>> {
    Ok(Json(find(&state, &app).await?.value))
}

/// The app with this id or name.
pub async fn find(state: &Shared, id_or_name: &str) -> ApiResult<Versioned<App>> {
    if let Some(app) = state.db.get::<App>(&state.db.app(id_or_name)).await? {
        return Ok(app);
    }
    if validate::app_name(id_or_name).is_ok() {
        let claim = state
            .db
            .get::<claims::Claim>(&state.db.app_name_claim(id_or_name))
            .await?;
        if let Some(claim) = claim {
            if let Some(app) = state
                .db
                .get::<App>(&state.db.app(&claim.value.owner))
                .await?
            {
                return Ok(app);
            }
        }
    }
    Err(ApiError::not_found(format!("app {id_or_name:?} not found")))
}

pub async fn create(
    State(state): State<ApiState>,
    Body(new): Body<NewApp>,
) -> ApiResult<(StatusCode, Json<App>)> {
    let generated = new.name.is_none();
    let strategy = new.strategy.unwrap_or_else(|| "all-at-once".to_owned());
    if !matches!(strategy.as_str(), "all-at-once" | "one-by-one") {
        return Err(ApiError::invalid(
            "strategy",
            format!("unknown deploy strategy {strategy:?} (all-at-once or one-by-one)"),
        ));
    }
    if let Some(timeout) = new.deploy_timeout {
        check_deploy_timeout(timeout)?;
    }
    let id = uuid::Uuid::new_v4().to_string();
    let mut attempts = 0;
    let name = loop {
        let name = match &new.name {
            Some(name) => name.clone(),
            None => generate_name(),
        };
        validate::app_name(&name)?;
        let claim_key = state.db.app_name_claim(&name);
        match claims::claim(&state.db, &claim_key, &id, |owner| state.db.app(owner)).await? {
            Ok(_) => break name,
            Err(_) if generated && attempts < 10 => attempts += 1,
            Err(_) => {
                return Err(ApiError::conflict(format!("app {name:?} already exists")));
            }
        }
    };
    let now = db::now();
    let app = App {
        id: id.clone(),
        name: name.clone(),
        meta: new.meta,
        strategy,
        release_id: None,
        deploy_timeout: new
            .deploy_timeout
            .unwrap_or_else(super::types::default_deploy_timeout),
        created_at: now.clone(),
        updated_at: now,
    };
    if let Err(e) = write_new(&state, &app).await {
        claims::release(&state.db, &state.db.app_name_claim(&name), &id).await?;
        return Err(e);
    }
    events::record(&state, Some(&id), "app", &id, &app).await;
    Ok((StatusCode::CREATED, Json(app)))
}

/// Most seconds a deploy may wait for one job.
const MAX_DEPLOY_TIMEOUT: u64 = 3600;

fn check_deploy_timeout(timeout: u64) -> ApiResult<()> {
    if !(1..=MAX_DEPLOY_TIMEOUT).contains(&timeout) {
        return Err(ApiError::invalid(
            "deploy_timeout",
            format!("deploy_timeout {timeout}: seconds, 1-{MAX_DEPLOY_TIMEOUT}"),
        ));
    }
    Ok(())
}

/// `POST /apps/{app}`: changes the deploy strategy, the deploy timeout or the meta.
pub async fn update(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    Body(change): Body<AppUpdate>,
) -> ApiResult<Json<App>> {
    if let Some(strategy) = &change.strategy {
        if !matches!(strategy.as_str(), "all-at-once" | "one-by-one") {
            return Err(ApiError::invalid(
                "strategy",
                format!("unknown deploy strategy {strategy:?} (all-at-once or one-by-one)"),
            ));
        }
    }
    if let Some(timeout) = change.deploy_timeout {
        check_deploy_timeout(timeout)?;
    }
    for _ in 0..100 {
        let current = find(&state, &app).await?;
        let mut next = current.value.clone();
        if let Some(strategy) = &change.strategy {
            next.strategy = strategy.clone();
        }
        if let Some(timeout) = change.deploy_timeout {
            next.deploy_timeout = timeout;
        }
        if let Some(meta) = &change.meta {
            next.meta = meta.clone();
        }
        next.updated_at = db::now();
        let key = state.db.app(&next.id);
        if state
            .db
            .swap(&key, current.mod_revision, &next, None)
            .await?
            .is_some()
        {
            events::record(&state, Some(&next.id), "app", &next.id, &next).await;
            return Ok(Json(next));
        }
    }
    Err(ApiError::conflict("the app keeps changing; try again"))
}

/// Writes the app and its default route; nothing stays if the route cannot be made.
async fn write_new(state: &Shared, app: &App) -> ApiResult<()> {
    state.db.put(&state.db.app(&app.id), app, None).await?;
    let Some(default_domain) = &state.config.default_domain else {
        return Ok(());
    };
    let route = NewRoute {
        kind: RouteKind::Http,
        domain: Some(format!("{}.{default_domain}", app.name)),
        ..NewRoute::default()
    };
    if let Err(e) = routes::create_route(state, app, route).await {
        state.db.delete(&state.db.app(&app.id)).await?;
        return Err(match e {
            ApiError::Conflict(m) => {
                ApiError::conflict(format!("cannot add the default route: {m}"))
            }
            other => other,
        });
    }
    Ok(())
}

pub async fn delete(
    State(state): State<ApiState>,
    Path(app): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let mut removed = Vec::new();
    let mut deleted = None;
    // A route created meanwhile bumps the app's revision: delete what appeared, then retry.
    for _ in 0..10 {
        let current = find(&state, &app).await?;
        removed.extend(routes::delete_app_routes(&state, &current.value).await?);
        let formations = state.db.formations(&current.value.id);
        for formation in state.db.store.range(&formations).await?.kvs {
            state.db.delete(&formation.key).await?;
        }
        let key = state.db.app(&current.value.id);
        if state.db.delete_if(&key, current.mod_revision).await? {
            deleted = Some(current.value);
            break;
        }
    }
    let Some(app) = deleted else {
        return Err(ApiError::conflict(format!(
            "app {app:?} keeps changing; try again"
        )));
    };
    claims::release(&state.db, &state.db.app_name_claim(&app.name), &app.id).await?;
    events::record(
        &state,
        Some(&app.id),
        "app_deletion",
        &app.id,
        serde_json::json!({ "app": &app, "deleted_routes": &removed }),
    )
    .await;
    Ok(Json(serde_json::json!({
        "id": app.id,
        "name": app.name,
        "deleted_routes": removed,
    })))
}

/// A friendly random name such as `quiet-river-4821`.
fn generate_name() -> String {
    const ADJECTIVES: &[&str] = &[
        "amber", "bold", "brisk", "calm", "clever", "crisp", "eager", "fair", "gentle", "glad",
        "happy", "keen", "kind", "lively", "lucky", "merry", "nimble", "proud", "quiet", "rapid",
        "shiny", "silent", "steady", "sunny", "swift", "tidy", "vivid", "warm", "wise", "young",
    ];
    const NOUNS: &[&str] = &[
        "brook", "cloud", "comet", "dawn", "delta", "dune", "ember", "field", "fjord", "forest",
        "grove", "harbor", "island", "lake", "meadow", "mesa", "moon", "oasis", "peak", "pine",
        "prairie", "reef", "ridge", "river", "shore", "sky", "star", "stone", "valley", "wave",
    ];
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    let adjective = ADJECTIVES[bytes[0] as usize % ADJECTIVES.len()];
    let noun = NOUNS[bytes[1] as usize % NOUNS.len()];
    let number = u16::from_be_bytes([bytes[2], bytes[3]]) % 9000 + 1000;
    format!("{adjective}-{noun}-{number}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_names_are_valid() {
        for _ in 0..100 {
            let name = super::generate_name();
            assert!(super::validate::app_name(&name).is_ok(), "{name}");
        }
    }
}
