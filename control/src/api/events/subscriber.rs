//! One `/events` stream: a task walks the event index from the subscriber's last id, fetches a
//! page of events from the store, and hands them to the response through a channel.
//!
//! - Memory: the events between the store and the client's socket take at most
//!   [`BUFFER_BYTES`] (or one event, when a single one is larger), whatever the size of the
//!   history: a page is fetched only once the bytes it needs are free, and they are freed as
//!   the response takes the events (hyper then holds up to 64 KiB more, and the kernel the
//!   socket's buffer).
//! - A subscriber that stops reading leaves no room for the next page; once the stall timeout
//!   has passed without room, the stream ends with the event `error` (`{"code":
//!   "fell_behind", "message", "detail": {"last_event_id"}}`) after what is already buffered,
//!   and if the client has not read that either within the same time, its connection is
//!   closed. Either way the task and its buffers are gone; the client reconnects with
//!   `Last-Event-ID` (or `since_id`).
//! - A client that goes away ends the response, which ends the task at once: it waits on the
//!   channel's receiver as well as on the store.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::response::sse;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::log::EventLog;
use super::{decode, Filter};
use crate::api::db::Db;
use crate::api::error::ErrorBody;
use crate::api::metrics::Metrics;
use crate::api::serve::Connection;

/// Bytes of events a subscriber holds at most, fetched or waiting for the client.
pub const BUFFER_BYTES: usize = 128 << 10;
/// Events of a page at most.
const PAGE: usize = 64;
/// Events in the channel at most (several pages of small events).
const QUEUE: usize = 4 * PAGE;
/// Events of a page asked of the store at once.
const FETCHING: usize = 8;
/// Pause before a retry after a store failure.
const RETRY: Duration = Duration::from_secs(1);

pub type SseItem = Result<sse::Event, Infallible>;

/// What a subscriber task needs.
pub struct Subscriber {
    pub db: Db,
    pub log: EventLog,
    pub metrics: Arc<Metrics>,
    pub filter: Filter,
    /// The last id the client has seen.
    pub last: i64,
    pub stall_timeout: Duration,
    /// The client's connection, to close when it stops reading (absent in in-process tests).
    pub connection: Option<Connection>,
}

/// An event on its way to the client; the last of a page frees the page's bytes.
type Queued = (sse::Event, Option<OwnedSemaphorePermit>);

/// The response body of a subscription: the events, then the last words if it fell behind.
pub struct Subscription {
    events: mpsc::Receiver<Queued>,
    last_words: Arc<Mutex<Option<sse::Event>>>,
    /// Dropped with the response: tells the task the client has gone.
    _alive: oneshot::Sender<()>,
}

impl Stream for Subscription {
    type Item = SseItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SseItem>> {
        match self.events.poll_recv(cx) {
            // The permit goes here: the bytes are the response's now.
            Poll::Ready(Some((event, _permit))) => Poll::Ready(Some(Ok(event))),
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                let last = self
                    .last_words
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                Poll::Ready(last.map(Ok))
            }
        }
    }
}

impl Subscriber {
    /// Starts the task; the stream to answer with.
    pub fn spawn(self) -> Subscription {
        let (tx, events) = mpsc::channel(QUEUE);
        let (alive, gone) = oneshot::channel();
        let last_words = Arc::new(Mutex::new(None));
        tokio::spawn(self.run(tx, gone, last_words.clone()));
        Subscription {
            events,
            last_words,
            _alive: alive,
        }
    }

    async fn run(
        mut self,
        tx: mpsc::Sender<Queued>,
        mut gone: oneshot::Receiver<()>,
        last_words: Arc<Mutex<Option<sse::Event>>>,
    ) {
        self.metrics.event_subscribers.inc();
        let _live = Live(self.metrics.clone());
        let fell_behind = tokio::select! {
            fell_behind = self.follow(&tx) => fell_behind,
            _ = &mut gone => false,
        };
        if !fell_behind {
            return;
        }
        self.metrics.event_subscribers_dropped.inc();
        tracing::info!(
            last_event_id = self.last,
            "events: a subscriber stopped reading; ending its stream"
        );
        let body = ErrorBody {
            code: "fell_behind".to_owned(),
            message: format!(
                "this subscriber fell behind: reconnect with Last-Event-ID: {} (or since_id={})",
                self.last, self.last
            ),
            detail: Some(serde_json::json!({ "last_event_id": self.last })),
        };
        let data = serde_json::to_string(&body).unwrap_or_default();
        *last_words.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(sse::Event::default().event("error").data(data));
        // The stream ends after what it holds and the last words...
        drop(tx);
        // ...if the client reads them; if not, its connection goes.
        let read = tokio::time::timeout(self.stall_timeout, &mut gone).await;
        if read.is_err() {
            if let Some(connection) = &self.connection {
                connection.close();
            }
        }
    }

