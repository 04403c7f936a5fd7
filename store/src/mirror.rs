//! A watch that never silently loses an event.
//!
//! [`run`] lists a prefix, then watches it from the next revision. When the watch breaks it resumes
//! from the last revision it delivered; when that revision has been compacted away it lists again
//! and sends a [`MirrorEvent::Reset`] that replaces everything the consumer had for the prefix.
//! While the store is unreachable it retries with a capped exponential back-off and says so with
//! [`MirrorEvent::Disconnected`]; the consumer keeps its last state meanwhile.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;

use crate::{KeyValue, Listing, Revision, Store, StoreError, WatchEvent};

/// What a mirror tells its consumer, in store order for its prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MirrorEvent {
    /// Every key of the prefix at `listing.revision`: replaces all earlier state.
    Reset(Listing),
    Put(KeyValue),
    Delete {
        key: String,
        mod_revision: Revision,
    },
    /// The watch is established (again); changes flow live from here.
    Connected,
    /// The store is unreachable or the watch broke; the mirror is retrying.
    Disconnected(String),
}

impl From<WatchEvent> for MirrorEvent {
    fn from(event: WatchEvent) -> Self {
        match event {
            WatchEvent::Put(kv) => MirrorEvent::Put(kv),
            WatchEvent::Delete { key, mod_revision } => MirrorEvent::Delete { key, mod_revision },
        }
    }
}

/// Retry pacing for a mirror.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

/// Starts a mirror of `prefix` on the current runtime; it ends when `tx` is closed.
pub fn spawn(
    store: Arc<dyn Store>,
    prefix: String,
    tx: mpsc::Sender<MirrorEvent>,
    backoff: Backoff,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(store, prefix, tx, backoff))
}

/// Mirrors `prefix` into `tx` until `tx` is closed.
pub async fn run(
    store: Arc<dyn Store>,
    prefix: String,
    tx: mpsc::Sender<MirrorEvent>,
    backoff: Backoff,
) {
    let mut delay = backoff.initial;
    // Where the next watch starts; None: list first.
    let mut resume: Option<Revision> = None;
    loop {
        let from = match resume {
            Some(from) => from,
            None => match store.range(&prefix).await {
                Ok(listing) => {
                    let from = listing.revision + 1;
                    if tx.send(MirrorEvent::Reset(listing)).await.is_err() {
                        return;
                    }
                    from
                }
                Err(e) => {
                    if !pause(&tx, e, &mut delay, backoff).await {
                        return;
                    }
                    continue;
                }
            },
        };
        resume = Some(from);
        let mut stream = match store.watch(&prefix, from).await {
            Ok(stream) => stream,
            Err(StoreError::Compacted { .. }) => {
                resume = None;
                continue;
            }
            Err(e) => {
                if !pause(&tx, e, &mut delay, backoff).await {
                    return;
                }
                continue;
            }
        };
        if tx.send(MirrorEvent::Connected).await.is_err() {
            return;
        }
        delay = backoff.initial;
        let broke = loop {
            let item = tokio::select! {
                item = stream.next() => item,
                // Nobody listens any more: stop now rather than at the next change.
                _ = tx.closed() => return,
            };
            match item {
                Some(Ok(event)) => {
                    resume = Some(event.revision() + 1);
                    if tx.send(event.into()).await.is_err() {
                        return;
                    }
                }
                Some(Err(StoreError::Compacted { .. })) => {
                    resume = None;
                    break None;
                }
                Some(Err(e)) => break Some(e),
                None => break Some(StoreError::Unavailable("watch stream ended".into())),
            }
        };
        if let Some(e) = broke {
            if !pause(&tx, e, &mut delay, backoff).await {
                return;
            }
        }
    }
}

/// Reports the failure and sleeps; false when the consumer has gone.
async fn pause(
    tx: &mpsc::Sender<MirrorEvent>,
    error: StoreError,
    delay: &mut Duration,
    backoff: Backoff,
) -> bool {
    tracing::warn!(%error, retry_in = ?*delay, "store watch interrupted");
    if tx
        .send(MirrorEvent::Disconnected(error.to_string()))
        .await
        .is_err()
    {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(*delay) => {}
        _ = tx.closed() => return false,
    }
    *delay = (*delay * 2).min(backoff.max);
    true
}
