//! How a route gets from the store into the table: one mirror per prefix (routes, service
//! instances, certificates) feeds [`TableWriter`], which edits its private table incrementally
//! and publishes an immutable snapshot after each batch of changes.
//!
//! With `--snapshot` ([`snapshot`]) the published table is also kept on disk with the store's
//! id and the revision its routes and its instances reflect. At start [`open`] loads it and
//! serves it at once; the routes and instances mirrors then resume from those revisions
//! (`mirror::spawn_resuming`): changes made while the router was down come as watch events,
//! and the mirror lists (the listing replacing the table when it ends) only when the store was
//! replaced, went back, or was compacted past them. Certificates are not on disk (their keys
//! stay in the store): they are listed at every start.
//!
//! With no usable file, [`peers`] takes the table of a live router instead of listing it
//! (`--join-peers`, on by default), checked against the store and resumed from in the same way.

pub mod peers;
pub mod snapshot;

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use flynn_store::mirror::{self, ListPage, MirrorEvent, Options, Resume};
use flynn_store::schema::ROUTE_SPLITS;
use flynn_store::types::{Certificate, HttpRouteRef, Instance, Route};
use flynn_store::{KeyValue, Keys, Listing, Revision, Store};
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::proxy::sticky;
use crate::server::StoreSource;
use crate::table::snapshot::Meta;
use crate::table::{Bulk, RouteEntry, RouteId, Table};
use crate::tls;
use peers::Latest;
use snapshot::Snapshots;

/// Most changes applied before a snapshot is published.
const MAX_BATCH: usize = 4096;
/// Mirror messages queued per feed (a listing page counts as one: this bounds the memory of a
/// listing that arrives faster than it is applied).
const QUEUE: usize = 256;
/// Longest a listing under way holds back a publish.
const LISTING_PUBLISH: Duration = Duration::from_secs(1);
/// Keys per listing page; `FLYNN_STORE_PAGE_SIZE` overrides it (for tests of paging).
const PAGE_SIZE_ENV: &str = "FLYNN_STORE_PAGE_SIZE";
/// Parts of the routes listed side by side; `FLYNN_STORE_LIST_PARALLEL` overrides it.
const LIST_PARALLEL: usize = 4;
const LIST_PARALLEL_ENV: &str = "FLYNN_STORE_LIST_PARALLEL";
/// How long [`open`] waits for the store to say who it is before serving a loaded snapshot
/// unchecked (the mirrors check it once the store answers).
const CHECK_WAIT: Duration = Duration::from_secs(2);

/// The prefixes the router mirrors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Feed {
    Routes,
    Services,
    Certs,
}

/// Owns the next table; the only writer of the shared snapshot.
pub struct TableWriter {
    keys: Keys,
    table: Table,
    shared: Arc<ArcSwap<Table>>,
    metrics: Arc<Metrics>,
    revision: i64,
    /// Bumped after each publish, for those who react to table changes (TCP listeners).
    published: watch::Sender<u64>,
    /// Per feed, the listing under way: what its pages held so far.
    listings: [Option<Seen>; 3],
    /// The routes of a listing into a table with none (the first at start-up), added all at
    /// once when it ends ([`crate::table::Bulk`]) or before anything is published.
    bulk: Option<Bulk>,
    /// Per feed, where its part of the table is from.
    feeds: [FeedState; 3],
    /// Per feed, the state loaded from a snapshot that its mirror resumes from.
    resume: [Option<Resume>; 3],
    /// Where the table is kept on disk (`--snapshot`).
    snapshots: Option<Arc<Snapshots>>,
    /// The newest complete table, for routers that start after this one (`GET /snapshot`).
    latest: Arc<Latest>,
    /// Whether a start with no table of its own takes a live router's (`--join-peers`).
    join_peers: bool,
}

/// The store a feed's part of the table was read from and the revision it reflects: every
/// change to the feed's keys up to it, none after it. No store while unknown (a listing under
/// way, or none yet).
#[derive(Clone, Debug, Default)]
struct FeedState {
    store: Option<String>,
    revision: Revision,
}

