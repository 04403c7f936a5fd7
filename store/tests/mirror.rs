//! The mirror (`flynn_store::mirror`) against every backend: it delivers every change under its
//! prefix, resumes a broken watch where it stopped, re-lists when the history it needs has been
//! compacted, and rides out an etcd restart.
//!
//! [`Flaky`] wraps a real store and lets a test break its watches and refuse new ones, so that
//! a broken watch happens exactly where the test wants it, on every backend.

// The cases are test bodies called from the tests that `for_each_backend!` generates, where
// clippy's allow-unwrap-in-tests cannot see them.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{Backend, DEADLINE};
use flynn_store::mirror::{self, Backoff, MirrorEvent};
use flynn_store::{Cas, KeyValue, LeaseId, Listing, Revision, Store, StoreError, WatchStream};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

const FAST: Backoff = Backoff {
    initial: Duration::from_millis(20),
    max: Duration::from_millis(200),
};

/// A mirror under test: what it has told us, applied to a map, with its ordering checked.
struct Mirror {
    rx: mpsc::Receiver<MirrorEvent>,
    task: tokio::task::JoinHandle<()>,
    prefix: String,
    state: BTreeMap<String, KeyValue>,
    /// The revision the state is at.
    revision: Revision,
    /// Whether the last message was a change at `revision` (more may follow at the same one).
    in_revision: bool,
    /// Every revision a Put or Delete was delivered at.
    changes: BTreeSet<Revision>,
}

impl Mirror {
    fn start(store: Arc<dyn Store>, prefix: &str) -> Mirror {
        let (tx, rx) = mpsc::channel(8);
        Mirror {
            rx,
            task: mirror::spawn(store, prefix.to_owned(), tx, FAST),
            prefix: prefix.to_owned(),
            state: BTreeMap::new(),
            revision: 0,
            in_revision: false,
            changes: BTreeSet::new(),
        }
    }

    /// The next message, applied to the state after checking that it is in order.
    async fn next(&mut self) -> MirrorEvent {
        let event = tokio::time::timeout(DEADLINE, self.rx.recv())
            .await
            .expect("the mirror said nothing in time")
            .expect("the mirror stopped");
        match &event {
            MirrorEvent::Reset(listing) => {
                assert!(
                    listing.revision >= self.revision,
                    "a reset went back from {} to {}",
                    self.revision,
                    listing.revision
                );
                assert!(listing
                    .kvs
                    .iter()
                    .all(|kv| kv.key.starts_with(&self.prefix)));
                self.state = listing
                    .kvs
                    .iter()
                    .map(|kv| (kv.key.clone(), kv.clone()))
                    .collect();
                self.revision = listing.revision;
                self.in_revision = false;
            }
            MirrorEvent::Put(kv) => {
                self.change(&kv.key, kv.mod_revision);
                self.state.insert(kv.key.clone(), kv.clone());
            }
            MirrorEvent::Delete { key, mod_revision } => {
                self.change(key, *mod_revision);
                assert!(self.state.remove(key).is_some(), "deleted {key}, unknown");
            }
            MirrorEvent::Connected | MirrorEvent::Disconnected(_) => self.in_revision = false,
        }
        event
    }

    fn change(&mut self, key: &str, revision: Revision) {
        assert!(
            key.starts_with(&self.prefix),
            "{key} is not under the prefix"
        );
        assert!(
            revision > self.revision || (self.in_revision && revision == self.revision),
            "a change at revision {revision} after revision {} (duplicate or out of order)",
            self.revision
        );
        self.revision = revision;
        self.in_revision = true;
        self.changes.insert(revision);
    }

    /// Reads until the state is at `revision`; returns every message read.
    async fn until(&mut self, revision: Revision) -> Vec<MirrorEvent> {
        let mut seen = Vec::new();
        while self.revision < revision {
            seen.push(self.next().await);
        }
        seen
    }

    /// Reads until `wanted` matches a message; returns every message read, that one last.
    async fn until_matches(&mut self, wanted: impl Fn(&MirrorEvent) -> bool) -> Vec<MirrorEvent> {
        let mut seen = Vec::new();
        loop {
            let event = self.next().await;
            let done = wanted(&event);
            seen.push(event);
            if done {
                return seen;
            }
        }
    }

