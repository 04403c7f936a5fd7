//! The controller API: JSON over HTTP, every change validated and written to the store that the
//! router watches.
//!
//! One [`app`] builds the axum router; every handler returns [`ApiResult`], and every error has
//! the shape `{"code", "message", "detail"?}` ([`error`]). All but `/ping` need the controller
//! key ([`auth`]). Uniqueness (app names, domain + path, TCP ports) is enforced with
//! compare-and-swap claims in the store ([`claims`]), so it holds across concurrent requests
//! and across controllers sharing one etcd.

mod apps;
pub(crate) mod auth;
mod certs;
mod claims;
pub mod db;
pub mod deployments;
pub mod error;
mod events;
mod extract;
mod formations;
pub mod git;
pub mod jobs;
pub mod metrics;
mod releases;
mod routes;
mod runs;
pub mod serve;
mod services;
pub mod tls;
pub mod types;
pub mod validate;

use std::collections::BTreeSet;
use std::ops::{Deref, RangeInclusive};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::routing::{get, post};
use axum::Router;
use flynn_store::{Keys, Store};

use self::db::Db;
pub use self::error::{ApiError, ApiResult, ErrorBody, BODY_LIMIT};
pub use self::events::{EventLog, Retention};
use self::metrics::Metrics;
pub use self::serve::{serve, ServeOptions};
pub use self::services::id_for as id_for_addr;

/// How the controller behaves.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// The bearer key every request but `/ping` must carry.
    pub key: String,
    pub keys: Keys,
    /// TCP route ports are allocated from here when a route names none.
    pub tcp_ports: RangeInclusive<u16>,
    /// Ports no TCP route may take (the router's HTTP/HTTPS listeners, the controller, ...).
    pub reserved_ports: BTreeSet<u16>,
    /// New apps get the route `<app>.<default_domain>` (service `<app>-web`) when set.
    pub default_domain: Option<String>,
    /// How much event history the store keeps.
    pub retention: Retention,
    /// An `/events` stream whose client has read nothing for this long is ended.
    pub events_stall_timeout: Duration,
}

impl ApiConfig {
    /// The defaults of `flynn server`: TCP ports 3000-3500, its listener ports reserved, no
    /// default route.
    pub fn new(key: impl Into<String>) -> ApiConfig {
        ApiConfig {
            key: key.into(),
            keys: Keys::default(),
            tcp_ports: 3000..=3500,
            reserved_ports: [80, 443, 8080, 8443, 8081, 8082].into_iter().collect(),
            default_domain: None,
            retention: Retention::default(),
            events_stall_timeout: Duration::from_secs(30),
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState(Arc<Shared>);

pub struct Shared {
    pub db: Db,
    pub config: ApiConfig,
    pub metrics: Arc<Metrics>,
    /// The index of the recorded events; its tasks start with the first request that needs it.
    pub events: EventLog,
}

impl Deref for ApiState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl ApiState {
    pub fn new(store: Arc<dyn Store>, config: ApiConfig) -> ApiState {
        let db = Db::new(store, config.keys.clone());
        let metrics = Arc::new(Metrics::new());
        let events = EventLog::new(db.clone(), config.retention, metrics.clone());
        ApiState(Arc::new(Shared {
            db,
            config,
            metrics,
            events,
        }))
    }
}

/// The controller API over `store`.
pub fn app(store: Arc<dyn Store>, config: ApiConfig) -> Router {
    router(ApiState::new(store, config))
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/ping", get(ping))
        .route("/apps", get(apps::list).post(apps::create))
        .route(
            "/apps/{app}",
            get(apps::get).post(apps::update).delete(apps::delete),
        )
        .route("/apps/{app}/deploy", post(deployments::create))
        .route("/apps/{app}/deployments", get(deployments::list_app))
        .route("/deployments/{id}", get(deployments::get))
        .route(
            "/apps/{app}/routes",
            get(routes::list_app).post(routes::create),
        )
        .route(
            "/apps/{app}/routes/{id}",
            get(routes::get).put(routes::update).delete(routes::delete),
        )
        .route("/routes", get(routes::list_all))
        .route(
            "/apps/{app}/release",
            get(releases::app_release).put(releases::set_app_release),
        )
        .route("/apps/{app}/releases", get(releases::app_releases))
        .route("/apps/{app}/formations", get(formations::list))
        .route("/apps/{app}/jobs", get(jobs::list))
        .route("/apps/{app}/jobs/{job}", get(runs::get).delete(runs::kill))
        .route("/hosts", get(runs::hosts))
        .route(
            "/apps/{app}/formations/{release}",
            get(formations::get)
                .put(formations::put)
                .delete(formations::delete),
        )
        .route(
            "/artifacts",
            get(releases::list_artifacts).post(releases::create_artifact),
        )
        .route("/artifacts/{id}", get(releases::get_artifact))
        .route("/releases", get(releases::list).post(releases::create))
        .route(
            "/releases/{id}",
            get(releases::get)
                .put(releases::immutable)
                .patch(releases::immutable)
                .delete(releases::immutable),
        )
        .route("/certificates", get(certs::list).post(certs::create))
        .route("/certificates/{id}", get(certs::get).delete(certs::delete))
        .route("/certificates/{id}/routes", get(certs::routes))
        .route("/services", get(services::list))
        .route(
            "/services/{service}/instances",
            get(services::instances).post(services::register),
        )
        .route(
            "/services/{service}/instances/{id}",
            get(services::instance).delete(services::deregister),
        )
        .route(
            "/services/{service}/instances/{id}/heartbeat",
            post(services::heartbeat),
        )
        .route("/events", get(events::get))
        .route("/metrics", get(metrics::get))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ))
        .with_state(state)
}

async fn ping() -> &'static str {
    "OK\n"
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} {}", uri.path()))
}