/// The keys a listing has held so far, as hashes (8 bytes per key instead of a copy of each
/// id: a million routes cost 8 MB while they are listed, not 60).
struct Seen {
    /// Whether keys are noted at all (not when nothing can be gone at the listing's end).
    tracked: bool,
    hasher: foldhash::quality::RandomState,
    keys: HashSet<u64>,
}

impl Seen {
    fn new(tracked: bool) -> Seen {
        Seen {
            tracked,
            hasher: foldhash::quality::RandomState::default(),
            keys: HashSet::new(),
        }
    }

    fn hash(&self, key: &(impl std::hash::Hash + ?Sized)) -> u64 {
        self.hasher.hash_one(key)
    }

    fn insert(&mut self, key: &(impl std::hash::Hash + ?Sized)) {
        if !self.tracked {
            return;
        }
        let hash = self.hash(key);
        self.keys.insert(hash);
    }

    fn contains(&self, key: &(impl std::hash::Hash + ?Sized)) -> bool {
        self.keys.contains(&self.hash(key))
    }
}

impl TableWriter {
    pub fn new(keys: Keys, shared: Arc<ArcSwap<Table>>, metrics: Arc<Metrics>) -> TableWriter {
        TableWriter {
            keys,
            table: Table::clone(&shared.load()),
            shared,
            metrics,
            revision: 0,
            published: watch::Sender::new(0),
            listings: [None, None, None],
            bulk: None,
            feeds: Default::default(),
            resume: [None, None, None],
            snapshots: None,
            latest: Arc::default(),
            join_peers: false,
        }
    }

    /// Takes a live router's table at a start with no usable snapshot file ([`peers`]).
    pub fn with_join_peers(mut self, join: bool) -> TableWriter {
        self.join_peers = join;
        self
    }

    /// The newest complete table, kept for the admin listener's `GET /snapshot`.
    pub fn latest(&self) -> Arc<Latest> {
        self.latest.clone()
    }

    /// Keeps the table in a snapshot file at `path` (none: no snapshot).
    pub fn with_snapshot(mut self, path: Option<PathBuf>) -> TableWriter {
        self.snapshots = path.map(|path| Snapshots::new(path, self.latest.clone()));
        self
    }

    /// The snapshot file's keeper, to save the last table at shutdown.
    pub fn snapshots(&self) -> Option<Arc<Snapshots>> {
        self.snapshots.clone()
    }

    /// Serves a table loaded from a snapshot (the file's, when `from_file`; else a peer's); the
    /// routes and instances mirrors will resume from where it was.
    fn restore(&mut self, table: Table, meta: Meta, from_file: bool) {
        self.table = table;
        for (feed, revision) in [(Feed::Routes, meta.routes), (Feed::Services, meta.services)] {
            let i = feed as usize;
            self.feeds[i] = FeedState {
                store: Some(meta.store.clone()),
                revision,
            };
            self.resume[i] = Some(Resume {
                store: meta.store.clone(),
                revision,
            });
        }
        self.revision = meta.routes.max(meta.services);
        if let Some(snapshots) = self.snapshots.as_ref().filter(|_| from_file) {
            snapshots.loaded(meta);
        }
        self.publish();
    }

    /// Where the table is from, when it can be saved: both the routes and the instances from
    /// one store, no listing of theirs under way.
    fn snapshot_meta(&self) -> Option<Meta> {
        let [routes, services] = [Feed::Routes, Feed::Services].map(|f| &self.feeds[f as usize]);
        let store = routes.store.as_ref()?;
        if services.store.as_ref() != Some(store)
            || store.is_empty()
            || self.listings[Feed::Routes as usize].is_some()
            || self.listings[Feed::Services as usize].is_some()
        {
            return None;
        }
        Some(Meta {
            prefix: self.keys.prefix().to_owned(),
            store: store.clone(),
            routes: routes.revision,
            services: services.revision,
        })
    }

    /// Changes every time a new table is published.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Whether a listing is under way (some of its pages applied, not its last).
    pub fn listing(&self) -> bool {
        self.listings.iter().any(Option::is_some)
    }

