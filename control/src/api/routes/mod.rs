//! Routes: HTTP (domain + path, optional certificate) and TCP (port). Every rule is checked
//! before anything is written; domain + path and ports are claimed with compare-and-swap
//! ([`claims`]), and a path route holds its domain's `/` route in place.
//!
//! [`create`] writes new routes, [`change`] checks updates, [`remove`] deletes.

mod change;
mod create;
mod remove;

pub use self::create::create_route;
pub use self::remove::{delete_app_routes, remove};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use flynn_store::types::Route;

use super::apps;
use super::certs;
use super::claims;
use super::db::{self, Versioned};
use super::error::{ApiError, ApiResult};
use super::events;
use super::extract::Body;
use super::types::{App, NewRoute, RouteUpdate, StoredRoute};
use super::validate;
use super::{ApiState, Shared};

pub async fn list_all(State(state): State<ApiState>) -> ApiResult<Json<Vec<StoredRoute>>> {
    Ok(Json(
        all(&state).await?.into_iter().map(|r| r.value).collect(),
    ))
}

pub async fn list_app(
    State(state): State<ApiState>,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<StoredRoute>>> {
    let app = apps::find(&state, &app).await?.value;
    Ok(Json(
        of_app(&state, &app)
            .await?
            .into_iter()
            .map(|r| r.value)
            .collect(),
    ))
}

pub async fn get(
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<StoredRoute>> {
    let app = apps::find(&state, &app).await?.value;
    Ok(Json(load(&state, &app, &id).await?.value))
}

pub async fn create(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    Body(new): Body<NewRoute>,
) -> ApiResult<(StatusCode, Json<StoredRoute>)> {
    let app = apps::find(&state, &app).await?.value;
    let route = create_route(&state, &app, new).await?;
    Ok((StatusCode::CREATED, Json(route)))
}

pub async fn update(
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    Body(update): Body<RouteUpdate>,
) -> ApiResult<Json<StoredRoute>> {
    let app = apps::find(&state, &app).await?.value;
    let current = load(&state, &app, &id).await?;
    let (mut next, cert) = change::apply_update(&state, &current.value, update).await?;
    if next.route == current.value.route {
        return Ok(Json(current.value));
    }
    next.updated_at = Some(db::now());
    let db = &state.db;
    if let Some(cert) = &cert {
        certs::ensure(&state, cert).await?;
    }
    let key = db.keys.route(&id);
    let Some(revision) = db.swap(&key, current.mod_revision, &next, None).await? else {
        return Err(ApiError::conflict(format!(
            "route {id} changed meanwhile; fetch it and try again"
        )));
    };
    if let Some(cert) = &cert {
        if !claims::bump(db, &db.keys.cert(cert.id())).await? {
            db.swap(&key, revision, &current.value, None).await?;
            return Err(create::cert_gone(cert.id()));
        }
    }
    events::record(&state, Some(&app.id), "route", &id, &next).await;
    Ok(Json(next))
}

pub async fn delete(
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<StoredRoute>> {
    let app = apps::find(&state, &app).await?.value;
    let route = load(&state, &app, &id).await?;
    remove(&state, &route.value).await?;
    Ok(Json(route.value))
}

/// Every route, HTTP by domain and path, then TCP by port.
pub async fn all(state: &Shared) -> ApiResult<Vec<Versioned<StoredRoute>>> {
    let mut routes = state
        .db
        .list::<StoredRoute>(&state.db.keys.routes())
        .await?;
    routes.sort_by(|a, b| order(&a.value.route).cmp(&order(&b.value.route)));
    Ok(routes)
}

fn order(route: &Route) -> (u8, &str, &str, u16) {
    match route {
        Route::Http(r) => (0, &r.domain, &r.path, 0),
        Route::Tcp(r) => (1, "", "", r.port),
    }
}

pub fn app_id(route: &Route) -> Option<&str> {
    match route {
        Route::Http(r) => r.app_id.as_deref(),
        Route::Tcp(r) => r.app_id.as_deref(),
    }
}

async fn of_app(state: &Shared, app: &App) -> ApiResult<Vec<Versioned<StoredRoute>>> {
    let mut routes = all(state).await?;
    routes.retain(|r| app_id(&r.value.route) == Some(&app.id));
    Ok(routes)
}

async fn load(state: &Shared, app: &App, id: &str) -> ApiResult<Versioned<StoredRoute>> {
    let missing = || ApiError::not_found(format!("route {id:?} not found in app {}", app.name));
    if validate::ident("route", id, 100).is_err() {
        return Err(missing());
    }
    match state
        .db
        .get::<StoredRoute>(&state.db.keys.route(id))
        .await?
    {
        Some(route) if app_id(&route.value.route) == Some(&app.id) => Ok(route),
        _ => Err(missing()),
    }
}
