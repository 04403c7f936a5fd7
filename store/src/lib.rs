//! The shared state of Flynn.
//!
//! - [`Store`]: the key-value contract (get, prefix range, put with an optional lease, delete,
//!   compare-and-swap, prefix watch from a revision, leases) with two backends:
//!   [`EtcdStore`] for production and [`EmbeddedStore`] for a single node (a redb file, or memory).
//! - [`mirror`]: a watch that never loses an event: it lists, watches, and re-lists after a
//!   compaction or a broken stream.
//! - [`schema`]: the key layout under the prefix (default `/flynn`).
//! - [`types`]: the JSON values that the router and the controller both read.

mod backend;
mod error;
pub mod mirror;
pub mod schema;
pub mod types;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;

pub use backend::embedded::EmbeddedStore;
pub use backend::etcd::EtcdStore;
pub use error::StoreError;
pub use schema::Keys;

/// A store revision: every write bumps it by one; 0 means "never written".
pub type Revision = i64;
/// A lease handle; keys put with a lease vanish when it expires or is revoked.
pub type LeaseId = i64;

/// One key as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created the key (kept across updates, reset after a delete).
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    pub lease: Option<LeaseId>,
}

/// The keys under a prefix, read at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub kvs: Vec<KeyValue>,
    /// The store revision the listing was read at; watch from `revision + 1` to continue.
    pub revision: Revision,
}

/// Up to a page of the keys under a prefix, read at one revision ([`Store::range_page`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Sorted by key.
    pub kvs: Vec<KeyValue>,
    /// The store revision the page was read at: ask for the next page at this revision.
    pub revision: Revision,
    /// Whether keys after the last one of this page remain.
    pub more: bool,
}

/// Who a store is and how far it has got ([`Store::status`]). A consumer that compares it with
/// what it saw before can tell a store that was only out of reach from one that was replaced or
/// went back in time (restored from an older backup, an empty one started in its place).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreStatus {
    /// The same for as long as the store keeps its data: etcd's cluster id, the embedded
    /// store's id (drawn when its file, or the in-memory store, was created).
    pub id: String,
    /// The server that answered (etcd's member id; the embedded store's id again). Members of
    /// one cluster share the id and the revisions; this only says which one was asked.
    pub member: String,
    /// The store's current revision.
    pub revision: Revision,
}

/// A change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete { key: String, mod_revision: Revision },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// Events of a watch, in revision order. An `Err` ends the stream: [`StoreError::Compacted`]
/// when the start revision is gone, anything else when the stream broke. An error never comes
/// between two events of one revision, so a consumer can resume from its last revision + 1.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

/// Outcome of [`Store::compare_and_swap`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cas {
    /// The write happened at this revision.
    Swapped { revision: Revision },
    /// The key's mod revision was not the expected one; nothing was written.
    Conflict { current: Option<KeyValue> },
}

/// The store contract. Both backends pass the same conformance suite (`store/tests/conformance.rs`).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key starting with `prefix`, sorted by key, and the revision they were read at.
    /// Read in pages at one revision when the store answers in pages (a big prefix never
    /// needs one huge answer).
    async fn range(&self, prefix: &str) -> Result<Listing, StoreError>;

    /// Up to `limit` keys (at least one) starting with `prefix`, after the key `after` (from
    /// the first when None), sorted by key, read at `revision` (the current one when None).
    /// Listing page after page at the first page's revision gives a consistent listing; a
    /// revision that can no longer be read is [`StoreError::Compacted`] (start over), one
    /// above the current revision is [`StoreError::Rejected`].
    async fn range_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<Page, StoreError>;

    /// [`Store::range_page`] of the keys up to `until` (inclusive; no bound when None): a
    /// listing can read disjoint parts of a prefix side by side, each part a range of keys
    /// `(after, until]`. `more` is false once no key up to `until` remains.
    async fn range_page_until(
        &self,
        prefix: &str,
        after: Option<&str>,
        until: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<Page, StoreError> {
        let mut page = self.range_page(prefix, after, limit, revision).await?;
        if let Some(until) = until {
            if let Some(cut) = page.kvs.iter().position(|kv| kv.key.as_str() > until) {
                page.kvs.truncate(cut);
                page.more = false;
            }
        }
        Ok(page)
    }

    /// The store's identity and current revision.
    async fn status(&self) -> Result<StoreStatus, StoreError>;

    /// Writes `value`; with a lease, the key is deleted when the lease ends. Returns the new revision.
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError>;

    /// Deletes `key`; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;

    /// Writes `value` only if the key's mod revision is `expected` (0: the key must not exist).
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Cas, StoreError>;

    /// Deletes `key` only if its mod revision is `expected`; returns whether it was deleted.
    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<bool, StoreError>;

    /// Every change under `prefix` with a revision >= `from` (values below 1 count as 1), then
    /// live changes. A compacted `from` shows up as a [`StoreError::Compacted`] item.
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError>;

    /// A new lease that lives `ttl` unless kept alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError>;

    /// Renews the lease for its full TTL; [`StoreError::LeaseNotFound`] once it has expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Ends the lease now, deleting its keys.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Drops the history before `revision`: a watch from an older revision then ends with
    /// [`StoreError::Compacted`]. Compacting to a revision that is already compacted does nothing;
    /// a revision above the current one is [`StoreError::Rejected`].
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;
}

/// Keys per page when [`list`] reads a prefix.
pub const DEFAULT_PAGE: usize = 10_000;

/// Every key under `prefix`, read page by page at the first page's revision; starts over when
/// that revision is compacted away in the middle. What a backend's [`Store::range`] can be.
pub async fn list(store: &dyn Store, prefix: &str, page: usize) -> Result<Listing, StoreError> {
    'listing: loop {
        let mut listing = Listing::default();
        let mut at = None;
        loop {
            let after = listing.kvs.last().map(|kv| kv.key.as_str());
            let next = match store.range_page(prefix, after, page, at).await {
                Ok(next) => next,
                Err(StoreError::Compacted { .. }) if at.is_some() => continue 'listing,
                Err(e) => return Err(e),
            };
            at = Some(next.revision);
            listing.revision = next.revision;
            let done = !next.more || next.kvs.is_empty();
            listing.kvs.extend(next.kvs);
            if done {
                return Ok(listing);
            }
        }
    }
}

/// The smallest key greater than every key starting with `prefix` (None: there is none, the
/// prefix is empty or all 0xff bytes).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Opens a store from a URL: `etcd://host:port[,host:port...]`, `file:///path/to/store.redb`
/// (embedded, on disk) or `memory:` (embedded, gone on exit).
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if let Some(hosts) = url.strip_prefix("etcd://") {
        let endpoints: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| format!("http://{h}"))
            .collect();
        if endpoints.is_empty() {
            return Err(StoreError::BadUrl(url.to_owned()));
        }
        return Ok(Arc::new(EtcdStore::connect(&endpoints).await?));
    }
    if let Some(path) = url.strip_prefix("file://") {
        if path.is_empty() {
            return Err(StoreError::BadUrl(url.to_owned()));
        }
        let path = path.to_owned();
        let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(path))
            .await
            .map_err(|e| StoreError::Embedded(format!("opening the store failed: {e}")))??;
        return Ok(Arc::new(store));
    }
    if url == "memory:" || url == "memory://" {
        return Ok(Arc::new(EmbeddedStore::in_memory()));
    }
    Err(StoreError::BadUrl(url.to_owned()))
}