    /// Makes the edits so far visible to requests.
    pub fn publish(&mut self) {
        self.add_bulk();
        self.metrics.routes.set(self.table.route_count() as i64);
        self.metrics
            .instances
            .set(self.table.instance_count() as i64);
        self.metrics
            .certificates
            .set(self.table.certificate_count() as i64);
        self.metrics.store_revision.set(self.revision);
        let table = Arc::new(self.table.clone());
        self.shared.store(table.clone());
        self.published.send_modify(|generation| *generation += 1);
        if let Some(meta) = self.snapshot_meta() {
            self.latest.set(table, meta);
        }
    }

    /// Replaces every route with those listed.
    pub fn reset_routes(&mut self, listing: &Listing) {
        self.apply_whole(Feed::Routes, listing);
    }

    /// Replaces every instance with those listed.
    pub fn reset_instances(&mut self, listing: &Listing) {
        self.apply_whole(Feed::Services, listing);
    }

    /// Applies a page of a listing of the routes, as the routes mirror brings it.
    pub fn routes_page(&mut self, page: ListPage) {
        self.apply(Feed::Routes, MirrorEvent::Page(page));
    }

    /// Applies a route put; returns the route id when the key is a route key.
    pub fn put_route(&mut self, kv: &KeyValue) -> Option<RouteId> {
        self.revision = self.revision.max(kv.mod_revision);
        let Some(id) = self.keys.parse_route(&kv.key) else {
            self.invalid(&kv.key, "not a route key");
            return None;
        };
        let route_id = RouteId::new(id);
        // Most values: an HTTP route read in place, its strings not copied.
        if let Some(route) = HttpRouteRef::parse(&kv.value) {
            let added = match self.bulk.as_mut() {
                Some(bulk) => self.table.stage(bulk, route_id.clone(), &route),
                None => self.table.upsert_stored(route_id.clone(), &route),
            };
            if let Err(e) = added {
                self.invalid(&kv.key, &e.to_string());
            }
            return Some(route_id);
        }
        let route = match serde_json::from_slice::<Route>(&kv.value) {
            Ok(Route::Http(route)) => route,
            Ok(Route::Tcp(mut route)) => {
                route.id = id.to_owned();
                if route.port == 0 || route.service.is_empty() {
                    self.invalid(&kv.key, "a TCP route needs a port and a service");
                } else {
                    self.table.upsert_tcp_route(route);
                }
                return Some(route_id);
            }
            Err(e) => {
                // Keep the last good version of the route, if any.
                self.invalid(&kv.key, &e.to_string());
                return Some(route_id);
            }
        };
        match RouteEntry::from_stored(id, route) {
            Ok(entry) => self.table.upsert_route(entry),
            Err(e) => self.invalid(&kv.key, &e.to_string()),
        }
        Some(route_id)
    }

    pub fn delete_route(&mut self, key: &str, revision: i64) {
        self.revision = self.revision.max(revision);
        if let Some(id) = self.keys.parse_route(key) {
            self.table.remove_route(id);
        }
    }

    /// Applies an instance put; returns (service, instance id) when the key is an instance key.
    pub fn put_instance(&mut self, kv: &KeyValue) -> Option<(String, String)> {
        self.revision = self.revision.max(kv.mod_revision);
        let Some((service, id)) = self.keys.parse_instance(&kv.key) else {
            self.invalid(&kv.key, "not a service instance key");
            return None;
        };
        match serde_json::from_slice::<Instance>(&kv.value) {
            Ok(instance) => self
                .table
                .upsert_instance(service, id, &instance, kv.create_revision),
            Err(e) => self.invalid(&kv.key, &e.to_string()),
        }
        Some((service.to_owned(), id.to_owned()))
    }

    pub fn delete_instance(&mut self, key: &str, revision: i64) {
        self.revision = self.revision.max(revision);
        if let Some((service, id)) = self.keys.parse_instance(key) {
            self.table.remove_instance(service, id);
        }
    }

    /// Replaces every certificate with those listed.
    pub fn reset_certs(&mut self, listing: &Listing) {
        self.apply_whole(Feed::Certs, listing);
    }

    /// A whole listing as one page.
    fn apply_whole(&mut self, feed: Feed, listing: &Listing) {
        self.list_page(
            feed,
            ListPage {
                kvs: listing.kvs.clone(),
                revision: listing.revision,
                first: true,
                last: true,
                store: String::new(),
            },
        );
    }

