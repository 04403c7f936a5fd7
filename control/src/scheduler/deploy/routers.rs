//! What the live routers serve: each router registers `<prefix>/routers/<id>` =
//! `{"id","admin"}` under its lease, and its admin listener answers `GET /backends?service=S`
//! with the instances its current table serves and those with requests in flight. Deploys
//! (backend-up) and host agents stopping a job (backend-drained) ask every one of them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use crate::api::db::Db;

/// How long one router's admin listener has to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);
/// How often routers are asked again while waiting.
const POLL: Duration = Duration::from_millis(50);

/// A router's registration.
#[derive(Clone, Debug, Deserialize)]
pub struct RouterRef {
    pub id: String,
    pub admin: String,
}

/// What one router said about one service.
#[derive(Clone, Debug, Default)]
pub struct Served {
    /// Instance ids its table serves.
    pub serves: BTreeSet<String>,
    /// Instance ids with requests in flight (in its table or no longer).
    pub in_flight: BTreeSet<String>,
}

/// Each live router's answer (None: it did not answer).
pub type Views = Vec<(RouterRef, Option<Served>)>;

#[derive(Deserialize)]
struct Backends {
    #[serde(default)]
    services: std::collections::BTreeMap<String, Vec<BackendView>>,
    #[serde(default)]
    in_flight: Vec<BackendView>,
}

#[derive(Deserialize)]
struct BackendView {
    id: String,
}

/// The routers registered now.
pub async fn live(db: &Db) -> anyhow::Result<Vec<RouterRef>> {
    let prefix = format!("{}/routers/", db.keys.prefix());
    Ok(db
        .list::<RouterRef>(&prefix)
        .await?
        .into_iter()
        .map(|v| v.value)
        .collect())
}

/// Asks every live router about `service`.
pub async fn ask_all(db: &Db, service: &str) -> anyhow::Result<Views> {
    let routers = live(db).await?;
    let answers = futures::future::join_all(routers.iter().map(|r| ask(&r.admin, service))).await;
    Ok(routers
        .into_iter()
        .zip(answers)
        .map(|(router, answer)| {
            let answer = answer
                .inspect_err(
                    |e| tracing::debug!(router = %router.id, error = %e, "a router did not answer"),
                )
                .ok();
            (router, answer)
        })
        .collect())
}

/// Every router serves `id` (vacuously true with no router).
pub fn all_serve(views: &Views, id: &str) -> bool {
    views
        .iter()
        .all(|(_, v)| v.as_ref().is_some_and(|v| v.serves.contains(id)))
}

/// No router serves `id` or has anything in flight on it; the routers that do not answer, or
/// still hold it, by id.
pub fn not_drained<'a>(views: &'a Views, id: &str) -> Vec<&'a str> {
    views
        .iter()
        .filter(|(_, v)| {
            v.as_ref()
                .is_none_or(|v| v.serves.contains(id) || v.in_flight.contains(id))
        })
        .map(|(r, _)| r.id.as_str())
        .collect()
}

/// Waits until no live router serves instance `id` of `service` or has a request in flight on
/// it, at most `timeout`; false if some router still did then.
pub async fn wait_drained(db: &Db, service: &str, id: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let holding = match ask_all(db, service).await {
            Ok(views) => not_drained(&views, id)
                .into_iter()
                .map(str::to_owned)
                .collect(),
            Err(e) => vec![format!("(the store: {e})")],
        };
        if holding.is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            tracing::warn!(%service, instance = %id, routers = ?holding,
                "routers did not drain the instance in time; stopping it anyway");
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `GET http://<admin>/backends?service=<service>`.
async fn ask(admin: &str, service: &str) -> anyhow::Result<Served> {
    tokio::time::timeout(ASK_TIMEOUT, ask_inner(admin, service))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {ASK_TIMEOUT:?}"))?
}

async fn ask_inner(admin: &str, service: &str) -> anyhow::Result<Served> {
    let stream = tokio::net::TcpStream::connect(admin).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let request = Request::get(format!(
        "/backends?service={}",
        crate::cli::client::segment(service)
    ))
    .header(http::header::HOST, admin)
    .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    driver.abort();
    anyhow::ensure!(status.is_success(), "{status}");
    let backends: Backends = serde_json::from_slice(&body)?;
    Ok(Served {
        serves: backends
            .services
            .get(service)
            .into_iter()
            .flatten()
            .map(|b| b.id.clone())
            .collect(),
        in_flight: backends.in_flight.into_iter().map(|b| b.id).collect(),
    })
}