    /// Fails unless the mirror holds exactly what the store holds under the prefix.
    async fn assert_matches(&self, store: &dyn Store) {
        let listing = store.range(&self.prefix).await.unwrap();
        let stored: BTreeMap<String, KeyValue> = listing
            .kvs
            .into_iter()
            .map(|kv| (kv.key.clone(), kv))
            .collect();
        assert_eq!(self.state, stored);
    }
}

fn is_reset(event: &MirrorEvent) -> bool {
    matches!(event, MirrorEvent::Reset(_))
}

fn is_change(event: &MirrorEvent) -> bool {
    matches!(event, MirrorEvent::Put(_) | MirrorEvent::Delete { .. })
}

/// The start of every mirror: the listing, then the live watch.
async fn expect_start(mirror: &mut Mirror, store: &dyn Store) -> Listing {
    let MirrorEvent::Reset(listing) = mirror.next().await else {
        panic!("a mirror starts with a listing");
    };
    assert_eq!(mirror.next().await, MirrorEvent::Connected);
    mirror.assert_matches(store).await;
    listing
}

async fn mirror_sees_every_event(b: &Backend) {
    let s = &b.store;
    s.put("/m/a", b"seed".to_vec(), None).await.unwrap();
    s.put("/m/b", b"seed".to_vec(), None).await.unwrap();
    s.put("/other", b"seed".to_vec(), None).await.unwrap();
    let mut mirror = Mirror::start(Arc::clone(s), "/m/");
    let listing = expect_start(&mut mirror, s.as_ref()).await;
    assert_eq!(listing.kvs.len(), 2);

    // A mix of every kind of change, inside and outside the prefix; the channel is small, so
    // the mirror also has to wait for us now and then.
    let mut inside = BTreeSet::new();
    let lease = s.grant_lease(Duration::from_secs(60)).await.unwrap();
    for i in 0..60u32 {
        let key = format!("/m/k{}", i % 7);
        let revision = match i % 6 {
            0 | 1 => s.put(&key, i.to_be_bytes().to_vec(), None).await.unwrap(),
            2 => s.put(&key, vec![], Some(lease)).await.unwrap(),
            3 => {
                if !s.delete(&key).await.unwrap() {
                    continue;
                }
                b.revision().await
            }
            4 => {
                let expected = s.get(&key).await.unwrap().map_or(0, |kv| kv.mod_revision);
                let Cas::Swapped { revision } = s
                    .compare_and_swap(&key, expected, b"cas".to_vec(), None)
                    .await
                    .unwrap()
                else {
                    panic!("nobody else writes");
                };
                revision
            }
            _ => {
                s.put(&format!("/mm/{i}"), vec![], None).await.unwrap();
                continue;
            }
        };
        inside.insert(revision);
    }
    s.put("/m/l1", vec![], Some(lease)).await.unwrap();
    s.put("/m/l2", vec![], Some(lease)).await.unwrap();
    let before_revoke = b.revision().await;
    s.revoke_lease(lease).await.unwrap();
    inside.extend([before_revoke - 1, before_revoke, before_revoke + 1]);

    // A revision can hold several changes (the revoke deleted every key of the lease): a
    // write after it tells when the mirror has delivered all of them.
    let marker = s.put("/m/zz", vec![], None).await.unwrap();
    inside.insert(marker);

    let seen = mirror.until(marker).await;
    assert!(
        seen.iter().all(is_change),
        "no reset or reconnect: {seen:?}"
    );
    mirror.assert_matches(s.as_ref()).await;
    assert_eq!(
        mirror.changes, inside,
        "one event per write under the prefix"
    );
}

