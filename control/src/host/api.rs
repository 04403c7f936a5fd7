//! The host agent's HTTP API (like flynn-host's), with the cluster key as bearer token (the
//! controller's check, [`crate::api::auth`]). Its address is the `api` of the host's record,
//! where the `flynn` CLI reaches it directly (`flynn run`, `flynn log`):
//!
//! - `GET /ping`: `OK` (no key needed).
//! - `GET /jobs`: the containers of this host's jobs ([`JobView`]).
//! - `GET /jobs/{id}/logs?follow=true&tail=N`: the job's `docker logs`, one JSON
//!   [`LogLine`](super::run::LogLine) per line; with `follow`, until the job ends. A job whose
//!   container is gone: the end of its output as kept ([`super::tails`]).
//! - `GET /finished?app=ID`: the finished jobs of an app whose output is kept here.
//! - `POST /runs` ([`RunRequest`]): a one-off job. With `Connection: Upgrade` and
//!   `Upgrade: flynn-attach`, the answer is `101` and the connection carries the client's stdin
//!   up and the job's output down as frames ([`super::run::Frame`]), ending with its exit status;
//!   without, the job runs detached and the answer is the job (`201`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::docker::{LABEL_APP_NAME, LABEL_HOST, LABEL_JOB, LABEL_RELEASE, LABEL_TYPE};
use super::run::{self, RunError, RunRequest, Runs};
use super::Ctx;
use crate::api::ErrorBody;

/// The `Upgrade` token of an attached `POST /runs`.
pub const ATTACH_PROTOCOL: &str = "flynn-attach";
/// The header of the answer to `POST /runs` naming the job.
pub const JOB_HEADER: &str = "flynn-job-id";

#[derive(Clone)]
struct Agent {
    ctx: Arc<Ctx>,
    runs: Runs,
    key: Arc<str>,
}

/// A container of one of this host's jobs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    pub container_id: String,
    pub app_name: String,
    pub release_id: String,
    #[serde(rename = "type")]
    pub process_type: String,
    pub running: bool,
}

/// Serves the agent's API on `listener` for the life of the agent; also stops the one-off
/// jobs that `flynn kill` marks.
pub(crate) async fn serve(ctx: Arc<Ctx>, listener: tokio::net::TcpListener, key: String) {
    let runs = Runs::default();
    tokio::spawn(run::watch_kills(ctx.clone(), runs.clone()));
    let agent = Agent {
        ctx,
        runs,
        key: key.into(),
    };
    let app = Router::new()
        .route("/ping", get(|| async { "OK\n" }))
        .route("/jobs", get(jobs))
        .route("/jobs/{id}/logs", get(logs))
        .route("/finished", get(finished))
        .route("/runs", post(run_job))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            agent.clone(),
            require_key,
        ))
        .with_state(agent);
    // The controller's server: a request-head deadline, a head size cap, TCP keep-alive.
    let options = crate::api::ServeOptions {
        name: "host agent",
        ..Default::default()
    };
    if let Err(e) = crate::api::serve(listener, app, options).await {
        tracing::error!(error = %e, "the host agent's API stopped");
    }
}

/// Binds the agent's API listener: `addr`, else the external IP on a free port.
pub fn bind(
    addr: Option<SocketAddr>,
    external_ip: std::net::IpAddr,
) -> std::io::Result<std::net::TcpListener> {
    let addr = addr.unwrap_or(SocketAddr::new(external_ip, 0));
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The address to put in the host's record: the bound one, with the external IP in place of
/// an unspecified one.
pub fn advertised(bound: SocketAddr, external_ip: std::net::IpAddr) -> String {
    if bound.ip().is_unspecified() {
        SocketAddr::new(external_ip, bound.port()).to_string()
    } else {
        bound.to_string()
    }
}

async fn require_key(State(agent): State<Agent>, request: Request, next: Next) -> Response {
    if request.uri().path() == "/ping"
        || crate::api::auth::authorized(request.headers(), &agent.key)
    {
        return next.run(request).await;
    }
    error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid cluster key is required (Authorization: Bearer <key>)",
    )
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = ErrorBody {
        code: code.to_owned(),
        message: message.into(),
        detail: None,
    };
    (status, Json(body)).into_response()
}

fn run_error(e: RunError) -> Response {
    match e {
        RunError::Invalid(m) => error(StatusCode::BAD_REQUEST, "validation_error", m),
        RunError::Failed(m) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", m),
    }
}

