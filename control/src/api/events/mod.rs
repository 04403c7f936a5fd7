//! Events: every change made through the API (apps, releases, artifacts, formations, routes,
//! certificates) is recorded under `<prefix>/events/<uuid>`. An event's id is the store revision
//! that created its key, so ids grow in commit order, even across controllers sharing one
//! etcd, and a reader resumes exactly where it stopped.
//!
//! `GET /events` answers a JSON list, or a Server-Sent Events stream when the client accepts
//! `text/event-stream` (resuming from `Last-Event-ID` or `since_id`). Neither loads the
//! history: both walk the controller's index of the events ([`log`]) and fetch the events from
//! the store a page at a time; a stream whose client stops reading ends with the event `error`
//! ([`subscriber`]). The history is capped by count, bytes and age ([`Retention`]).

mod log;
mod subscriber;

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::HeaderMap;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use flynn_store::{KeyValue, StoreError};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

pub use self::log::{EventLog, Retention};
use self::subscriber::Subscriber;
use super::db;
use super::error::ApiResult;
use super::extract::Params;
use super::serve::Connection;
use super::types::Event;
use super::{ApiState, Shared};

/// How long a change waits for its event to reach the index, so that its author reads it
/// back at once; past this (a store outage) it answers anyway.
const READ_YOUR_WRITES: Duration = Duration::from_secs(2);
/// How long a JSON list waits for the event index to load (at start-up).
const LOADING: Duration = Duration::from_secs(10);
/// Events of a JSON list asked of the store at once.
const FETCHING: usize = 8;

/// Records a change. The change itself has happened, so a failure here is logged, not returned.
pub async fn record(
    state: &Shared,
    app: Option<&str>,
    object_type: &str,
    object_id: &str,
    data: impl Serialize,
) {
    let event = Event {
        id: 0,
        app: app.map(str::to_owned),
        object_type: object_type.to_owned(),
        object_id: object_id.to_owned(),
        data: serde_json::to_value(data).unwrap_or(serde_json::Value::Null),
        created_at: db::now(),
    };
    let key = format!("{}{}", state.db.events(), uuid::Uuid::new_v4());
    match state.db.put(&key, &event, None).await {
        Ok(revision) => {
            if !state.events.caught_up(revision, READ_YOUR_WRITES).await {
                tracing::warn!(revision, "events: the index is behind the store");
            }
        }
        Err(e) => tracing::error!(error = %e, object_type, object_id, "cannot record an event"),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// Only events after this id.
    #[serde(default)]
    since_id: Option<i64>,
    /// Comma-separated object types.
    #[serde(default)]
    object_types: Option<String>,
    /// Only events of this app (id).
    #[serde(default)]
    app_id: Option<String>,
    /// At most this many: the latest ones.
    #[serde(default)]
    count: Option<usize>,
}

/// Which events a reader wants.
#[derive(Clone, Debug)]
pub struct Filter {
    types: Option<BTreeSet<String>>,
    app: Option<String>,
}

impl Filter {
    fn matches(&self, object_type: &str, app: Option<&str>) -> bool {
        self.types.as_ref().is_none_or(|t| t.contains(object_type))
            && self.app.as_ref().is_none_or(|a| app == Some(a.as_str()))
    }
}

fn decode(kv: KeyValue) -> Option<Event> {
    let versioned = db::decode::<Event>(kv).ok()?;
    let mut event = versioned.value;
    event.id = versioned.create_revision;
    Some(event)
}

pub async fn get(
    State(state): State<ApiState>,
    connection: Option<Extension<Connection>>,
    headers: HeaderMap,
    Params(query): Params<Query>,
) -> ApiResult<Response> {
    let filter = Filter {
        types: query.object_types.as_deref().map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        }),
        app: query.app_id.clone(),
    };
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let since = last_event_id.or(query.since_id).unwrap_or(0);
    let wants_stream = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !wants_stream {
        return list(&state, since, &filter, query.count).await;
    }
    let subscription = Subscriber {
        db: state.db.clone(),
        log: state.events.clone(),
        metrics: state.metrics.clone(),
        filter,
        last: since,
        stall_timeout: state.config.events_stall_timeout,
        connection: connection.map(|Extension(c)| c),
    }
    .spawn();
    Ok(Sse::new(subscription)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// The JSON list, written as the events come from the store, a few at a time.
async fn list(
    state: &Shared,
    since: i64,
    filter: &Filter,
    count: Option<usize>,
) -> ApiResult<Response> {
    let loading = "the event index is still loading";
    if tokio::time::timeout(LOADING, state.events.loaded())
        .await
        .is_err()
    {
        return Err(StoreError::Unavailable(loading.to_owned()).into());
    }
    let selected = state
        .events
        .select(since, filter, count)
        .ok_or_else(|| StoreError::Unavailable(loading.to_owned()))?;
    let db = state.db.clone();
    let events = futures::stream::iter(selected)
        .map(move |(_, key)| {
            let db = db.clone();
            async move { db.store.get(&key).await }
        })
        .buffered(FETCHING)
        .filter_map(|got| async move {
            match got {
                Ok(Some(kv)) => decode(kv).and_then(|e| serde_json::to_vec(&e).ok()).map(Ok),
                // Pruned meanwhile.
                Ok(None) => None,
                // Breaks the body off: the client sees an incomplete answer, not a short list.
                Err(e) => Some(Err(e)),
            }
        });
    let mut first = true;
    let body = futures::stream::once(async { Ok(Bytes::from_static(b"[")) })
        .chain(events.map(move |json| {
            json.map(|mut json| {
                if !std::mem::take(&mut first) {
                    json.insert(0, b',');
                }
                Bytes::from(json)
            })
        }))
        .chain(futures::stream::once(async {
            Ok(Bytes::from_static(b"]"))
        }));
    Ok((
        [(CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response())
}
