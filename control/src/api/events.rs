//! Events: every change made through the API (apps, releases, artifacts, formations, routes,
//! certificates) is recorded under `<prefix>/events/<uuid>`. An event's id is the store revision
//! that created its key, so ids grow in commit order, even across controllers sharing one
//! etcd, and a reader resumes exactly where it stopped: list the ids above N, then watch from
//! the listing's revision.
//!
//! `GET /events` answers a JSON list, or a Server-Sent Events stream when the client accepts
//! `text/event-stream` (resuming from `Last-Event-Id` or `since_id`).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::ACCEPT;
use axum::http::HeaderMap;
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flynn_store::{KeyValue, WatchEvent};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::db::{self, Db};
use super::error::ApiResult;
use super::extract::Params;
use super::types::Event;
use super::{ApiState, Shared};

/// Events kept; older ones are pruned as new ones arrive.
const RETAIN: usize = 10_000;
/// Pruning runs when a new event's id is a multiple of this.
const PRUNE_EVERY: i64 = 128;

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
        Ok(revision) if revision % PRUNE_EVERY == 0 => {
            if let Err(e) = prune(&state.db).await {
                tracing::warn!(error = %e, "cannot prune old events");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, object_type, object_id, "cannot record an event"),
    }
}

async fn prune(db: &Db) -> ApiResult<()> {
    let mut events = db.store.range(&db.events()).await?.kvs;
    if events.len() <= RETAIN {
        return Ok(());
    }
    events.sort_by_key(|kv| kv.create_revision);
    let excess = events.len() - RETAIN;
    for kv in events.into_iter().take(excess) {
        db.delete(&kv.key).await?;
    }
    Ok(())
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
struct Filter {
    types: Option<BTreeSet<String>>,
    app: Option<String>,
}

impl Filter {
    fn matches(&self, event: &Event) -> bool {
        self.types
            .as_ref()
            .is_none_or(|t| t.contains(&event.object_type))
            && self
                .app
                .as_ref()
                .is_none_or(|a| event.app.as_deref() == Some(a))
    }
}

fn decode(kv: KeyValue) -> Option<Event> {
    let versioned = db::decode::<Event>(kv).ok()?;
    let mut event = versioned.value;
    event.id = versioned.create_revision;
    Some(event)
}

/// The recorded events after `since`, in id order, and the revision they were read at.
async fn after(db: &Db, since: i64, filter: &Filter) -> ApiResult<(Vec<Event>, i64)> {
    let listing = db.store.range(&db.events()).await?;
    let mut events: Vec<Event> = listing
        .kvs
        .into_iter()
        .filter(|kv| kv.create_revision > since)
        .filter_map(decode)
        .filter(|e| filter.matches(e))
        .collect();
    events.sort_by_key(|e| e.id);
    Ok((events, listing.revision))
}

pub async fn get(
    State(state): State<ApiState>,
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
        let (mut events, _) = after(&state.db, since, &filter).await?;
        if let Some(count) = query.count {
            let skip = events.len().saturating_sub(count);
            events.drain(..skip);
        }
        return Ok(Json(events).into_response());
    }
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(follow(state.db.clone(), filter, since, tx));
    let stream = ReceiverStream::new(rx);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

type SseItem = Result<sse::Event, Infallible>;

fn sse_event(event: &Event) -> Option<SseItem> {
    let data = serde_json::to_string(event).ok()?;
    Some(Ok(sse::Event::default()
        .id(event.id.to_string())
        .data(data)))
}

/// Sends every event after `last` to `tx`, then follows new ones until the client goes away.
/// A broken watch (or a store outage) re-lists from the last event sent.
async fn follow(db: Db, filter: Filter, mut last: i64, tx: mpsc::Sender<SseItem>) {
    loop {
        let revision = match after(&db, last, &filter).await {
            Ok((events, revision)) => {
                for event in events {
                    let Some(item) = sse_event(&event) else {
                        continue;
                    };
                    if tx.send(item).await.is_err() {
                        return;
                    }
                    last = event.id;
                }
                revision
            }
            Err(e) => {
                tracing::warn!(error = %e, "event stream: cannot list events; retrying");
                if pause_or_closed(&tx).await {
                    return;
                }
                continue;
            }
        };
        // Whatever was written after the listing, including events that did not match.
        last = last.max(revision);
        let mut watch = match db.store.watch(&db.events(), revision + 1).await {
            Ok(watch) => watch,
            Err(e) => {
                tracing::warn!(error = %e, "event stream: cannot watch events; retrying");
                if pause_or_closed(&tx).await {
                    return;
                }
                continue;
            }
        };
        loop {
            let item = tokio::select! {
                _ = tx.closed() => return,
                item = watch.next() => item,
            };
            match item {
                Some(Ok(WatchEvent::Put(kv))) if kv.create_revision > last => {
                    let id = kv.create_revision;
                    if let Some(event) = decode(kv).filter(|e| filter.matches(e)) {
                        let Some(item) = sse_event(&event) else {
                            continue;
                        };
                        if tx.send(item).await.is_err() {
                            return;
                        }
                    }
                    last = id;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "event stream: watch ended; re-listing");
                    break;
                }
                None => break,
            }
        }
    }
}

/// Waits a moment before a retry; true if the client went away meanwhile.
async fn pause_or_closed(tx: &mpsc::Sender<SseItem>) -> bool {
    tokio::select! {
        _ = tx.closed() => true,
        _ = tokio::time::sleep(Duration::from_secs(1)) => false,
    }
}
