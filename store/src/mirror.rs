//! A watch that never silently loses an event.
//!
//! [`run`] lists a prefix, page by page at one revision, then watches it from the next revision.
//! When the watch breaks it resumes from the last revision it delivered, once it has checked
//! that the store it reaches is the one it listed ([`Store::status`]: the same id, and a
//! revision no lower than the mirror's). When that history has been compacted away, or the
//! store was replaced or went back in time (an empty one started in its place, a restore from
//! an older backup), it lists again; the new listing replaces everything the consumer had for
//! the prefix. While the store is unreachable it retries with a capped exponential back-off and
//! says so with [`MirrorEvent::Disconnected`]; the consumer keeps its last state meanwhile.
//!
//! [`spawn_resuming`] starts from a state the consumer kept (a router's table snapshot on disk:
//! the store's id and the revision it reflects) as if the watch had been interrupted there: it
//! checks the store, watches from the next revision, and lists only when the store was replaced,
//! went back, or was compacted past that revision.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;

use crate::{KeyValue, Revision, Store, StoreError, WatchEvent, DEFAULT_PAGE};

/// One page of a listing of the mirror's prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Sorted by key. The pages of one listing hold disjoint keys; without
    /// [`Options::splits`] each page's keys come after those of the earlier pages, with splits
    /// the parts of the prefix are read side by side and their pages interleave.
    pub kvs: Vec<KeyValue>,
    /// The revision the whole listing is read at.
    pub revision: Revision,
    /// The first page of a listing: forget what earlier pages of an unfinished listing said.
    pub first: bool,
    /// The last page (it may hold no keys): the keys of the prefix are now exactly those the
    /// listing's pages held.
    pub last: bool,
    /// The id of the store the listing is read from ([`crate::StoreStatus::id`]): what a
    /// consumer keeps with its state to resume from it later ([`Resume`]).
    pub store: String,
}

/// Why a mirror lists again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relist {
    /// The history needed to resume the watch was compacted away.
    Compacted,
    /// The store answering is not the one listed before (another id).
    Replaced,
    /// The store's revision is lower than the last one the mirror delivered.
    WentBack,
}

/// What a mirror tells its consumer, in store order for its prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MirrorEvent {
    /// A page of a listing of the prefix. A listing starts with a `first` page and may start
    /// over before its `last` page (the store broke off, or its revision was compacted
    /// meanwhile); once the `last` page has come, the listing replaces all earlier state.
    Page(ListPage),
    Put(KeyValue),
    Delete {
        key: String,
        mod_revision: Revision,
    },
    /// The watch is established (again); changes flow live from here.
    Connected,
    /// The store is unreachable or the watch broke; the mirror is retrying.
    Disconnected(String),
    /// The mirror is about to list again, for this reason (a listing follows).
    Relisting(Relist),
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

/// How a mirror works.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub backoff: Backoff,
    /// Keys per listing page.
    pub page_size: usize,
    /// Where a listing splits the prefix into parts (keys relative to the prefix, in order):
    /// the parts are `(prefix, prefix + splits[0]]`, `(prefix + splits[0], prefix + splits[1]]`,
    /// ... and the rest after the last split. Empty: one part, pages in key order.
    pub splits: &'static [&'static str],
    /// Parts read side by side (at least one).
    pub parallel: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backoff: Backoff::default(),
            page_size: DEFAULT_PAGE,
            splits: &[],
            parallel: 1,
        }
    }
}

impl From<Backoff> for Options {
    fn from(backoff: Backoff) -> Self {
        Options {
            backoff,
            ..Options::default()
        }
    }
}

/// A state of the prefix that the consumer already holds (kept from an earlier run): the
/// mirror watches from the revision after it instead of listing, once it has checked that the
/// store is the same one (same id, a revision no lower). When it is not, or the history from
/// there has been compacted away, it lists as it would have at the start ([`Relist`] says
/// why), and the listing replaces what the consumer held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The id of the store the state was read from.
    pub store: String,
    /// The revision the state reflects: every change up to it, none after it.
    pub revision: Revision,
}

