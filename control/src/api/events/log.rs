//! The controller's index of the recorded events: for each one its id, key, object type, app,
//! size and time, not its data (a hundred bytes or so an event, whatever the event holds).
//!
//! One task keeps it: it lists the events prefix, then watches it, and lists again whenever the
//! watch breaks. Readers walk the index in id order and fetch the values they want from the
//! store a page at a time, so no reader holds more than a page of history, and the history
//! itself is held by the store only. Since only the watch adds entries, and a watch delivers in
//! revision order, an id below one already in the index never appears later: a reader that has
//! passed id N has seen, or skipped by its filter, every event up to N.
//!
//! Retention: a second task deletes the oldest events while there are more than
//! [`Retention::max_count`], or their values take more than [`Retention::max_bytes`], and those
//! older than [`Retention::max_age`]. Several controllers sharing one etcd all prune; the
//! deletes are the same and harmless twice.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flynn_store::{KeyValue, Revision, WatchEvent};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::{watch, Notify};

use super::Filter;
use crate::api::db::Db;
use crate::api::metrics::Metrics;

/// How much history the store keeps.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub max_count: usize,
    /// Bytes of the stored values.
    pub max_bytes: u64,
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_count: 10_000,
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// How often the age limit is checked when nothing else triggers a pruning.
const AGE_CHECK: Duration = Duration::from_secs(60);
/// Pause before listing again after a store failure.
const RETRY: Duration = Duration::from_secs(1);
/// Index entries a reader's page may look at (matching or not) under the lock.
const SCAN: usize = 4096;

/// One recorded event, without its data.
#[derive(Debug)]
struct Entry {
    key: Arc<str>,
    object_type: Box<str>,
    app: Option<Box<str>>,
    bytes: u64,
    /// Unix milliseconds.
    created_ms: u64,
}

#[derive(Debug, Default)]
struct Index {
    /// The first listing is in.
    ready: bool,
    /// Every event up to this revision is in the index.
    progress: Revision,
    by_id: BTreeMap<i64, Entry>,
    ids: HashMap<Arc<str>, i64>,
    bytes: u64,
}

/// What the head of an event value says; its data is skipped, not parsed.
#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    app: Option<String>,
    object_type: String,
    #[serde(default)]
    created_at: String,
}

impl Index {
    fn insert(&mut self, kv: &KeyValue) {
        let Ok(head) = serde_json::from_slice::<Head>(&kv.value) else {
            tracing::warn!(key = kv.key, "skipping an event that does not parse");
            return;
        };
        self.remove(&kv.key);
        let created_ms = humantime::parse_rfc3339_weak(&head.created_at)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        let key: Arc<str> = Arc::from(kv.key.as_str());
        let entry = Entry {
            key: key.clone(),
            object_type: head.object_type.into(),
            app: head.app.map(Into::into),
            bytes: kv.value.len() as u64,
            created_ms,
        };
        self.bytes += entry.bytes;
        self.ids.insert(key, kv.create_revision);
        self.by_id.insert(kv.create_revision, entry);
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let id = self.ids.remove(key)?;
        let entry = self.by_id.remove(&id)?;
        self.bytes -= entry.bytes;
        Some(entry)
    }

    fn over(&self, limits: &Retention, now_ms: u64) -> bool {
        let max_age_ms = limits.max_age.as_millis() as u64;
        self.by_id.len() > limits.max_count
            || self.bytes > limits.max_bytes
            || self
                .by_id
                .first_key_value()
                .is_some_and(|(_, e)| e.created_ms.saturating_add(max_age_ms) < now_ms)
    }
}

/// Ids and keys of events, in id order.
pub type Selection = Vec<(i64, Arc<str>)>;

/// What a reader gets for one page.
#[derive(Debug, Default)]
pub struct Page {
    /// The index is not loaded yet: wait for a change and ask again.
    pub loading: bool,
    /// The matching events, in id order.
    pub events: Selection,
    /// The bytes of their stored values.
    pub bytes: u64,
    /// The highest id looked at: the reader has seen everything up to here.
    pub through: i64,
}

/// The index, shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct EventLog(Arc<Inner>);

struct Inner {
    db: Db,
    retention: Retention,
    metrics: Arc<Metrics>,
    index: Mutex<Index>,
    /// Bumped on every change of the index.
    changed: watch::Sender<u64>,
    prune: Notify,
    started: OnceLock<()>,
}

impl EventLog {
    pub fn new(db: Db, retention: Retention, metrics: Arc<Metrics>) -> EventLog {
        EventLog(Arc::new(Inner {
            db,
            retention,
            metrics,
            index: Mutex::new(Index::default()),
            changed: watch::Sender::new(0),
            prune: Notify::new(),
            started: OnceLock::new(),
        }))
    }

    /// Starts the tasks that keep the index and prune the history, once; needs a runtime.
    pub fn start(&self) {
        self.0.started.get_or_init(|| {
            tokio::spawn(follow(self.0.clone()));
            tokio::spawn(prune(self.0.clone()));
        });
    }