    /// Applies a page of a listing; its last page removes what none of the listing's pages held.
    fn list_page(&mut self, feed: Feed, page: ListPage) {
        let i = feed as usize;
        if feed == Feed::Routes && (page.first || self.listings[i].is_none()) {
            // What an earlier attempt staged is in the table before this one starts.
            self.add_bulk();
        }
        if page.first || self.listings[i].is_none() {
            // A listing into a table that holds nothing of its feed (the first one, at
            // start-up) has nothing to remove at its end: it need not note what it holds. One
            // that starts over does (the table holds what the earlier attempt brought).
            let empty = match feed {
                Feed::Routes => self.table.route_count() == 0,
                Feed::Services => self.table.instance_count() == 0,
                Feed::Certs => self.table.certificate_count() == 0,
            };
            let restart = self.listings[i].is_some();
            let tracked = !empty || restart;
            self.listings[i] = Some(Seen::new(tracked));
            if feed == Feed::Routes {
                crate::alloc::listing(true);
                if !tracked {
                    self.bulk = Some(Bulk::default());
                }
            }
        }
        for kv in &page.kvs {
            match feed {
                Feed::Routes => {
                    if let Some(id) = self.put_route(kv) {
                        self.seen(i, &id);
                    }
                }
                Feed::Services => {
                    if let Some((s, id)) = self.put_instance(kv) {
                        self.seen(i, format!("{s}/{id}").as_str());
                    }
                }
                Feed::Certs => {
                    if let Some(id) = self.put_cert(kv) {
                        self.seen(i, id.as_str());
                    }
                }
            }
        }
        if !page.last {
            return;
        }
        if feed == Feed::Routes {
            self.add_bulk();
            crate::alloc::listing(false);
        }
        let Some(seen) = self.listings[i].take() else {
            return;
        };
        if !seen.tracked {
            self.revision = self.revision.max(page.revision);
            return;
        }
        match feed {
            Feed::Routes => {
                let gone: Vec<RouteId> = self
                    .table
                    .route_ids()
                    .filter(|id| !seen.contains(id))
                    .collect();
                for id in gone {
                    id.with_str(|id| self.table.remove_route(id));
                }
            }
            Feed::Services => {
                let mut gone = Vec::new();
                for name in self.table.service_names() {
                    if let Some(service) = self.table.service(name) {
                        for b in service.backends() {
                            if !seen.contains(format!("{name}/{}", b.id).as_str()) {
                                gone.push((name.clone(), b.id.clone()));
                            }
                        }
                    }
                }
                for (service, id) in gone {
                    self.table.remove_instance(&service, &id);
                }
            }
            Feed::Certs => {
                let gone: Vec<String> = self
                    .table
                    .certificate_ids()
                    .filter(|id| !seen.contains(id.as_str()))
                    .cloned()
                    .collect();
                for id in gone {
                    self.table.remove_certificate(&id);
                }
            }
        }
        self.revision = self.revision.max(page.revision);
    }

    /// Adds the routes staged by a listing into an empty table ([`Bulk`]), on every CPU.
    fn add_bulk(&mut self) {
        if let Some(bulk) = self.bulk.take().filter(|b| !b.is_empty()) {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let (routes, started) = (bulk.len(), Instant::now());
            self.table.add_bulk(bulk, threads);
            let ms = started.elapsed().as_millis();
            tracing::info!(routes, ms, "added the routes listed into the empty table");
        }
    }

    /// Notes that the listing under way for feed `i` held `key`.
    fn seen(&mut self, i: usize, key: &(impl std::hash::Hash + ?Sized)) {
        if let Some(seen) = self.listings[i].as_mut() {
            seen.insert(key);
        }
    }

