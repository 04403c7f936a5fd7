//! Keeps the ticket keys: follows `<prefix>/tls/ticket-keys` with a mirror (list, then watch)
//! into the [`SharedTicketer`], creates the keys when there are none and rotates them when the
//! current one is a period old, both by compare-and-swap on the key's revision, so that routers
//! starting or rotating together agree on one value (the loser adopts the winner's).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use flynn_store::mirror::{self, MirrorEvent};
use flynn_store::{Cas, KeyValue, Keys, Revision, Store};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{SharedTicketer, StoredKey, StoredKeys};
use crate::server::StoreSource;

/// Waits after a failed store write, doubling up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// The background service keeping the ticket keys of one router.
pub struct Keeper {
    pub store: StoreSource,
    pub keys: Keys,
    /// How old the current key gets before a new one replaces it.
    pub period: Duration,
    pub ticketer: Arc<SharedTicketer>,
}

#[async_trait]
impl BackgroundService for Keeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let work = async {
            let store = self.store.open().await;
            run(
                store,
                self.keys.tls_ticket_keys(),
                self.period,
                &self.ticketer,
            )
            .await;
        };
        tokio::select! {
            () = work => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// What the store holds under the key, as far as this router knows.
#[derive(Debug)]
enum Seen {
    /// Not listed yet.
    Unknown,
    Absent,
    /// A value that does not parse, at this revision: replaced.
    Invalid(Revision),
    Valid(StoredKeys, Revision),
}

/// Follows the key until the store's mirror ends (never, while the process lives).
pub async fn run(store: Arc<dyn Store>, key: String, period: Duration, ticketer: &SharedTicketer) {
    let (tx, mut rx) = mpsc::channel(16);
    // The mirror stops once `rx` is dropped.
    let _mirror = mirror::spawn(store.clone(), key.clone(), tx, mirror::Options::default());
    let mut seen = Seen::Unknown;
    // The value of a listing under way.
    let mut listing: Option<KeyValue> = None;
    let mut retry = FIRST_RETRY;
    let mut not_before = Instant::now();
    loop {
        let wait = match &seen {
            Seen::Unknown => None,
            Seen::Absent | Seen::Invalid(_) => Some(Duration::ZERO),
            Seen::Valid(keys, _) => Some(keys.due_in(unix_now(), period)),
        };
        let at = wait.map(|w| (Instant::now() + w).max(not_before));
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { return };
                if let Some(next) = apply(event, &key, &mut listing) {
                    seen = next;
                    if let Seen::Valid(keys, _) = &seen {
                        ticketer.set(keys);
                    }
                }
            }
            () = sleep_until(at) => {
                match write(store.as_ref(), &key, &seen).await {
                    Ok(next) => {
                        retry = FIRST_RETRY;
                        if let Some(next) = next {
                            seen = next;
                            if let Seen::Valid(keys, _) = &seen {
                                ticketer.set(keys);
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, key, retry_in = ?retry, "cannot write the TLS ticket keys");
                        not_before = Instant::now() + retry;
                        retry = (retry * 2).min(MAX_RETRY);
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a mirror event says about the key (None: nothing new).
fn apply(event: MirrorEvent, key: &str, listing: &mut Option<KeyValue>) -> Option<Seen> {
    match event {
        MirrorEvent::Page(page) => {
            if page.first {
                *listing = None;
            }
            if let Some(kv) = page.kvs.into_iter().find(|kv| kv.key == key) {
                *listing = Some(kv);
            }
            page.last.then(|| match listing.take() {
                Some(kv) => parsed(&kv),
                None => Seen::Absent,
            })
        }
        MirrorEvent::Put(kv) if kv.key == key => Some(parsed(&kv)),
        MirrorEvent::Delete { key: deleted, .. } if deleted == key => Some(Seen::Absent),
        _ => None,
    }
}

fn parsed(kv: &KeyValue) -> Seen {
    match StoredKeys::parse(&kv.value) {
        Ok(keys) => Seen::Valid(keys, kv.mod_revision),
        Err(error) => {
            tracing::warn!(%error, key = kv.key, "the TLS ticket keys in the store do not parse: replacing them");
            Seen::Invalid(kv.mod_revision)
        }
    }
}

/// Creates, replaces or rotates the keys as `seen` asks, by compare-and-swap: the new state
/// (this router's write, or the value that beat it), None when there was nothing to do.
async fn write(store: &dyn Store, key: &str, seen: &Seen) -> Result<Option<Seen>, String> {
    let now = unix_now();
    let (expected, keys) = match seen {
        Seen::Unknown => return Ok(None),
        Seen::Absent => (0, StoredKeys::new(fresh(now)?)),
        Seen::Invalid(revision) => (*revision, StoredKeys::new(fresh(now)?)),
        Seen::Valid(keys, revision) => (*revision, keys.rotated(fresh(now)?)),
    };
    match store
        .compare_and_swap(key, expected, keys.to_json(), None)
        .await
        .map_err(|e| e.to_string())?
    {
        Cas::Swapped { revision } => {
            if expected == 0 {
                tracing::info!("created the TLS session ticket keys");
            } else {
                tracing::info!("rotated the TLS session ticket keys");
            }
            Ok(Some(Seen::Valid(keys, revision)))
        }
        // Another router was first: take its value (the watch brings it too).
        Cas::Conflict { current } => Ok(Some(match current {
            Some(kv) => parsed(&kv),
            None => Seen::Absent,
        })),
    }
}

fn fresh(now: u64) -> Result<StoredKey, String> {
    StoredKey::random(now).map_err(|e| e.to_string())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