async fn jobs(State(agent): State<Agent>) -> Response {
    match agent
        .ctx
        .engine
        .find(LABEL_HOST, &agent.ctx.config.id)
        .await
    {
        Ok(found) => {
            let label =
                |c: &super::docker::Found, l: &str| c.labels.get(l).cloned().unwrap_or_default();
            let views: Vec<JobView> = found
                .iter()
                .map(|c| JobView {
                    id: label(c, LABEL_JOB),
                    container_id: c.id.clone(),
                    app_name: label(c, LABEL_APP_NAME),
                    release_id: label(c, LABEL_RELEASE),
                    process_type: label(c, LABEL_TYPE),
                    running: c.running,
                })
                .collect();
            Json(views).into_response()
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
    }
}

#[derive(Deserialize)]
struct LogParams {
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    tail: Option<u64>,
}

async fn logs(
    State(agent): State<Agent>,
    Path(id): Path<String>,
    Query(params): Query<LogParams>,
) -> Response {
    let found = match agent.ctx.engine.find(LABEL_JOB, &id).await {
        Ok(found) => found,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            )
        }
    };
    let container = found
        .into_iter()
        .find(|c| c.labels.get(LABEL_HOST) == Some(&agent.ctx.config.id));
    let lines = match container {
        Some(container) => {
            run::logs(&agent.ctx.engine, &container.id, params.follow, params.tail).boxed()
        }
        None => {
            let Some(kept) = agent.ctx.tails.read(&id).await else {
                return error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("job {id} has no container on host {}", agent.ctx.config.id),
                );
            };
            let mut lines = kept.lines;
            if let Some(n) = params.tail {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                lines.drain(..lines.len().saturating_sub(n));
            }
            futures::stream::iter(lines).boxed()
        }
    };
    let lines = lines.map(|line| {
        let mut json = serde_json::to_vec(&line).unwrap_or_default();
        json.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(json))
    });
    let mut response = Response::new(Body::from_stream(lines));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

#[derive(Deserialize)]
struct FinishedParams {
    app: String,
}

/// The finished jobs of an app whose output is kept here.
async fn finished(State(agent): State<Agent>, Query(params): Query<FinishedParams>) -> Response {
    Json(agent.ctx.tails.jobs_of(&params.app).await).into_response()
}

fn wants_attach(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(ATTACH_PROTOCOL))
}

async fn run_job(State(agent): State<Agent>, mut request: Request) -> Response {
    let attach = wants_attach(request.headers());
    let upgrade = attach.then(|| hyper::upgrade::on(&mut request));
    let body = match axum::body::to_bytes(request.into_body(), crate::api::BODY_LIMIT).await {
        Ok(body) => body,
        Err(e) => return error(StatusCode::BAD_REQUEST, "validation_error", e.to_string()),
    };
    let run_request: RunRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "validation_error",
                format!("invalid request body: {e}"),
            )
        }
    };
    let ctx = agent.ctx.clone();
    let created = match run::create(&ctx, &agent.runs, &run_request, attach).await {
        Ok(created) => created,
        Err(e) => return run_error(e),
    };
    let job = created.job.clone();
    tracing::info!(job = %job.id, app = %job.app_name, args = ?run_request.args, attach, "running a one-off job");
    let Some(upgrade) = upgrade else {
        if let Err(e) = run::start(&ctx, &agent.runs, &created).await {
            return run_error(e);
        }
        tokio::spawn(run::supervise(ctx, agent.runs.clone(), created, None, None));
        return (StatusCode::CREATED, Json(job)).into_response();
    };
    let attached = match run::attach(&ctx, &created).await {
        Ok(attached) => attached,
        Err(e) => {
            ctx.engine.remove(&created.container).await;
            let _ = ctx.db.delete(&ctx.db.run(&ctx.config.id, &job.id)).await;
            agent.runs.remove(&job.id);
            return run_error(e);
        }
    };
    if let Err(e) = run::start(&ctx, &agent.runs, &created).await {
        return run_error(e);
    }
    let (status_tx, status_rx) = oneshot::channel();
    let (pumped_tx, pumped_rx) = oneshot::channel();
    let runs = agent.runs.clone();
    tokio::spawn(run::supervise(
        ctx,
        runs.clone(),
        created,
        Some(status_tx),
        Some(pumped_rx),
    ));
    let job_id = job.id.clone();
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                run::pump(attached, TokioIo::new(upgraded), status_rx, runs, job_id).await;
            }
            Err(e) => {
                tracing::warn!(job = %job_id, error = %e, "the attach upgrade failed; stopping the job");
                runs.stop(&job_id);
            }
        }
        let _ = pumped_tx.send(());
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(ATTACH_PROTOCOL));
    if let Ok(value) = HeaderValue::from_str(&job.id) {
        headers.insert(JOB_HEADER, value);
    }
    response
}
