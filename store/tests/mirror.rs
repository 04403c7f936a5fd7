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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::{Backend, DEADLINE};
use flynn_store::mirror::{self, Backoff, MirrorEvent, Options, Relist};
use flynn_store::{
    Cas, KeyValue, LeaseId, Listing, Page, Revision, Store, StoreError, StoreStatus, WatchStream,
};
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
    /// The listing under way: its revision and the keys of its pages so far.
    listing: Option<(Revision, BTreeMap<String, KeyValue>)>,
    /// Pages received, and listings completed.
    pages: usize,
    listings: usize,
    /// The revision the state is at.
    revision: Revision,
    /// Whether the last message was a change at `revision` (more may follow at the same one).
    in_revision: bool,
    /// Every revision a Put or Delete was delivered at.
    changes: BTreeSet<Revision>,
}

impl Mirror {
    fn start(store: Arc<dyn Store>, prefix: &str) -> Mirror {
        Mirror::with_pages(store, prefix, flynn_store::DEFAULT_PAGE)
    }

    fn with_pages(store: Arc<dyn Store>, prefix: &str, page_size: usize) -> Mirror {
        let (tx, rx) = mpsc::channel(8);
        let options = Options {
            backoff: FAST,
            page_size,
            ..Options::default()
        };
        Mirror {
            rx,
            task: mirror::spawn(store, prefix.to_owned(), tx, options),
            prefix: prefix.to_owned(),
            state: BTreeMap::new(),
            listing: None,
            pages: 0,
            listings: 0,
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
            MirrorEvent::Page(page) => {
                self.pages += 1;
                if page.first {
                    self.listing = Some((page.revision, BTreeMap::new()));
                }
                let (revision, listed) = self
                    .listing
                    .as_mut()
                    .expect("a listing starts with a first page");
                assert_eq!(
                    *revision, page.revision,
                    "a listing is read at one revision"
                );
                for kv in &page.kvs {
                    assert!(kv.key.starts_with(&self.prefix), "{} is outside", kv.key);
                    assert!(
                        listed.last_key_value().is_none_or(|(k, _)| *k < kv.key),
                        "{} is out of order",
                        kv.key
                    );
                    assert!(kv.mod_revision <= page.revision, "{kv:?} is from later");
                    listed.insert(kv.key.clone(), kv.clone());
                }
                if page.last {
                    let (revision, listed) = self.listing.take().unwrap();
                    self.state = listed;
                    self.revision = revision;
                    self.listings += 1;
                }
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
            MirrorEvent::Connected | MirrorEvent::Disconnected(_) | MirrorEvent::Relisting(_) => {
                self.in_revision = false
            }
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

/// The last page of a listing.
fn is_reset(event: &MirrorEvent) -> bool {
    matches!(event, MirrorEvent::Page(page) if page.last)
}

fn is_change(event: &MirrorEvent) -> bool {
    matches!(event, MirrorEvent::Put(_) | MirrorEvent::Delete { .. })
}

/// The start of every mirror: the listing, then the live watch.
async fn expect_start(mirror: &mut Mirror, store: &dyn Store) -> Listing {
    let seen = mirror.until_matches(is_reset).await;
    assert!(
        seen.iter().all(|e| matches!(e, MirrorEvent::Page(_))),
        "a mirror starts with a listing: {seen:?}"
    );
    assert_eq!(mirror.next().await, MirrorEvent::Connected);
    mirror.assert_matches(store).await;
    Listing {
        kvs: mirror.state.values().cloned().collect(),
        revision: mirror.revision,
    }
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
    assert!(
        seen.contains(&MirrorEvent::Relisting(Relist::Compacted)),
        "{seen:?}"
    );
    assert_eq!(mirror.revision, now);
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

/// The store behind the mirror is swapped for another one (another id) while the watch is
/// down, one whose revision is even ahead of the mirror's: the mirror lists the new store.
async fn mirror_relists_a_replaced_store(b: &Backend) {
    let flaky = Flaky::wrap(Arc::clone(&b.store));
    let s = &b.store;
    for key in ["/m/a", "/m/b", "/m/a"] {
        s.put(key, b"old".to_vec(), None).await.unwrap();
    }
    let mut mirror = Mirror::start(flaky.clone(), "/m/");
    expect_start(&mut mirror, s.as_ref()).await;
    let ours = mirror.revision;

    flaky.go_down();
    assert!(matches!(mirror.next().await, MirrorEvent::Disconnected(_)));
    let other = another(b).await;
    let t = &other.store;
    for i in 0..ours + 2 {
        t.put(&format!("/x/{i}"), vec![], None).await.unwrap();
    }
    let new_revision = t.put("/m/c", b"new".to_vec(), None).await.unwrap();
    assert!(new_revision > ours);
    flaky.replace(Arc::clone(t));
    flaky.come_back();

    let seen = mirror.until_matches(is_reset).await;
    assert!(
        seen.contains(&MirrorEvent::Relisting(Relist::Replaced)),
        "{seen:?}"
    );
    assert!(!seen.iter().any(is_change), "{seen:?}");
    assert_eq!(mirror.state.keys().collect::<Vec<_>>(), ["/m/c"]);
    assert_eq!(mirror.revision, new_revision);
    assert_eq!(mirror.next().await, MirrorEvent::Connected);

    let live = t.put("/m/d", b"new".to_vec(), None).await.unwrap();
    let seen = mirror.until(live).await;
    assert!(seen.iter().all(is_change), "{seen:?}");
    mirror.assert_matches(t.as_ref()).await;
}

/// A fresh store of the same kind as `b`'s.
async fn another(b: &Backend) -> Backend {
    if b.etcd.is_some() {
        Backend::etcd().await
    } else if b.dir.is_some() {
        Backend::file().await
    } else {
        Backend::memory().await
    }
}

/// A listing of more keys than a page comes in pages, all at one revision, even while the
/// store changes between them; what changed comes after the listing, as changes.
async fn mirror_lists_in_pages_at_one_revision(b: &Backend) {
    let flaky = Flaky::wrap(Arc::clone(&b.store));
    let s = &b.store;
    for i in 0..10 {
        s.put(&format!("/m/k{i:02}"), b"1".to_vec(), None)
            .await
            .unwrap();
    }
    s.put("/n/outside", b"1".to_vec(), None).await.unwrap();
    let before = s.range("/m/").await.unwrap();
    // Before the 2nd, 3rd and 4th page: a key still to list changes, one goes, one comes.
    flaky.between_pages("/m/k05", Some(b"2"));
    flaky.between_pages("/m/k08", None);
    flaky.between_pages("/m/k10", Some(b"2"));
    let mut mirror = Mirror::with_pages(flaky.clone(), "/m/", 3);
    mirror.until_matches(is_reset).await;
    assert!(mirror.pages >= 4, "10 keys in pages of 3: {}", mirror.pages);
    assert_eq!(mirror.listings, 1);
    if b.etcd.is_some() {
        // etcd reads the later pages at the first page's revision.
        assert_eq!(mirror.revision, before.revision);
        assert_eq!(
            mirror.state.values().cloned().collect::<Vec<_>>(),
            before.kvs
        );
    }
    // The embedded store cannot read an old revision of a changed key: its listing started
    // over, at a later revision, and was consistent at that one (checked by `next`).
    assert_eq!(mirror.next().await, MirrorEvent::Connected);
    let last = b.revision().await;
    mirror.until(last).await;
    mirror.assert_matches(s.as_ref()).await;
    let marker = s.put("/m/z", b"1".to_vec(), None).await.unwrap();
    let seen = mirror.until(marker).await;
    assert!(seen.iter().all(is_change), "{seen:?}");
    mirror.assert_matches(s.as_ref()).await;
}

/// With splits, the parts of the prefix are read side by side at one revision: pages of
/// disjoint keys, each sorted, that together hold exactly the prefix's keys.
async fn mirror_lists_parts_side_by_side(b: &Backend) {
    let s = &b.store;
    // Keys before, on, between and after the split points.
    let mut keys = vec![
        "/m/".to_owned(),
        "/m/a".into(),
        "/m/b".into(),
        "/m/tcp-".into(),
    ];
    for p in [
        "a", "b", "c", "http-0", "http-1", "http-10", "http-f", "tcp-1", "z",
    ] {
        for i in 0..7 {
            keys.push(format!("/m/{p}{i}"));
        }
    }
    for key in &keys {
        s.put(key, b"1".to_vec(), None).await.unwrap();
    }
    s.put("/n/outside", b"1".to_vec(), None).await.unwrap();
    let pages = list_parts(s, &["b", "http-1", "http-f", "tcp-"]).await;
    assert!(pages > keys.len() / 3, "pages of 3 keys: {pages}");
    // Other split points: an empty first part, a part of one key (`/m/`), a first part smaller
    // than a page.
    let pages = list_parts(s, &["", "/m/", "a", "http-1", "tcp-"]).await;
    assert!(pages > keys.len() / 3, "pages of 3 keys: {pages}");
}

/// Lists `/m/` in parts (pages of 3 keys) and checks the listing against the store's, then that
/// the watch follows (a key put after it is seen): how many pages it took.
async fn list_parts(s: &Arc<dyn Store>, splits: &'static [&'static str]) -> usize {
    let before = s.range("/m/").await.unwrap();
    let (tx, mut rx) = mpsc::channel(4);
    let options = Options {
        backoff: FAST,
        page_size: 3,
        splits,
        parallel: 3,
    };
    let task = mirror::spawn(Arc::clone(s), "/m/".to_owned(), tx, options);
    let mut listed = BTreeMap::new();
    let mut pages = 0;
    loop {
        let event = tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .unwrap()
            .unwrap();
        let MirrorEvent::Page(page) = event else {
            panic!("a mirror starts with a listing: {event:?}");
        };
        assert_eq!(page.first, pages == 0);
        assert_eq!(page.revision, before.revision, "one revision");
        assert!(
            page.kvs.windows(2).all(|w| w[0].key < w[1].key),
            "a page is sorted"
        );
        pages += 1;
        for kv in page.kvs {
            assert!(
                listed.insert(kv.key.clone(), kv).is_none(),
                "disjoint pages"
            );
        }
        if page.last {
            break;
        }
    }
    assert_eq!(listed.into_values().collect::<Vec<_>>(), before.kvs);
    let event = tokio::time::timeout(DEADLINE, rx.recv()).await.unwrap();
    assert_eq!(event, Some(MirrorEvent::Connected));
    let marker = format!("/m/zz{}", before.revision);
    let marker = s.put(&marker, b"1".to_vec(), None).await.unwrap();
    let event = tokio::time::timeout(DEADLINE, rx.recv()).await.unwrap();
    assert!(matches!(event, Some(MirrorEvent::Put(kv)) if kv.mod_revision == marker));
    task.abort();
    pages
}

for_each_backend!(
    mirror_lists_parts_side_by_side,
    mirror_sees_every_event,
    mirror_resumes_a_broken_watch,
    mirror_relists_after_compaction,
    mirror_stops_when_its_consumer_goes,
    mirror_relists_a_replaced_store,
    mirror_lists_in_pages_at_one_revision,
);

/// etcd killed and an empty one started in its place, on the same address: the mirror notices
/// (its revision went back; the cluster id may well be the same) and lists the new store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_relists_when_etcd_is_replaced_by_an_empty_one() {
    let mut b = Backend::etcd().await;
    let s = Arc::clone(&b.store);
    let writer = flynn_store::open(&b.etcd.as_ref().unwrap().url())
        .await
        .unwrap();
    for i in 0..5 {
        s.put(&format!("/m/old{i}"), b"1".to_vec(), None)
            .await
            .unwrap();
    }
    let mut mirror = Mirror::start(Arc::clone(&s), "/m/");
    expect_start(&mut mirror, s.as_ref()).await;
    assert_eq!(mirror.state.len(), 5);
    let old_status = s.status().await.unwrap();

    let etcd = b.etcd.as_mut().unwrap();
    etcd.stop().await;
    assert!(matches!(mirror.next().await, MirrorEvent::Disconnected(_)));
    std::fs::remove_dir_all(etcd.data_dir().join("etcd")).unwrap();
    etcd.restart().await;
    let fresh = put_when_up(writer.as_ref(), "/m/new").await;
    assert!(fresh < old_status.revision, "an empty etcd starts over");

    let seen = mirror.until_matches(is_reset).await;
    assert!(
        seen.iter().any(|e| matches!(e, MirrorEvent::Relisting(_))),
        "{seen:?}"
    );
    assert!(!seen.iter().any(is_change), "{seen:?}");
    // The new key came in the listing, or (the mirror was quicker) as a change after it.
    mirror.until(fresh).await;
    assert_eq!(mirror.state.keys().collect::<Vec<_>>(), ["/m/new"]);
    let live = s.put("/m/live", b"1".to_vec(), None).await.unwrap();
    let seen = mirror.until(live).await;
    assert!(
        seen.iter()
            .all(|e| is_change(e) || *e == MirrorEvent::Connected),
        "{seen:?}"
    );
    mirror.assert_matches(s.as_ref()).await;
}

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

/// A store whose watches the test can break, and refuse while it is "down"; it can also swap
/// the store behind it (a store replaced), and make writes between the pages of a listing.
struct Flaky {
    inner: Mutex<Arc<dyn Store>>,
    down: AtomicBool,
    breaks: watch::Sender<u64>,
    /// Done one at a time, each before a page after the first of a listing is read.
    between_pages: Mutex<VecDeque<(String, Option<Vec<u8>>)>>,
}

impl Flaky {
    fn wrap(inner: Arc<dyn Store>) -> Arc<Flaky> {
        Arc::new(Flaky {
            inner: Mutex::new(inner),
            down: AtomicBool::new(false),
            breaks: watch::channel(0).0,
            between_pages: Mutex::default(),
        })
    }

    fn inner(&self) -> Arc<dyn Store> {
        Arc::clone(&self.inner.lock().unwrap())
    }

    /// Breaks every open watch and refuses new ones.
    fn go_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.breaks.send_modify(|n| *n += 1);
    }

    fn come_back(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    /// From now on, answers with `store`.
    fn replace(&self, store: Arc<dyn Store>) {
        *self.inner.lock().unwrap() = store;
    }

    /// A put (Some) or delete (None) to do before a later page of a listing.
    fn between_pages(&self, key: &str, value: Option<&[u8]>) {
        self.between_pages
            .lock()
            .unwrap()
            .push_back((key.to_owned(), value.map(<[u8]>::to_vec)));
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
        self.inner().get(key).await
    }

    async fn range(&self, prefix: &str) -> Result<Listing, StoreError> {
        self.check()?;
        self.inner().range(prefix).await
    }

    async fn range_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<Page, StoreError> {
        self.check()?;
        let inner = self.inner();
        if after.is_some() {
            let write = self.between_pages.lock().unwrap().pop_front();
            match write {
                Some((key, Some(value))) => {
                    inner.put(&key, value, None).await?;
                }
                Some((key, None)) => {
                    inner.delete(&key).await?;
                }
                None => {}
            }
        }
        inner.range_page(prefix, after, limit, revision).await
    }

    async fn status(&self) -> Result<StoreStatus, StoreError> {
        self.check()?;
        self.inner().status().await
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        self.check()?;
        self.inner().put(key, value, lease).await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.check()?;
        self.inner().delete(key).await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Cas, StoreError> {
        self.check()?;
        self.inner()
            .compare_and_swap(key, expected, value, lease)
            .await
    }

    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<bool, StoreError> {
        self.check()?;
        self.inner().compare_and_delete(key, expected).await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        self.check()?;
        let mut broken = self.breaks.subscribe();
        broken.mark_unchanged();
        let inner = self.inner().watch(prefix, from).await?;
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
        self.inner().grant_lease(ttl).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.check()?;
        self.inner().keep_alive(lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.check()?;
        self.inner().revoke_lease(lease).await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.check()?;
        self.inner().compact(revision).await
    }
}

/// A prefix holding more than one gRPC message may (64 MiB here): listed all at once, as the
/// mirror and `range` once did, etcd's answer was refused and the mirror retried forever
/// (a million routes is 275 MB). In pages it lists, and a page of keys with big values asks
/// for fewer keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_bigger_than_a_message_comes_in_pages() {
    let b = Backend::etcd().await;
    let s = &b.store;
    // etcd takes requests of 1.5 MiB at most (`--max-request-bytes`): 1 MiB values.
    let value = vec![b'v'; 1 << 20];
    let keys: Vec<String> = (0..72).map(|i| format!("/big/{i:03}")).collect();
    futures::future::try_join_all(keys.chunks(9).map(|chunk| {
        let value = value.clone();
        async move {
            for key in chunk {
                s.put(key, value.clone(), None).await?;
            }
            Ok::<_, StoreError>(())
        }
    }))
    .await
    .unwrap();
    let mut mirror = Mirror::start(Arc::clone(s), "/big/");
    tokio::time::timeout(Duration::from_secs(60), mirror.until_matches(is_reset))
        .await
        .expect("listed in time");
    assert_eq!(mirror.state.keys().cloned().collect::<Vec<_>>(), keys);
    assert!(mirror.pages > 1);
    assert_eq!(s.range("/big/").await.unwrap().kvs.len(), keys.len());
}

/// etcd's count of the Range requests it served (its `/metrics`).
async fn etcd_ranges(etcd: &flynn_testkit::Etcd) -> u64 {
    let addr = etcd.client_addr().to_string();
    let metrics = flynn_testkit::client::get(&addr, "/metrics", "localhost")
        .await
        .unwrap()
        .text();
    metrics
        .lines()
        .filter(|l| l.starts_with("grpc_server_handled_total{") && l.contains("\"Range\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A part of a listing (keys up to a bound) with a wide gap of byte values no key uses: its
/// pages climb past the gap in a few requests, not one request per byte value (a part of a
/// million routes ending in such a gap took hundreds), and every key comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_a_part_is_crossed_in_a_few_requests() {
    let b = Backend::etcd().await;
    let s = &b.store;
    let etcd = b.etcd.as_ref().unwrap();
    let keys = [
        "/g/http-00aa",
        "/g/http-00ab",
        "/g/http-01",
        "/g/http-ffbb",
        "/g/tcp-",
    ];
    for key in keys {
        s.put(key, b"1".to_vec(), None).await.unwrap();
    }
    let before = etcd_ranges(etcd).await;
    let mut after = Some("/g/http-00aa".to_owned());
    let mut listed = Vec::new();
    loop {
        let page = s
            .range_page_until("/g/", after.as_deref(), Some("/g/tcp-"), 100, None)
            .await
            .unwrap();
        listed.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        after = page.kvs.last().map(|kv| kv.key.clone());
        if !page.more || after.is_none() {
            break;
        }
    }
    let requests = etcd_ranges(etcd).await - before;
    assert_eq!(listed, keys[1..]);
    assert!(requests <= 12, "{requests} requests");
}

/// How long listing a prefix takes against an etcd given by `LIST_ETCD` (e.g. one filled by
/// the propagation benchmark): `LIST_ETCD=etcd://127.0.0.1:2379 cargo test --release -p
/// flynn-store --test mirror list_speed -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "needs LIST_ETCD"]
async fn list_speed() {
    let Ok(url) = std::env::var("LIST_ETCD") else {
        return;
    };
    let store = flynn_store::open(&url).await.unwrap();
    let prefix = std::env::var("LIST_PREFIX").unwrap_or("/flynn/routes/".into());
    let page = std::env::var("LIST_PAGE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(flynn_store::DEFAULT_PAGE);
    let started = std::time::Instant::now();
    let listing = flynn_store::list(store.as_ref(), &prefix, page)
        .await
        .unwrap();
    println!(
        "{} keys at revision {} in {:?}",
        listing.kvs.len(),
        listing.revision,
        started.elapsed()
    );
}