/// Starts a mirror of `prefix` on the current runtime; it ends when `tx` is closed.
pub fn spawn(
    store: Arc<dyn Store>,
    prefix: String,
    tx: mpsc::Sender<MirrorEvent>,
    options: impl Into<Options>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(store, prefix, tx, options.into()))
}

/// [`spawn`], resuming from a state the consumer holds instead of listing first.
pub fn spawn_resuming(
    store: Arc<dyn Store>,
    prefix: String,
    tx: mpsc::Sender<MirrorEvent>,
    options: impl Into<Options>,
    resume: Resume,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(mirror(store, prefix, tx, options.into(), Some(resume)))
}

/// The consumer has gone: the mirror stops.
struct Gone;

/// Where a mirror stands between two watches.
enum Next {
    /// List first.
    List,
    /// Watch from this revision once the store is known to be the same (after an interruption).
    Check(Revision),
}

/// Mirrors `prefix` into `tx` until `tx` is closed.
pub async fn run(
    store: Arc<dyn Store>,
    prefix: String,
    tx: mpsc::Sender<MirrorEvent>,
    options: Options,
) {
    mirror(store, prefix, tx, options, None).await
}

async fn mirror(
    store: Arc<dyn Store>,
    prefix: String,
    tx: mpsc::Sender<MirrorEvent>,
    options: Options,
    resume: Option<Resume>,
) {
    let backoff = options.backoff;
    let mut delay = backoff.initial;
    // The id of the store listed (or resumed from), once it has been.
    let mut listed_from: Option<String> = None;
    let mut next = Next::List;
    if let Some(resume) = resume {
        listed_from = Some(resume.store);
        next = Next::Check(resume.revision + 1);
    }
    loop {
        let from = match next {
            Next::Check(from) => match store.status().await {
                Ok(status) => {
                    let why = if listed_from.as_deref() != Some(status.id.as_str()) {
                        Some(Relist::Replaced)
                    } else if status.revision < from - 1 {
                        Some(Relist::WentBack)
                    } else {
                        None
                    };
                    match why {
                        None => from,
                        Some(why) => {
                            tracing::warn!(
                                prefix,
                                ?why,
                                id = status.id,
                                revision = status.revision,
                                last_seen = from - 1,
                                "the store is not the one listed: listing again"
                            );
                            if tx.send(MirrorEvent::Relisting(why)).await.is_err() {
                                return;
                            }
                            next = Next::List;
                            continue;
                        }
                    }
                }
                Err(e) => {
                    if !pause(&tx, e, &mut delay, backoff).await {
                        return;
                    }
                    continue;
                }
            },
            Next::List => {
                let id = match store.status().await {
                    Ok(status) => status.id,
                    Err(e) => {
                        if !pause(&tx, e, &mut delay, backoff).await {
                            return;
                        }
                        continue;
                    }
                };
                match list(&store, &prefix, &id, options, &tx).await {
                    Ok(Ok(revision)) => {
                        listed_from = Some(id);
                        revision + 1
                    }
                    Ok(Err(e)) => {
                        if !pause(&tx, e, &mut delay, backoff).await {
                            return;
                        }
                        continue;
                    }
                    Err(Gone) => return,
                }
            }
        };
        let mut stream = match store.watch(&prefix, from).await {
            Ok(stream) => stream,
            Err(StoreError::Compacted { .. }) => {
                if tx
                    .send(MirrorEvent::Relisting(Relist::Compacted))
                    .await
                    .is_err()
                {
                    return;
                }
                next = Next::List;
                continue;
            }
            Err(e) => {
                next = Next::Check(from);
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
        let mut resume = from;
        let broke = loop {
            let item = tokio::select! {
                item = stream.next() => item,
                // Nobody listens any more: stop now rather than at the next change.
                _ = tx.closed() => return,
            };
            match item {
                Some(Ok(event)) => {
                    resume = event.revision() + 1;
                    if tx.send(event.into()).await.is_err() {
                        return;
                    }
                }
                Some(Err(StoreError::Compacted { .. })) => break None,
                Some(Err(e)) => break Some(e),
                None => break Some(StoreError::Unavailable("watch stream ended".into())),
            }
        };
        match broke {
            Some(e) => {
                next = Next::Check(resume);
                if !pause(&tx, e, &mut delay, backoff).await {
                    return;
                }
            }
            None => {
                if tx
                    .send(MirrorEvent::Relisting(Relist::Compacted))
                    .await
                    .is_err()
                {
                    return;
                }
                next = Next::List;
            }
        }
    }
}

/// Lists `prefix` into `tx` at one revision: its parts ([`Options::splits`]) page by page,
/// up to [`Options::parallel`] parts at a time, at the revision of the first part's first page;
/// starts over when that revision is compacted meanwhile. The revision listed at, or why the
/// store failed.
async fn list(
    store: &Arc<dyn Store>,
    prefix: &str,
    id: &str,
    options: Options,
    tx: &mpsc::Sender<MirrorEvent>,
) -> Result<Result<Revision, StoreError>, Gone> {
    let parts = parts(prefix, options.splits);
    'listing: loop {
        let mut out = Forward::new(tx, id);
        // The first page of the first part fixes the revision of the whole listing.
        let (after, until) = &parts[0];
        let page = match store
            .range_page_until(
                prefix,
                after.as_deref(),
                until.as_deref(),
                options.page_size,
                None,
            )
            .await
        {
            Ok(page) => page,
            Err(e) => return Ok(Err(e)),
        };
        let revision = page.revision;
        if !page.more && parts.len() == 1 {
            // The whole listing in one page.
            out.send(page.kvs, revision, true).await?;
            return Ok(Ok(revision));
        }
        let next = page
            .more
            .then(|| page.kvs.last().map(|kv| kv.key.clone()))
            .flatten();
        let mut rest = if page.more {
            parts[1..].to_vec()
        } else {
            coarser(&parts[1..], page.kvs.len(), options.page_size)
        };
        out.page(page.kvs, revision).await?;
        if let Some(after) = next {
            rest.insert(0, (Some(after), until.clone()));
        }
        let (pages_tx, mut pages) = mpsc::channel(options.parallel.max(1) * 2);
        let mut readers = tokio::task::JoinSet::new();
        let permits = Arc::new(tokio::sync::Semaphore::new(options.parallel.max(1)));
        for part in rest {
            readers.spawn(read_part(
                store.clone(),
                prefix.to_owned(),
                part,
                options.page_size,
                revision,
                pages_tx.clone(),
                permits.clone(),
            ));
        }
        drop(pages_tx);
        // Every reader ends by closing its sender: None once all are done.
        while let Some(read) = pages.recv().await {
            match read {
                Ok(kvs) => out.page(kvs, revision).await?,
                Err(StoreError::Compacted { .. }) => {
                    tracing::info!(prefix, "listing compacted midway: starting over");
                    continue 'listing;
                }
                Err(e) => return Ok(Err(e)),
            }
        }
        out.finish(revision).await?;
        return Ok(Ok(revision));
    }
}

/// A part of a listing: the keys in `(after, until]` (no bound when None).
type Part = (Option<String>, Option<String>);

fn parts(prefix: &str, splits: &[&str]) -> Vec<Part> {
    let bounds: Vec<String> = splits.iter().map(|s| format!("{prefix}{s}")).collect();
    let mut parts = Vec::with_capacity(bounds.len() + 1);
    let mut after = None;
    for bound in bounds {
        parts.push((after, Some(bound.clone())));
        after = Some(bound);
    }
    parts.push((after, None));
    parts
}

/// `parts` merged, neighbours with neighbours, so that each holds about a page if each holds
/// as many keys as the first part did (`first`, in one page): the splits are made for a
/// store of millions of keys, where a part of one page is read in one request that walks no
/// key it does not return; a small store is read in a few requests instead of one per split.
/// The last part (no upper bound) stays as it is: merged, the parts before it would lose
/// theirs.
fn coarser(parts: &[Part], first: usize, page_size: usize) -> Vec<Part> {
    let group = (page_size / first.max(1)).max(1);
    let Some((last, bounded)) = parts.split_last() else {
        return Vec::new();
    };
    bounded
        .chunks(group)
        .filter_map(|run| Some((run.first()?.0.clone(), run.last()?.1.clone())))
        .chain([last.clone()])
        .collect()
}

/// Reads one part page by page at `revision` into `out` (keys, or the error that ends it).
async fn read_part(
    store: Arc<dyn Store>,
    prefix: String,
    (mut after, until): Part,
    page_size: usize,
    revision: Revision,
    out: mpsc::Sender<Result<Vec<KeyValue>, StoreError>>,
    permits: Arc<tokio::sync::Semaphore>,
) {
    let Ok(_permit) = permits.acquire_owned().await else {
        return;
    };
    loop {
        let read = store
            .range_page_until(
                &prefix,
                after.as_deref(),
                until.as_deref(),
                page_size,
                Some(revision),
            )
            .await;
        let page = match read {
            Ok(page) => page,
            Err(e) => {
                let _ = out.send(Err(e)).await;
                return;
            }
        };
        let more = page.more && !page.kvs.is_empty();
        after = page.kvs.last().map(|kv| kv.key.clone());
        if out.send(Ok(page.kvs)).await.is_err() || !more {
            return;
        }
    }
}

/// Hands a listing's pages to the consumer as they come; an empty page closes a listing of
/// several (a part read side by side cannot tell that it is the last to finish).
struct Forward<'t> {
    tx: &'t mpsc::Sender<MirrorEvent>,
    store: &'t str,
    first: bool,
}

