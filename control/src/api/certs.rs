//! Certificates: create (checked; the same chain twice is one certificate), list, get,
//! delete (refused while routes use it), and a certificate's routes. Keys never leave the
//! store through the API.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use flynn_store::types::Route;
use serde::{Deserialize, Serialize};

use super::db;
use super::error::{ApiError, ApiResult};
use super::events;
use super::extract::Body;
use super::routes;
use super::tls::{self, CheckedCert};
use super::types::{CertificateView, NewCertificate, StoredRoute};
use super::validate;
use super::{ApiState, Shared};

/// The stored certificate: the router's `Certificate` plus a timestamp.
#[derive(Clone, Serialize, Deserialize)]
struct StoredCert {
    id: String,
    cert: String,
    key: String,
    #[serde(default)]
    created_at: Option<String>,
}

/// The certificate a route asks for.
#[derive(Clone, Debug)]
pub enum CertChoice {
    /// Given inline: created unless the same one exists.
    New(CheckedCert),
    Existing(String),
}

impl CertChoice {
    pub fn id(&self) -> &str {
        match self {
            CertChoice::New(c) => &c.id,
            CertChoice::Existing(id) => id,
        }
    }
}

/// Checks a route's certificate fields (inline certificate, or the id of one that exists).
pub async fn choose(
    state: &Shared,
    certificate: Option<NewCertificate>,
    certificate_id: Option<String>,
) -> ApiResult<Option<CertChoice>> {
    match (certificate, certificate_id) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "certificate",
            "give a certificate or a certificate_id, not both",
        )),
        (Some(new), None) => Ok(Some(CertChoice::New(tls::check(&new.cert, &new.key)?))),
        (None, Some(id)) => {
            let exists = validate::ident("certificate_id", &id, 100).is_ok()
                && state
                    .db
                    .store
                    .get(&state.db.keys.cert(&id))
                    .await?
                    .is_some();
            if !exists {
                return Err(ApiError::invalid(
                    "certificate_id",
                    format!("certificate {id:?} not found"),
                ));
            }
            Ok(Some(CertChoice::Existing(id)))
        }
        (None, None) => Ok(None),
    }
}

/// Makes sure the chosen certificate is stored; true if it was created now.
pub async fn ensure(state: &Shared, choice: &CertChoice) -> ApiResult<bool> {
    let CertChoice::New(checked) = choice else {
        return Ok(false);
    };
    let stored = StoredCert {
        id: checked.id.clone(),
        cert: checked.cert.clone(),
        key: checked.key.clone(),
        created_at: Some(db::now()),
    };
    let created = state
        .db
        .create(&state.db.keys.cert(&checked.id), &stored, None)
        .await?;
    if created {
        let view = view(&stored, Vec::new());
        events::record(state, None, "certificate", &checked.id, &view).await;
    }
    Ok(created)
}

fn view(stored: &StoredCert, routes: Vec<String>) -> CertificateView {
    let info = tls::info(&stored.cert);
    CertificateView {
        id: stored.id.clone(),
        cert: stored.cert.clone(),
        domains: info.domains,
        not_after: info.not_after,
        routes,
        created_at: stored.created_at.clone(),
    }
}

/// Route ids by the certificate they use.
async fn routes_by_cert(state: &Shared) -> ApiResult<BTreeMap<String, Vec<StoredRoute>>> {
    let mut by_cert: BTreeMap<String, Vec<StoredRoute>> = BTreeMap::new();
    for route in routes::all(state).await? {
        if let Route::Http(r) = &route.value.route {
            if let Some(cert) = &r.certificate_id {
                by_cert
                    .entry(cert.clone())
                    .or_default()
                    .push(route.value.clone());
            }
        }
    }
    Ok(by_cert)
}

fn ids(routes: Option<&Vec<StoredRoute>>) -> Vec<String> {
    routes
        .map(|rs| rs.iter().map(|r| r.route.id().to_owned()).collect())
        .unwrap_or_default()
}

pub async fn list(State(state): State<ApiState>) -> ApiResult<Json<Vec<CertificateView>>> {
    let by_cert = routes_by_cert(&state).await?;
    let certs = state.db.list::<StoredCert>(&state.db.keys.certs()).await?;
    Ok(Json(
        certs
            .iter()
            .map(|c| view(&c.value, ids(by_cert.get(&c.value.id))))
            .collect(),
    ))
}

async fn load(state: &Shared, id: &str) -> ApiResult<db::Versioned<StoredCert>> {
    let missing = || ApiError::not_found(format!("certificate {id:?} not found"));
    if validate::ident("certificate", id, 100).is_err() {
        return Err(missing());
    }
    state
        .db
        .get::<StoredCert>(&state.db.keys.cert(id))
        .await?
        .ok_or_else(missing)
}

pub async fn get(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<CertificateView>> {
    let cert = load(&state, &id).await?;
    let by_cert = routes_by_cert(&state).await?;
    Ok(Json(view(&cert.value, ids(by_cert.get(&id)))))
}

pub async fn routes(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<StoredRoute>>> {
    load(&state, &id).await?;
    let mut by_cert = routes_by_cert(&state).await?;
    Ok(Json(by_cert.remove(&id).unwrap_or_default()))
}

pub async fn create(
    State(state): State<ApiState>,
    Body(new): Body<NewCertificate>,
) -> ApiResult<(StatusCode, Json<CertificateView>)> {
    let checked = tls::check(&new.cert, &new.key)?;
    let id = checked.id.clone();
    let created = ensure(&state, &CertChoice::New(checked)).await?;
    let cert = load(&state, &id).await?;
    let by_cert = routes_by_cert(&state).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view(&cert.value, ids(by_cert.get(&id))))))
}

pub async fn delete(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<CertificateView>> {
    let key = state.db.keys.cert(&id);
    for _ in 0..100 {
        let cert = load(&state, &id).await?;
        let by_cert = routes_by_cert(&state).await?;
        let users = ids(by_cert.get(&id));
        if !users.is_empty() {
            return Err(ApiError::conflict(format!(
                "certificate {id} is used by routes {}; remove or update them first",
                users.join(", ")
            )));
        }
        // A route that started using it meanwhile bumped its revision: look again.
        if state.db.delete_if(&key, cert.mod_revision).await? {
            let view = view(&cert.value, Vec::new());
            events::record(&state, None, "certificate_deletion", &id, &view).await;
            return Ok(Json(view));
        }
    }
    Err(ApiError::conflict(format!(
        "certificate {id} keeps changing; try again"
    )))
}