    /// Sends every matching event after `last`, then follows new ones, until the client goes
    /// away (false) or stops reading (true).
    async fn follow(&mut self, tx: &mpsc::Sender<Queued>) -> bool {
        let budget = Arc::new(Semaphore::new(BUFFER_BYTES));
        let mut changes = self.log.changes();
        loop {
            changes.mark_unchanged();
            let page = self
                .log
                .page(self.last, &self.filter, PAGE, BUFFER_BYTES as u64);
            if page.events.is_empty() {
                if page.loading || page.through == self.last {
                    tokio::select! {
                        changed = changes.changed() => if changed.is_err() { return false },
                        () = tx.closed() => return false,
                    }
                }
                self.last = self.last.max(page.through);
                continue;
            }
            // Room for the page first: a client that reads nothing never gets it.
            let want = page.bytes.clamp(1, BUFFER_BYTES as u64) as u32;
            let room = tokio::select! {
                room = tokio::time::timeout(
                    self.stall_timeout,
                    budget.clone().acquire_many_owned(want),
                ) => room,
                () = tx.closed() => return false,
            };
            let Ok(Ok(room)) = room else {
                return true;
            };
            let Some(events) = self.fetch(page.events, tx).await else {
                return false;
            };
            let mut room = Some(room);
            let count = events.len();
            for (i, (id, event)) in events.into_iter().enumerate() {
                let permit = if i + 1 == count { room.take() } else { None };
                match self.send(tx, (event, permit)).await {
                    Sent::Yes => self.last = id,
                    Sent::Gone => return false,
                    Sent::Stalled => return true,
                }
            }
            self.last = self.last.max(page.through);
        }
    }

    /// The events of a page, from the store (those pruned meanwhile left out); None if the
    /// client went away while the store was failing.
    async fn fetch(
        &self,
        page: super::log::Selection,
        tx: &mpsc::Sender<Queued>,
    ) -> Option<Vec<(i64, sse::Event)>> {
        loop {
            let fetched: Vec<_> = futures::stream::iter(page.iter().cloned())
                .map(|(id, key)| {
                    let db = self.db.clone();
                    async move { (id, db.store.get(&key).await) }
                })
                .buffered(FETCHING)
                .collect()
                .await;
            let mut events = Vec::with_capacity(fetched.len());
            let mut failed = None;
            for (id, got) in fetched {
                match got {
                    Ok(Some(kv)) => {
                        if let Some(event) = decode(kv).and_then(|e| sse_event(&e)) {
                            events.push((id, event));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            let Some(e) = failed else {
                return Some(events);
            };
            tracing::warn!(error = %e, "events: cannot read events; retrying");
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                () = tx.closed() => return None,
            }
        }
    }

    async fn send(&self, tx: &mpsc::Sender<Queued>, item: Queued) -> Sent {
        match tokio::time::timeout(self.stall_timeout, tx.reserve()).await {
            Ok(Ok(permit)) => {
                permit.send(item);
                Sent::Yes
            }
            Ok(Err(_)) => Sent::Gone,
            Err(_) => Sent::Stalled,
        }
    }
}

enum Sent {
    Yes,
    Gone,
    Stalled,
}

/// Counts a live subscriber for as long as its task runs.
struct Live(Arc<Metrics>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.event_subscribers.dec();
    }
}

pub fn sse_event(event: &super::Event) -> Option<sse::Event> {
    let data = serde_json::to_string(event).ok()?;
    Some(sse::Event::default().id(event.id.to_string()).data(data))
}