    /// Told of every change of the index.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.start();
        self.0.changed.subscribe()
    }

    /// Waits (up to `within`) until the index holds every event up to `revision`: what a
    /// change recorded through this controller waits for, so that whoever made it reads it
    /// back at once.
    pub async fn caught_up(&self, revision: Revision, within: Duration) -> bool {
        let mut changes = self.changes();
        let wait = async {
            loop {
                if lock(&self.0.index).progress >= revision {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(within, wait).await.is_ok()
    }

    /// Up to `limit` matching events after id `after`, and no more than `max_bytes` of them
    /// (but always one, however large).
    pub fn page(&self, after: i64, filter: &Filter, limit: usize, max_bytes: u64) -> Page {
        self.start();
        let index = lock(&self.0.index);
        if !index.ready {
            return Page {
                loading: true,
                ..Page::default()
            };
        }
        let mut page = Page {
            through: after,
            ..Page::default()
        };
        let range = index
            .by_id
            .range((Bound::Excluded(after), Bound::Unbounded))
            .take(SCAN);
        for (&id, entry) in range {
            if filter.matches(&entry.object_type, entry.app.as_deref()) {
                if !page.events.is_empty() && page.bytes + entry.bytes > max_bytes {
                    // Not looked at after all: the next page starts with it.
                    break;
                }
                page.through = id;
                page.events.push((id, entry.key.clone()));
                page.bytes += entry.bytes;
                if page.events.len() == limit {
                    break;
                }
                continue;
            }
            page.through = id;
        }
        page
    }

    /// Every matching event after `after` (only the latest `count` when given); None while
    /// the index is loading.
    pub fn select(&self, after: i64, filter: &Filter, count: Option<usize>) -> Option<Selection> {
        self.start();
        let index = lock(&self.0.index);
        if !index.ready {
            return None;
        }
        let matching = index
            .by_id
            .range((Bound::Excluded(after), Bound::Unbounded))
            .filter(|(_, e)| filter.matches(&e.object_type, e.app.as_deref()));
        let mut selection: Selection = match count {
            // The latest `count`: walk back from the end.
            Some(count) => {
                let mut latest: Selection = matching
                    .rev()
                    .take(count)
                    .map(|(&id, e)| (id, e.key.clone()))
                    .collect();
                latest.reverse();
                latest
            }
            None => matching.map(|(&id, e)| (id, e.key.clone())).collect(),
        };
        selection.shrink_to_fit();
        Some(selection)
    }

    /// Waits until the index is loaded.
    pub async fn loaded(&self) {
        let mut changes = self.changes();
        while !lock(&self.0.index).ready {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }
}

impl Inner {
    fn changed(&self, index: &Index) {
        self.metrics.events_retained.set(index.by_id.len() as i64);
        self.metrics.events_retained_bytes.set(index.bytes as i64);
        if index.over(&self.retention, now_ms()) {
            self.prune.notify_one();
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Removes the oldest entries over the limits from the index; their keys, to delete.
    fn take_excess(&self) -> Vec<Arc<str>> {
        let mut index = lock(&self.index);
        if !index.ready {
            return Vec::new();
        }
        let now = now_ms();
        let mut excess = Vec::new();
        while index.over(&self.retention, now) {
            let Some((_, entry)) = index.by_id.pop_first() else {
                break;
            };
            index.ids.remove(&entry.key);
            index.bytes -= entry.bytes;
            excess.push(entry.key);
        }
        if !excess.is_empty() {
            self.changed(&index);
        }
        excess
    }
}

/// Keeps the index: list, then watch; list again whenever the watch breaks.
async fn follow(inner: Arc<Inner>) {
    let prefix = inner.db.events();
    loop {
        let listing = match inner.db.store.range(&prefix).await {
            Ok(listing) => listing,
            Err(e) => {
                tracing::warn!(error = %e, "events: cannot list the events; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let revision = listing.revision;
        {
            let mut index = Index {
                ready: true,
                progress: revision,
                ..Index::default()
            };
            for kv in listing.kvs {
                index.insert(&kv);
            }
            let mut shared = lock(&inner.index);
            *shared = index;
            inner.changed(&shared);
        }
        let mut watch = match inner.db.store.watch(&prefix, revision + 1).await {
            Ok(watch) => watch,
            Err(e) => {
                tracing::warn!(error = %e, "events: cannot watch the events; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        while let Some(item) = watch.next().await {
            let event = match item {
                Ok(event) => event,
                Err(e) => {
                    tracing::debug!(error = %e, "events: the watch ended; listing again");
                    break;
                }
            };
            let mut index = lock(&inner.index);
            index.progress = index.progress.max(event.revision());
            match event {
                WatchEvent::Put(kv) => index.insert(&kv),
                WatchEvent::Delete { key, .. } => {
                    index.remove(&key);
                }
            }
            inner.changed(&index);
        }
    }
}

/// Deletes what is over the retention limits, when told to, and every [`AGE_CHECK`] (or a
/// quarter of the age limit when that is shorter) for the age limit.
async fn prune(inner: Arc<Inner>) {
    let every = (inner.retention.max_age / 4).clamp(Duration::from_millis(100), AGE_CHECK);
    loop {
        tokio::select! {
            () = inner.prune.notified() => {}
            () = tokio::time::sleep(every) => {}
        }
        for key in inner.take_excess() {
            match inner.db.delete(&key).await {
                Ok(_) => inner.metrics.events_pruned.inc(),
                Err(e) => {
                    // Still in the store, so back in the index with the next listing.
                    tracing::warn!(error = %e, "events: cannot prune old events");
                    break;
                }
            }
        }
    }
}

fn lock(index: &Mutex<Index>) -> MutexGuard<'_, Index> {
    index.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