async fn mirror_resumes_a_broken_watch(b: &Backend) {
    let flaky = Flaky::wrap(Arc::clone(&b.store));
    let s = &b.store;
    s.put("/m/a", b"1".to_vec(), None).await.unwrap();
    let mut mirror = Mirror::start(flaky.clone(), "/m/");
    expect_start(&mut mirror, s.as_ref()).await;

    flaky.go_down();
    assert!(matches!(mirror.next().await, MirrorEvent::Disconnected(_)));
    let first_missed = s.put("/m/a", b"2".to_vec(), None).await.unwrap();
    s.put("/m/b", b"1".to_vec(), None).await.unwrap();
    s.delete("/m/a").await.unwrap();
    let last = b.revision().await;
    flaky.come_back();

    let seen = mirror.until(last).await;
    let changes: Vec<_> = seen.iter().filter(|e| is_change(e)).collect();
    assert_eq!(
        changes.len(),
        3,
        "every missed change, as a change: {seen:?}"
    );
    assert!(
        !seen.iter().any(is_reset),
        "nothing was compacted: {seen:?}"
    );
    assert!(mirror.changes.contains(&first_missed));
    let connected = seen
        .iter()
        .position(|e| *e == MirrorEvent::Connected)
        .expect("the mirror reconnects");
    assert!(connected < seen.iter().position(is_change).unwrap_or(usize::MAX));
    mirror.assert_matches(s.as_ref()).await;
}

async fn mirror_relists_after_compaction(b: &Backend) {
    let flaky = Flaky::wrap(Arc::clone(&b.store));
    let s = &b.store;
    s.put("/m/a", b"1".to_vec(), None).await.unwrap();
    s.put("/m/b", b"1".to_vec(), None).await.unwrap();
    let mut mirror = Mirror::start(flaky.clone(), "/m/");
    expect_start(&mut mirror, s.as_ref()).await;
    let seen_at = s.put("/m/a", b"2".to_vec(), None).await.unwrap();
    mirror.until(seen_at).await;

    // The watch breaks; meanwhile the history the mirror needs to resume is compacted away.
    flaky.go_down();
    assert!(matches!(mirror.next().await, MirrorEvent::Disconnected(_)));
    s.put("/m/c", b"1".to_vec(), None).await.unwrap();
    s.delete("/m/b").await.unwrap();
    s.put("/m/a", b"3".to_vec(), None).await.unwrap();
    let now = s.put("/other", b"1".to_vec(), None).await.unwrap();
    s.compact(now).await.unwrap();
    flaky.come_back();

    let seen = mirror.until_matches(is_reset).await;
    assert!(
        !seen.iter().any(is_change),
        "the lost history is not made up: {seen:?}"
    );
    let Some(MirrorEvent::Reset(listing)) = seen.last() else {
        unreachable!()
    };
    assert_eq!(listing.revision, now);
    mirror.assert_matches(s.as_ref()).await;
    assert_eq!(mirror.next().await, MirrorEvent::Connected);

    // And it follows live changes again.
    let after = s.put("/m/d", b"1".to_vec(), None).await.unwrap();
    let seen = mirror.until(after).await;
    assert!(seen.iter().all(is_change), "{seen:?}");
    mirror.assert_matches(s.as_ref()).await;
}

async fn mirror_stops_when_its_consumer_goes(b: &Backend) {
    let mut mirror = Mirror::start(Arc::clone(&b.store), "/m/");
    expect_start(&mut mirror, b.store.as_ref()).await;
    let Mirror { rx, task, .. } = mirror;
    drop(rx);
    // Nothing is written: the mirror has to notice on its own.
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the mirror outlived its consumer")
        .unwrap();
}

for_each_backend!(
    mirror_sees_every_event,
    mirror_resumes_a_broken_watch,
    mirror_relists_after_compaction,
    mirror_stops_when_its_consumer_goes,
);

