//! The embedded backend: the store in this process, in memory or in a redb file.
//!
//! Same semantics as etcd: one revision counter, create/mod revisions per key, leases with a
//! TTL, compare-and-swap, and prefix watches from a revision. Watches replay a bounded history
//! (the last [`state::HISTORY_LIMIT`] events) and then follow live writes; a watcher that falls
//! too far behind gets an [`StoreError::Unavailable`] item, after the last revision it received
//! in full, and its stream ends.
//!
//! Writes are serialised: plan against the state, commit to the file (on a blocking thread),
//! then apply in memory. Leases expire in a background task on the runtime the store first
//! ran on. On reopen, leases restart their full TTL and the history starts empty.

mod persist;
mod state;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;

use self::state::{Plan, Published, State};
use crate::{
    Cas, KeyValue, LeaseId, Listing, Page, Revision, Store, StoreError, StoreStatus, WatchEvent,
    WatchStream,
};

/// How many live revisions a watcher may lag behind before its stream breaks.
const WATCH_BUFFER: usize = 4096;
/// Pause before the lease reaper retries after a failed write.
const REAPER_RETRY: Duration = Duration::from_secs(1);

/// The in-process store. Cloning gives another handle to the same store.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// [`StoreStatus::id`]: drawn with the file (or the in-memory store).
    id: String,
    state: Mutex<State>,
    /// Held by one writer at a time, from planning to applying.
    writer: Mutex<()>,
    db: Option<redb::Database>,
    events: broadcast::Sender<Published>,
    /// Wakes the lease reaper: a new lease, or the store is gone.
    reaper: Arc<Notify>,
    reaper_started: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reaper.notify_one();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path`. Blocks on file I/O.
    pub fn open(path: impl AsRef<Path>) -> Result<EmbeddedStore, StoreError> {
        let (db, loaded) = persist::open(path.as_ref())?;
        let state = State::new(
            loaded.kvs,
            loaded.revision,
            loaded.next_lease,
            loaded.leases,
        );
        Ok(EmbeddedStore::with_state(state, Some(db), loaded.id))
    }

    /// A store that lives in memory only.
    pub fn in_memory() -> EmbeddedStore {
        let state = State::new(Default::default(), 0, 1, Vec::new());
        EmbeddedStore::with_state(state, None, fresh_id())
    }

    fn with_state(state: State, db: Option<redb::Database>, id: i64) -> EmbeddedStore {
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        let store = EmbeddedStore {
            inner: Arc::new(Inner {
                id: format!("embedded:{id:016x}"),
                state: Mutex::new(state),
                writer: Mutex::new(()),
                db,
                events,
                reaper: Arc::new(Notify::new()),
                reaper_started: AtomicBool::new(false),
            }),
        };
        store.ensure_reaper();
        store
    }

    /// Starts the lease reaper on the current runtime, once.
    fn ensure_reaper(&self) {
        if self.inner.reaper_started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.inner.reaper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(reap(
            Arc::downgrade(&self.inner),
            Arc::clone(&self.inner.reaper),
        ));
    }

    async fn write<T, F>(&self, plan: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut State) -> Plan<T> + Send + 'static,
        T: Send + 'static,
    {
        self.ensure_reaper();
        self.inner.run(plan).await
    }
}

/// A random store id (std's hasher keys come from the OS; the clock and pid are mixed in).
fn fresh_id() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(now);
    hasher.write_u32(std::process::id());
    i64::from_ne_bytes(hasher.finish().to_ne_bytes())
}

impl Inner {
    /// Plans, persists and applies one write while holding the writer lock. Blocks on file I/O.
    fn write_blocking<T>(&self, plan: impl FnOnce(&mut State) -> Plan<T>) -> Result<T, StoreError> {
        let _writer = lock(&self.writer);
        let (batch, answer) = plan(&mut lock(&self.state))?;
        if let Some(batch) = batch {
            if let Some(db) = &self.db {
                persist::commit(db, &batch)?;
            }
            lock(&self.state).apply(batch, &self.events);
        }
        Ok(answer)
    }

    /// Runs a write; with a file, on a blocking thread that finishes even if the caller is
    /// cancelled, so the file and the memory never disagree.
    async fn run<T, F>(self: &Arc<Self>, plan: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut State) -> Plan<T> + Send + 'static,
        T: Send + 'static,
    {
        if self.db.is_none() {
            return self.write_blocking(plan);
        }
        let inner = Arc::clone(self);
        tokio::task::spawn_blocking(move || inner.write_blocking(plan))
            .await
            .map_err(|e| StoreError::Embedded(format!("write task failed: {e}")))?
    }

    /// Ends every lease whose deadline has passed.
    async fn expire_due(self: &Arc<Self>) -> Result<(), StoreError> {
        let due = lock(&self.state).due_leases(Instant::now());
        for id in due {
            self.run(move |state| Ok((state.plan_expire(id, Instant::now()), ())))
                .await?;
        }
        Ok(())
    }
}

/// The lease reaper: sleeps until the next deadline, ends due leases, stops with the store.
async fn reap(inner: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let next = match inner.upgrade() {
            Some(inner) => lock(&inner.state).next_deadline(),
            None => return,
        };
        match next {
            Some(deadline) => tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = wake.notified() => continue,
            },
            None => {
                wake.notified().await;
                continue;
            }
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if let Err(error) = inner.expire_due().await {
            tracing::warn!(%error, "embedded store: ending expired leases failed");
            drop(inner);
            tokio::time::sleep(REAPER_RETRY).await;
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        check_key(key)?;
        self.ensure_reaper();
        Ok(lock(&self.inner.state).kvs.get(key).map(|e| e.to_kv(key)))
    }

    async fn range(&self, prefix: &str) -> Result<Listing, StoreError> {
        self.ensure_reaper();
        let state = lock(&self.inner.state);
        Ok(Listing {
            kvs: state.range(prefix),
            revision: state.revision,
        })
    }

    async fn range_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<Page, StoreError> {
        self.ensure_reaper();
        lock(&self.inner.state).page(prefix, after, limit.max(1), revision)
    }

    async fn status(&self) -> Result<StoreStatus, StoreError> {
        self.ensure_reaper();
        let revision = lock(&self.inner.state).revision;
        Ok(StoreStatus {
            id: self.inner.id.clone(),
            member: self.inner.id.clone(),
            revision,
        })
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        check_key(key)?;
        let key = key.to_owned();
        self.write(move |state| {
            let batch = state.plan_put(key, value, lease)?;
            let revision = batch.revision;
            Ok((Some(batch), revision))
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        let key = key.to_owned();
        self.write(move |state| {
            let batch = state.plan_delete(key);
            let existed = batch.is_some();
            Ok((batch, existed))
        })
        .await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Cas, StoreError> {
        check_key(key)?;
        let key = key.to_owned();
        self.write(move |state| {
            let current = state.kvs.get(&key);
            if current.map_or(0, |e| e.mod_revision) != expected {
                let current = current.map(|e| e.to_kv(&key));
                return Ok((None, Cas::Conflict { current }));
            }
            let batch = state.plan_put(key, value, lease)?;
            let revision = batch.revision;
            Ok((Some(batch), Cas::Swapped { revision }))
        })
        .await
    }

    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<bool, StoreError> {
        check_key(key)?;
        let key = key.to_owned();
        self.write(move |state| {
            let matches = state
                .kvs
                .get(&key)
                .is_some_and(|e| e.mod_revision == expected);
            if !matches {
                return Ok((None, false));
            }
            Ok((state.plan_delete(key), true))
        })
        .await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        self.ensure_reaper();
        let from = from.max(1);
        // Replay and subscribe under one lock: events are published under it too.
        let (replay, live) = {
            let state = lock(&self.inner.state);
            match state.replay(prefix, from) {
                Ok(replay) => (replay, self.inner.events.subscribe()),
                Err(e) => return Ok(Box::pin(futures::stream::iter([Err(e)]))),
            }
        };
        let live = futures::stream::unfold(
            Some(Follower {
                live,
                prefix: prefix.to_owned(),
                from,
                pending: VecDeque::new(),
            }),
            follow,
        );
        Ok(Box::pin(
            futures::stream::iter(replay.into_iter().map(Ok)).chain(live),
        ))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let ttl = ttl.max(Duration::from_millis(1));
        let id = self
            .write(move |state| {
                let mut batch = state.batch();
                let id = batch.next_lease;
                batch.next_lease += 1;
                batch.grant = Some((id, ttl));
                Ok((Some(batch), id))
            })
            .await?;
        self.inner.reaper.notify_one();
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.ensure_reaper();
        lock(&self.inner.state).keep_alive(lease, Instant::now())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.write(move |state| Ok((Some(state.plan_revoke(lease)?), ())))
            .await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.ensure_reaper();
        lock(&self.inner.state).compact(revision)
    }
}

/// Single-key operations need a key, as in etcd; the empty prefix is fine for range and watch.
fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::Rejected("key is not provided".into()));
    }
    Ok(())
}

/// A live watch: the published revisions and the matching events not yet handed out.
struct Follower {
    live: broadcast::Receiver<Published>,
    prefix: String,
    from: Revision,
    pending: VecDeque<WatchEvent>,
}

/// The next live event for a watcher; an error item ends the stream. Every event of a
/// revision is handed out before a lag can end the stream, so resuming after the last event
/// seen loses nothing.
async fn follow(
    watcher: Option<Follower>,
) -> Option<(Result<WatchEvent, StoreError>, Option<Follower>)> {
    let mut watcher = watcher?;
    loop {
        if let Some(event) = watcher.pending.pop_front() {
            return Some((Ok(event), Some(watcher)));
        }
        match watcher.live.recv().await {
            Ok(published) => {
                let Follower {
                    prefix,
                    from,
                    pending,
                    ..
                } = &mut watcher;
                pending.extend(
                    published
                        .iter()
                        .filter(|e| e.revision() >= *from && e.key().starts_with(prefix.as_str()))
                        .map(|e| WatchEvent::clone(e)),
                );
            }
            Err(RecvError::Lagged(missed)) => {
                let error = format!("watcher fell behind by {missed} revisions");
                return Some((Err(StoreError::Unavailable(error)), None));
            }
            Err(RecvError::Closed) => {
                let error = "embedded store closed".to_owned();
                return Some((Err(StoreError::Unavailable(error)), None));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn history_limit_compacts_old_revisions() {
        let store = EmbeddedStore::in_memory();
        lock(&store.inner.state).set_history_limit(3);
        for i in 0..5 {
            store.put("/k", vec![i], None).await.unwrap();
        }
        let mut old = store.watch("/", 1).await.unwrap();
        assert!(matches!(
            old.next().await,
            Some(Err(StoreError::Compacted {
                compact_revision: 3
            }))
        ));
        let mut recent = store.watch("/", 3).await.unwrap();
        let got = recent.next().await.unwrap().unwrap();
        assert_eq!(got.revision(), 3);
    }

    #[tokio::test]
    async fn a_lagging_watcher_breaks_between_revisions() {
        let store = EmbeddedStore::in_memory();
        let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
        store.put("/a", b"a".to_vec(), Some(lease)).await.unwrap();
        store.put("/b", b"b".to_vec(), Some(lease)).await.unwrap();
        let mut watch = store.watch("/", 3).await.unwrap();
        // Revision 3 deletes both keys.
        store.revoke_lease(lease).await.unwrap();
        let deleted = |key: &str| WatchEvent::Delete {
            key: key.into(),
            mod_revision: 3,
        };
        assert_eq!(watch.next().await.unwrap().unwrap(), deleted("/a"));
        for _ in 0..WATCH_BUFFER + 1 {
            store.put("/c", b"c".to_vec(), None).await.unwrap();
        }
        // A consumer that resumes after the break from revision 4 must have seen all of 3.
        assert_eq!(watch.next().await.unwrap().unwrap(), deleted("/b"));
        assert!(matches!(
            watch.next().await,
            Some(Err(StoreError::Unavailable(_)))
        ));
    }

    #[tokio::test]
    async fn a_lagging_watcher_breaks_instead_of_skipping() {
        let store = EmbeddedStore::in_memory();
        let mut watch = store.watch("/", 1).await.unwrap();
        for _ in 0..WATCH_BUFFER + 10 {
            store.put("/k", b"v".to_vec(), None).await.unwrap();
        }
        let mut last = 0;
        loop {
            match watch.next().await {
                Some(Ok(event)) => {
                    assert_eq!(event.revision(), last + 1, "no event skipped");
                    last = event.revision();
                }
                Some(Err(StoreError::Unavailable(_))) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(watch.next().await.is_none());
    }
}
