//! New routes: HTTP (claim domain + path, hold the `/` route, attach the certificate) and
//! TCP (claim a port).

use flynn_store::types::{HttpRoute, Route, TcpRoute};

use crate::api::certs;
use crate::api::claims;
use crate::api::db;
use crate::api::error::{ApiError, ApiResult};
use crate::api::events;
use crate::api::types::{App, NewRoute, RouteKind, StoredRoute};
use crate::api::validate;
use crate::api::Shared;

/// Validates and writes a new route of `app`.
pub async fn create_route(state: &Shared, app: &App, new: NewRoute) -> ApiResult<StoredRoute> {
    let service = match &new.service {
        Some(service) => service.clone(),
        None => format!("{}-web", app.name),
    };
    validate::service(&service)?;
    match new.kind {
        RouteKind::Http => create_http(state, app, service, new).await,
        RouteKind::Tcp => create_tcp(state, app, service, new).await,
    }
}

async fn create_http(
    state: &Shared,
    app: &App,
    service: String,
    new: NewRoute,
) -> ApiResult<StoredRoute> {
    if new.port.is_some() {
        return Err(ApiError::invalid(
            "port",
            "an HTTP route has no port (use type tcp)",
        ));
    }
    if new.proxy_protocol.is_some() {
        return Err(ApiError::invalid(
            "proxy_protocol",
            "only TCP routes send the PROXY protocol",
        ));
    }
    let domain = new
        .domain
        .as_deref()
        .ok_or_else(|| ApiError::invalid("domain", "an HTTP route needs a domain"))?;
    let domain = validate::domain(domain)?;
    let path = validate::path(new.path.as_deref())?;
    let cert = certs::choose(state, new.certificate, new.certificate_id).await?;
    let db = &state.db;
    let id = format!("http-{}", uuid::Uuid::new_v4());
    let backend_protocol = new.backend_protocol.unwrap_or_default();
    let now = db::now();
    let stored = StoredRoute {
        route: Route::Http(http_route(serde_json::json!({
            "id": id,
            "domain": domain,
            "path": path,
            "service": service,
            "certificate_id": cert.as_ref().map(|c| c.id()),
            "sticky": new.sticky,
            "leader": new.leader,
            "drain_backends": new.drain_backends.unwrap_or(true),
            "disable_keep_alives": new.disable_keep_alives,
            "backend_protocol": backend_protocol,
            "app_id": app.id,
        }))?),
        created_at: Some(now.clone()),
        updated_at: Some(now),
    };
    let root_key = db.http_claim(&domain, "/");
    if path != "/" && db.store.get(&root_key).await?.is_none() {
        return Err(needs_root(&domain, &path));
    }
    let claim_key = db.http_claim(&domain, &path);
    let route_key = db.keys.route(&id);
    if let Err(holder) = claims::claim(db, &claim_key, &id, |o| db.keys.route(o)).await? {
        return Err(ApiError::conflict(format!(
            "{domain}{path} is already taken by route {holder}"
        )));
    }
    let written = async {
        if path != "/" && !claims::bump(db, &root_key).await? {
            return Err(needs_root(&domain, &path));
        }
        if let Some(cert) = &cert {
            certs::ensure(state, cert).await?;
        }
        if !db.create(&route_key, &stored, None).await? {
            return Err(ApiError::Internal(format!("route id {id} exists already")));
        }
        if let Some(cert) = &cert {
            if !claims::bump(db, &db.keys.cert(cert.id())).await? {
                return Err(cert_gone(cert.id()));
            }
        }
        hold_app(state, app).await
    }
    .await;
    if let Err(e) = written {
        undo(state, &route_key, &claim_key, &id).await;
        return Err(e);
    }
    events::record(state, Some(&app.id), "route", &id, &stored).await;
    Ok(stored)
}

async fn create_tcp(
    state: &Shared,
    app: &App,
    service: String,
    new: NewRoute,
) -> ApiResult<StoredRoute> {
    let refuse = |field: &'static str, what: &str| {
        Err(ApiError::invalid(
            field,
            format!("a TCP route has no {what}"),
        ))
    };
    if new.domain.is_some() {
        return refuse("domain", "domain");
    }
    if new.path.is_some() {
        return refuse("path", "path");
    }
    if new.certificate.is_some() || new.certificate_id.is_some() {
        return refuse("certificate", "certificate (TLS is for HTTP routes)");
    }
    if new.sticky {
        return refuse("sticky", "sticky sessions");
    }
    if new.disable_keep_alives {
        return refuse("disable_keep_alives", "HTTP keep-alives");
    }
    if new.backend_protocol.is_some() {
        return refuse(
            "backend_protocol",
            "backend protocol (it is for HTTP routes)",
        );
    }
    let id = format!("tcp-{}", uuid::Uuid::new_v4());
    let wanted = new.port.filter(|p| *p != 0);
    let port = claims::claim_port(state, &id, wanted).await?;
    let now = db::now();
    let stored = StoredRoute {
        route: Route::Tcp(tcp_route(serde_json::json!({
            "id": id,
            "port": port,
            "service": service,
            "leader": new.leader,
            "proxy_protocol": new.proxy_protocol,
            "app_id": app.id,
        }))?),
        created_at: Some(now.clone()),
        updated_at: Some(now),
    };
    let db = &state.db;
    let route_key = db.keys.route(&id);
    let claim_key = db.tcp_claim(port);
    let written = match db.create(&route_key, &stored, None).await {
        Ok(true) => hold_app(state, app).await,
        Ok(false) => Err(ApiError::Internal(format!("route id {id} exists already"))),
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        undo(state, &route_key, &claim_key, &id).await;
        return Err(e);
    }
    events::record(state, Some(&app.id), "route", &id, &stored).await;
    Ok(stored)
}

// Routes are built from JSON so that fields the store's types gain later (with their
// defaults) need no change here, as for any other writer of the store.
fn http_route(value: serde_json::Value) -> ApiResult<HttpRoute> {
    serde_json::from_value(value).map_err(|e| ApiError::Internal(format!("route JSON: {e}")))
}

fn tcp_route(value: serde_json::Value) -> ApiResult<TcpRoute> {
    serde_json::from_value(value).map_err(|e| ApiError::Internal(format!("route JSON: {e}")))
}

/// After a route of `app` is written: an app deleted meanwhile either saw the route, or
/// this fails (see [`claims`]).
async fn hold_app(state: &Shared, app: &App) -> ApiResult<()> {
    if claims::bump(&state.db, &state.db.app(&app.id)).await? {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("app {:?} not found", app.name)))
    }
}

/// Takes back a half-made route: its key (if written) and its claim. Best effort.
async fn undo(state: &Shared, route_key: &str, claim_key: &str, id: &str) {
    if let Err(e) = state.db.delete(route_key).await {
        tracing::error!(route = id, error = %e, "cannot remove a half-made route");
    }
    if let Err(e) = claims::release(&state.db, claim_key, id).await {
        tracing::error!(route = id, error = %e, "cannot release a half-made route's claim");
    }
}

fn needs_root(domain: &str, path: &str) -> ApiError {
    ApiError::invalid(
        "path",
        format!("the path route {domain}{path} needs a route for {domain}/ first"),
    )
}

pub(super) fn cert_gone(id: &str) -> ApiError {
    ApiError::conflict(format!("certificate {id} was deleted meanwhile"))
}