/// etcd goes away and comes back with the same data: the mirror says so and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_rides_out_an_etcd_restart() {
    let mut b = Backend::etcd().await;
    let s = Arc::clone(&b.store);
    let writer = flynn_store::open(&b.etcd.as_ref().unwrap().url())
        .await
        .unwrap();
    let mut mirror = Mirror::start(Arc::clone(&s), "/m/");
    expect_start(&mut mirror, s.as_ref()).await;
    let before = s.put("/m/a", b"1".to_vec(), None).await.unwrap();
    mirror.until(before).await;

    let etcd = b.etcd.as_mut().unwrap();
    etcd.stop().await;
    assert!(matches!(mirror.next().await, MirrorEvent::Disconnected(_)));
    etcd.restart().await;

    // A write right after the restart, most likely before the mirror is back, through
    // another client.
    let missed = put_when_up(writer.as_ref(), "/m/b").await;
    assert_eq!(
        missed,
        before + 1,
        "nothing was written while etcd was down"
    );
    let seen = mirror.until_matches(|e| *e == MirrorEvent::Connected).await;
    assert!(
        seen[..seen.len() - 1]
            .iter()
            .all(|e| matches!(e, MirrorEvent::Disconnected(_))),
        "only retries until the watch is back: {seen:?}"
    );
    let live = s.put("/m/c", b"1".to_vec(), None).await.unwrap();
    let seen = mirror.until(live).await;
    assert!(seen.iter().all(is_change), "{seen:?}");
    assert_eq!(mirror.changes, BTreeSet::from([before, missed, live]));
    mirror.assert_matches(s.as_ref()).await;
}

/// A mirror started while etcd is down waits for it, then lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_waits_for_etcd() {
    let mut b = Backend::etcd().await;
    b.store.put("/m/a", b"1".to_vec(), None).await.unwrap();
    let etcd = b.etcd.as_mut().unwrap();
    etcd.stop().await;
    let mut mirror = Mirror::start(Arc::clone(&b.store), "/m/");
    assert!(matches!(mirror.next().await, MirrorEvent::Disconnected(_)));
    etcd.restart().await;
    let seen = mirror.until_matches(is_reset).await;
    assert!(seen[..seen.len() - 1]
        .iter()
        .all(|e| matches!(e, MirrorEvent::Disconnected(_))));
    assert_eq!(mirror.next().await, MirrorEvent::Connected);
    assert_eq!(mirror.state.len(), 1);
    mirror.assert_matches(b.store.as_ref()).await;
}

/// Retries a put until etcd answers again.
async fn put_when_up(store: &dyn Store, key: &str) -> Revision {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match store.put(key, b"1".to_vec(), None).await {
            Ok(revision) => return revision,
            Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("etcd did not come back: {e}"),
        }
    }
}

/// A store whose watches the test can break, and refuse while it is "down".
struct Flaky {
    inner: Arc<dyn Store>,
    down: AtomicBool,
    breaks: watch::Sender<u64>,
}

impl Flaky {
    fn wrap(inner: Arc<dyn Store>) -> Arc<Flaky> {
        Arc::new(Flaky {
            inner,
            down: AtomicBool::new(false),
            breaks: watch::channel(0).0,
        })
    }

    /// Breaks every open watch and refuses new ones.
    fn go_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.breaks.send_modify(|n| *n += 1);
    }

    fn come_back(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("down for the test".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for Flaky {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.check()?;
        self.inner.get(key).await
    }

    async fn range(&self, prefix: &str) -> Result<Listing, StoreError> {
        self.check()?;
        self.inner.range(prefix).await
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        self.check()?;
        self.inner.put(key, value, lease).await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.delete(key).await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Cas, StoreError> {
        self.check()?;
        self.inner
            .compare_and_swap(key, expected, value, lease)
            .await
    }

    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.compare_and_delete(key, expected).await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        self.check()?;
        let mut broken = self.breaks.subscribe();
        broken.mark_unchanged();
        let inner = self.inner.watch(prefix, from).await?;
        let stream = futures::stream::unfold(Some((inner, broken)), |open| async move {
            let (mut inner, mut broken) = open?;
            tokio::select! {
                biased;
                _ = broken.changed() => {
                    let error = StoreError::Unavailable("watch broken by the test".into());
                    Some((Err(error), None))
                }
                item = inner.next() => item.map(|item| (item, Some((inner, broken)))),
            }
        });
        Ok(Box::pin(stream))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.check()?;
        self.inner.grant_lease(ttl).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.check()?;
        self.inner.keep_alive(lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.check()?;
        self.inner.revoke_lease(lease).await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.check()?;
        self.inner.compact(revision).await
    }
}