    /// Applies a certificate put: a bad PEM or a key that does not match is skipped (counted),
    /// and the last good version keeps serving.
    pub fn put_cert(&mut self, kv: &KeyValue) -> Option<String> {
        self.revision = self.revision.max(kv.mod_revision);
        let Some(id) = self.keys.parse_cert(&kv.key) else {
            self.invalid(&kv.key, "not a certificate key");
            return None;
        };
        let parsed = serde_json::from_slice::<Certificate>(&kv.value)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                tls::parse(c.cert.as_bytes(), c.key.as_bytes()).map_err(|e| e.to_string())
            });
        match parsed {
            Ok(certified) => self.table.upsert_certificate(id, Arc::new(certified)),
            Err(why) => self.invalid(&kv.key, &why),
        }
        Some(id.to_owned())
    }

    pub fn delete_cert(&mut self, key: &str, revision: i64) {
        self.revision = self.revision.max(revision);
        if let Some(id) = self.keys.parse_cert(key) {
            self.table.remove_certificate(id);
        }
    }

    fn invalid(&self, key: &str, why: &str) {
        self.metrics.store_invalid_entries.inc();
        tracing::warn!(key, why, "skipped an invalid store entry");
    }

    fn apply(&mut self, feed: Feed, event: MirrorEvent) {
        let state = &mut self.feeds[feed as usize];
        match &event {
            MirrorEvent::Page(page) if page.first => state.store = None,
            MirrorEvent::Put(kv) => state.revision = state.revision.max(kv.mod_revision),
            MirrorEvent::Delete { mod_revision, .. } => {
                state.revision = state.revision.max(*mod_revision)
            }
            MirrorEvent::Relisting(_) => *state = FeedState::default(),
            _ => {}
        }
        if let MirrorEvent::Page(page) = &event {
            if page.last {
                *state = FeedState {
                    store: Some(page.store.clone()).filter(|s| !s.is_empty()),
                    revision: page.revision,
                };
            }
        }
        if feed == Feed::Routes && !matches!(event, MirrorEvent::Page(_)) {
            // A change comes after the routes staged before it.
            self.add_bulk();
        }
        match (feed, event) {
            (_, MirrorEvent::Page(page)) => self.list_page(feed, page),
            (Feed::Certs, MirrorEvent::Put(kv)) => {
                self.put_cert(&kv);
            }
            (Feed::Certs, MirrorEvent::Delete { key, mod_revision }) => {
                self.delete_cert(&key, mod_revision)
            }
            (Feed::Routes, MirrorEvent::Put(kv)) => {
                self.put_route(&kv);
            }
            (Feed::Services, MirrorEvent::Put(kv)) => {
                self.put_instance(&kv);
            }
            (Feed::Routes, MirrorEvent::Delete { key, mod_revision }) => {
                self.delete_route(&key, mod_revision)
            }
            (Feed::Services, MirrorEvent::Delete { key, mod_revision }) => {
                self.delete_instance(&key, mod_revision)
            }
            (_, MirrorEvent::Relisting(why)) => {
                // The store may have gone back: the listing says where it is now.
                self.revision = 0;
                self.metrics.store_relists.inc();
                tracing::warn!(?feed, ?why, "listing the store again");
            }
            (_, MirrorEvent::Connected | MirrorEvent::Disconnected(_)) => {}
        }
    }
}

