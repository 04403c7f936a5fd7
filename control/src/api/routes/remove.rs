//! Deleting routes: a domain's `/` route only when no path route depends on it.

use flynn_store::types::Route;

use super::{app_id, of_app};
use crate::api::claims::{self, Claim};
use crate::api::error::{ApiError, ApiResult};
use crate::api::events;
use crate::api::types::{App, StoredRoute};
use crate::api::Shared;

/// Deletes a route and gives up its claim. A domain's `/` route goes only when no path route
/// depends on it.
pub async fn remove(state: &Shared, route: &StoredRoute) -> ApiResult<()> {
    let db = &state.db;
    let id = route.route.id();
    let route_key = db.keys.route(id);
    match &route.route {
        Route::Http(r) if r.path == "/" => {
            let root_key = db.http_claim(&r.domain, "/");
            let mut released = false;
            for _ in 0..100 {
                let Some(claim) = db.get::<Claim>(&root_key).await? else {
                    released = true;
                    break;
                };
                if claim.value.owner != r.id {
                    released = true;
                    break;
                }
                let dependents: Vec<String> = db
                    .store
                    .range(&db.http_claims(&r.domain))
                    .await?
                    .kvs
                    .into_iter()
                    .filter(|kv| kv.key != root_key)
                    .map(|kv| {
                        let path = kv.key.strip_prefix(&root_key).unwrap_or_default();
                        format!("{}/{path}", r.domain)
                    })
                    .collect();
                if !dependents.is_empty() {
                    return Err(ApiError::conflict(format!(
                        "{}/ cannot be removed while path routes depend on it ({}); remove them first",
                        r.domain,
                        dependents.join(", ")
                    )));
                }
                if db.delete_if(&root_key, claim.mod_revision).await? {
                    released = true;
                    break;
                }
            }
            if !released {
                return Err(ApiError::conflict(format!(
                    "too many concurrent changes to {}/; try again",
                    r.domain
                )));
            }
            db.delete(&route_key).await?;
        }
        Route::Http(r) => {
            db.delete(&route_key).await?;
            claims::release(db, &db.http_claim(&r.domain, &r.path), id).await?;
        }
        Route::Tcp(r) => {
            db.delete(&route_key).await?;
            claims::release(db, &db.tcp_claim(r.port), id).await?;
        }
    }
    events::record(state, app_id(&route.route), "route_deletion", id, route).await;
    Ok(())
}

/// Deletes every route of `app`, path routes before the `/` routes they depend on. Refuses,
/// before deleting anything, when another app's path route depends on one of them.
pub async fn delete_app_routes(state: &Shared, app: &App) -> ApiResult<Vec<String>> {
    let db = &state.db;
    let mut routes: Vec<StoredRoute> = of_app(state, app)
        .await?
        .into_iter()
        .map(|r| r.value)
        .collect();
    let ids: Vec<&str> = routes.iter().map(|r| r.route.id()).collect();
    for route in &routes {
        let Route::Http(r) = &route.route else {
            continue;
        };
        if r.path != "/" {
            continue;
        }
        for claim in db.list::<Claim>(&db.http_claims(&r.domain)).await? {
            if !ids.contains(&claim.value.owner.as_str()) {
                return Err(ApiError::conflict(format!(
                    "cannot delete app {}: route {} of another app depends on its route {}/",
                    app.name, claim.value.owner, r.domain
                )));
            }
        }
    }
    routes.sort_by_key(|r| matches!(&r.route, Route::Http(h) if h.path == "/"));
    let mut removed = Vec::new();
    for route in routes {
        remove(state, &route).await?;
        removed.push(route.route.id().to_owned());
    }
    Ok(removed)
}