impl<'t> Forward<'t> {
    fn new(tx: &'t mpsc::Sender<MirrorEvent>, store: &'t str) -> Forward<'t> {
        Forward {
            tx,
            store,
            first: true,
        }
    }

    async fn page(&mut self, kvs: Vec<KeyValue>, revision: Revision) -> Result<(), Gone> {
        if kvs.is_empty() {
            return Ok(());
        }
        self.send(kvs, revision, false).await
    }

    async fn finish(mut self, revision: Revision) -> Result<(), Gone> {
        self.send(Vec::new(), revision, true).await
    }

    async fn send(
        &mut self,
        kvs: Vec<KeyValue>,
        revision: Revision,
        last: bool,
    ) -> Result<(), Gone> {
        let event = MirrorEvent::Page(ListPage {
            kvs,
            revision,
            first: std::mem::replace(&mut self.first, false),
            last,
            store: self.store.to_owned(),
        });
        self.tx.send(event).await.map_err(|_| Gone)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EmbeddedStore;

    #[test]
    fn parts_are_merged_to_about_a_page_each() {
        let parts = parts("/p/", &["b", "c", "d", "e", "f"]);
        let bound = |s: &str| Some(format!("/p/{s}"));
        // (b, c] .. (f, end): a first part of 400 keys, pages of 1000: two parts at a time.
        assert_eq!(
            coarser(&parts[1..], 400, 1000),
            vec![
                (bound("b"), bound("d")),
                (bound("d"), bound("f")),
                (bound("f"), None)
            ]
        );
        // An empty first part: the rest in one, but for the last (no upper bound).
        assert_eq!(
            coarser(&parts[1..], 0, 1000),
            vec![(bound("b"), bound("f")), (bound("f"), None)]
        );
        assert_eq!(coarser(&parts[1..2], 0, 1000), parts[1..2].to_vec());
        assert_eq!(coarser(&[], 0, 1000), Vec::<Part>::new());
        // A first part of a page or more: as they are.
        assert_eq!(coarser(&parts[1..], 1000, 1000), parts[1..].to_vec());
        assert_eq!(coarser(&parts[1..], 5000, 1000), parts[1..].to_vec());
    }

    const PREFIX: &str = "/t/";
    const FAST: Backoff = Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
    };

    async fn next(rx: &mut mpsc::Receiver<MirrorEvent>) -> MirrorEvent {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the mirror said something")
            .expect("the mirror runs")
    }

    /// Resumes from `revision` of a store whose id is `id`; the messages up to `until`.
    async fn resume(
        store: &Arc<dyn Store>,
        id: String,
        revision: Revision,
        until: impl Fn(&MirrorEvent) -> bool,
    ) -> Vec<MirrorEvent> {
        let (tx, mut rx) = mpsc::channel(16);
        let task = spawn_resuming(
            store.clone(),
            PREFIX.into(),
            tx,
            FAST,
            Resume {
                store: id,
                revision,
            },
        );
        let mut seen = Vec::new();
        loop {
            let event = next(&mut rx).await;
            let done = until(&event);
            seen.push(event);
            if done {
                task.abort();
                return seen;
            }
        }
    }

    async fn put(store: &Arc<dyn Store>, key: &str) -> Revision {
        store
            .put(&format!("{PREFIX}{key}"), b"v".to_vec(), None)
            .await
            .expect("put")
    }

    fn is_put(key: &str) -> impl Fn(&MirrorEvent) -> bool + '_ {
        move |e| matches!(e, MirrorEvent::Put(kv) if kv.key == format!("{PREFIX}{key}"))
    }

    #[tokio::test]
    async fn resuming_watches_from_the_next_revision_without_listing() {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
        let id = store.status().await.expect("status").id;
        put(&store, "a").await;
        let kept = put(&store, "b").await;
        put(&store, "c").await;
        store.delete(&format!("{PREFIX}a")).await.expect("delete");
        put(&store, "d").await;
        let seen = resume(&store, id, kept, is_put("d")).await;
        let changes: Vec<String> = seen
            .iter()
            .filter_map(|e| match e {
                MirrorEvent::Put(kv) => Some(format!("put {}", kv.key)),
                MirrorEvent::Delete { key, .. } => Some(format!("delete {key}")),
                MirrorEvent::Page(_) | MirrorEvent::Relisting(_) => Some("listed".into()),
                _ => None,
            })
            .collect();
        assert_eq!(changes, ["put /t/c", "delete /t/a", "put /t/d"]);
        assert!(seen.contains(&MirrorEvent::Connected));
    }

    /// The relisting a resumed mirror falls back to, and the keys of its listing.
    fn relisting(seen: &[MirrorEvent]) -> (Option<Relist>, Vec<String>) {
        let why = seen.iter().find_map(|e| match e {
            MirrorEvent::Relisting(why) => Some(*why),
            _ => None,
        });
        let keys = seen
            .iter()
            .filter_map(|e| match e {
                MirrorEvent::Page(page) => Some(page.kvs.iter().map(|kv| kv.key.clone())),
                _ => None,
            })
            .flatten()
            .collect();
        (why, keys)
    }

    fn is_last_page(event: &MirrorEvent) -> bool {
        matches!(event, MirrorEvent::Page(page) if page.last)
    }

    #[tokio::test]
    async fn a_revision_compacted_away_is_listed_again() {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
        let id = store.status().await.expect("status").id;
        let kept = put(&store, "a").await;
        put(&store, "b").await;
        let now = put(&store, "c").await;
        store.compact(now).await.expect("compact");
        let seen = resume(&store, id.clone(), kept, is_last_page).await;
        let (why, keys) = relisting(&seen);
        assert_eq!(why, Some(Relist::Compacted));
        assert_eq!(keys, ["/t/a", "/t/b", "/t/c"]);
        let last = seen.iter().rev().find_map(|e| match e {
            MirrorEvent::Page(page) => Some(page.clone()),
            _ => None,
        });
        let last = last.expect("a page");
        assert_eq!((last.store, last.revision), (id, now));
    }

    #[tokio::test]
    async fn another_store_or_a_revision_ahead_is_listed_again() {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
        let id = store.status().await.expect("status").id;
        let now = put(&store, "a").await;
        let seen = resume(&store, "another store".into(), now, is_last_page).await;
        assert_eq!(
            relisting(&seen),
            (Some(Relist::Replaced), vec!["/t/a".to_owned()])
        );
        let seen = resume(&store, id, now + 5, is_last_page).await;
        assert_eq!(
            relisting(&seen),
            (Some(Relist::WentBack), vec!["/t/a".to_owned()])
        );
    }
}