/// Keeps the shared table in step with the store until the process ends.
pub async fn run(store: Arc<dyn Store>, writer: TableWriter, metrics: Arc<Metrics>) {
    let keys = writer.keys.clone();
    let (routes_tx, routes_rx) = mpsc::channel(QUEUE);
    let (services_tx, services_rx) = mpsc::channel(QUEUE);
    let (certs_tx, certs_rx) = mpsc::channel(QUEUE);
    let mut options = Options::default();
    if let Some(size) = std::env::var(PAGE_SIZE_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        options.page_size = size;
    }
    // A million routes: their parts listed side by side keep the store and the table busy at
    // once.
    let mut route_options = options;
    route_options.splits = ROUTE_SPLITS;
    route_options.parallel = std::env::var(LIST_PARALLEL_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(LIST_PARALLEL);
    let [routes_from, services_from, _] = writer.resume.clone();
    let spawn = |prefix: String, tx, options, from: Option<Resume>| match from {
        Some(from) => mirror::spawn_resuming(store.clone(), prefix, tx, options, from),
        None => mirror::spawn(store.clone(), prefix, tx, options),
    };
    let _routes = Abort(spawn(keys.routes(), routes_tx, route_options, routes_from));
    let _services = Abort(spawn(keys.services(), services_tx, options, services_from));
    let _certs = Abort(spawn(keys.certs(), certs_tx, options, None));
    let _saver = writer
        .snapshots
        .clone()
        .map(|snapshots| Abort(tokio::spawn(snapshots.run())));
    consume(writer, metrics, [routes_rx, services_rx, certs_rx]).await;
}

/// Ends a task when dropped (the store sync stops at shutdown).
struct Abort(tokio::task::JoinHandle<()>);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens the store. With a snapshot file, loads it meanwhile and serves the table it holds at
/// once when it is of this store: checked against the store's id and revision when the store
/// answers within [`CHECK_WAIT`] (another store, or one that went back, and the snapshot is
/// not used: the mirrors list); served unchecked otherwise (the store may be down: the last
/// table is the one to serve), and the mirrors check the store when it answers. With no table
/// from a file, and `--join-peers`, takes a live router's table ([`peers`]), served only once
/// the store has said it is of it.
pub async fn open(source: &StoreSource, writer: &mut TableWriter) -> Arc<dyn Store> {
    let open = source.open();
    tokio::pin!(open);
    let mut store = None;
    if let Some(snapshots) = writer.snapshots.clone() {
        let prefix = writer.keys.prefix().to_owned();
        let loading = snapshots.load(&prefix);
        tokio::pin!(loading);
        let loaded = loop {
            tokio::select! {
                loaded = &mut loading => break loaded,
                opened = &mut open, if store.is_none() => store = Some(opened),
            }
        };
        if let Some((table, meta)) = loaded {
            let deadline = tokio::time::Instant::now() + CHECK_WAIT;
            if store.is_none() {
                if let Ok(opened) = tokio::time::timeout_at(deadline, &mut open).await {
                    store = Some(opened);
                }
            }
            let status = match &store {
                Some(store) => status_within(store.as_ref(), deadline).await,
                None => Err(format!("not reachable within {CHECK_WAIT:?}")),
            };
            let path = snapshots.path().display().to_string();
            match status {
                Ok(status) => {
                    if usable(&meta, &status, "the table snapshot", &path) {
                        writer.restore(table, meta, true);
                    }
                }
                Err(error) => {
                    tracing::warn!(
                        %path,
                        %error,
                        "the store cannot say who it is: serving the table snapshot until it can"
                    );
                    writer.restore(table, meta, true);
                }
            }
        }
    }
    let store = match store {
        Some(store) => store,
        None => open.await,
    };
    let restored = writer.resume.iter().any(Option::is_some);
    if writer.join_peers && !restored {
        join_a_peer(store.as_ref(), writer).await;
    }
    store
}

/// Serves a live router's table ([`peers`]) when one gives a table the store says is of it;
/// else nothing changes (the mirrors will list).
async fn join_a_peer(store: &dyn Store, writer: &mut TableWriter) {
    let Some((table, meta, peer)) = peers::fetch(store, &writer.keys).await else {
        return;
    };
    let peer = peer.to_string();
    match status_within(store, tokio::time::Instant::now() + CHECK_WAIT).await {
        Ok(status) => {
            if usable(&meta, &status, "the live router's table", &peer) {
                writer.restore(table, meta, false);
            }
        }
        Err(error) => tracing::warn!(
            %peer,
            %error,
            "the store cannot say who it is: not using the live router's table, listing"
        ),
    }
}

/// The store's id and revision, or why it did not say by `deadline`.
async fn status_within(
    store: &dyn Store,
    deadline: tokio::time::Instant,
) -> Result<flynn_store::StoreStatus, String> {
    match tokio::time::timeout_at(deadline, store.status()).await {
        Ok(status) => status.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {CHECK_WAIT:?}")),
    }
}

/// Whether a table of `meta` (`what`, from `from`) may be served by a router of the store that
/// says `status`: of the same store, and not ahead of it.
fn usable(meta: &Meta, status: &flynn_store::StoreStatus, what: &str, from: &str) -> bool {
    let ahead = meta.routes.max(meta.services);
    if status.id != meta.store {
        tracing::warn!(
            from,
            table_store = meta.store,
            store = status.id,
            "{what} is of another store: not using it, listing the store"
        );
        false
    } else if status.revision < ahead {
        tracing::warn!(
            from,
            table_revision = ahead,
            store_revision = status.revision,
            "{what} is ahead of the store (restored from an older backup?): not using it, \
             listing the store"
        );
        false
    } else {
        true
    }
}

async fn consume(
    mut writer: TableWriter,
    metrics: Arc<Metrics>,
    [mut routes, mut services, mut certs]: [mpsc::Receiver<MirrorEvent>; 3],
) {
    // Per feed: has it listed once (or resumed from a snapshot and watched), is its watch up.
    let mut listed = [false; 3];
    let resumed = writer.resume.clone().map(|r| r.is_some());
    let mut connected = [false; 3];
    let mut last_publish = Instant::now();
    // Changes (not listing pages) applied since the last publish.
    let mut changed = false;
    loop {
        let (feed, first) = tokio::select! {
            Some(e) = routes.recv() => (Feed::Routes, e),
            Some(e) = services.recv() => (Feed::Services, e),
            Some(e) = certs.recv() => (Feed::Certs, e),
            else => return,
        };
        let mut batch = vec![(feed, first)];
        for (feed, rx) in [
            (Feed::Routes, &mut routes),
            (Feed::Services, &mut services),
            (Feed::Certs, &mut certs),
        ] {
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(e) => batch.push((feed, e)),
                    Err(_) => break,
                }
            }
        }
        for (feed, event) in batch {
            let i = feed as usize;
            match &event {
                MirrorEvent::Put(_) | MirrorEvent::Delete { .. } => changed = true,
                MirrorEvent::Page(page) if page.last => listed[i] = true,
                MirrorEvent::Connected => {
                    connected[i] = true;
                    listed[i] |= resumed[i];
                }
                MirrorEvent::Disconnected(_) => connected[i] = false,
                _ => {}
            }
            writer.apply(feed, event);
        }
        // A listing of a million routes touches every shard of the table, and each publish
        // makes the next edits copy the shards they touch: a listing under way is published
        // when it ends (the last table serves meanwhile), changes that came during it at most
        // once a second.
        let publish = !writer.listing() || (changed && last_publish.elapsed() >= LISTING_PUBLISH);
        let published = if publish {
            writer.publish();
            last_publish = Instant::now();
            changed = false;
            true
        } else {
            false
        };
        metrics.store_contact(connected.iter().all(|c| *c));
        if published && listed.iter().all(|l| *l) {
            metrics.mark_synced();
        }
    }
}

/// The sticky-cookie key every router shares, created by whichever router asks first
/// (compare-and-swap, so two routers starting together agree). Retries until the store answers.
pub async fn shared_cookie_key(store: &dyn Store, keys: &Keys) -> [u8; 32] {
    let key = keys.cookie_key();
    let mut delay = Duration::from_millis(100);
    loop {
        match fetch_or_create(store, &key).await {
            Ok(bytes) => return bytes,
            Err(error) => {
                tracing::warn!(%error, key, retry_in = ?delay, "cannot read the cookie key");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn fetch_or_create(store: &dyn Store, key: &str) -> Result<[u8; 32], String> {
    loop {
        if let Some(kv) = store.get(key).await.map_err(|e| e.to_string())? {
            let text = String::from_utf8_lossy(&kv.value);
            return sticky::parse_key(&text).map_err(|e| format!("{key}: {e}"));
        }
        let fresh = sticky::random_key();
        let hex: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
        match store
            .compare_and_swap(key, 0, hex.into_bytes(), None)
            .await
            .map_err(|e| e.to_string())?
        {
            flynn_store::Cas::Swapped { .. } => return Ok(fresh),
            // Another router wrote one first: use theirs.
            flynn_store::Cas::Conflict { .. } => continue,
        }
    }
}

/// Opens the store at `url`, retrying with back-off until it answers.
pub async fn open_with_retry(url: &str) -> Arc<dyn Store> {
    let mut delay = Duration::from_millis(100);
    loop {
        match flynn_store::open(url).await {
            Ok(store) => return store,
            Err(error) => {
                tracing::warn!(%error, url, retry_in = ?delay, "cannot open the store");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
