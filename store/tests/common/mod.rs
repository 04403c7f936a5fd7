//! The backends the store tests run against, and helpers to read watches with a deadline.
//!
//! `for_each_backend!(case, ...)` turns every `async fn case(backend: &Backend)` of the calling
//! test file into three tests: `etcd::case` (a real etcd process of its own), `memory::case`
//! (the embedded store in memory) and `file::case` (the embedded store on a redb file).

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use flynn_store::{EmbeddedStore, KeyValue, Revision, Store, StoreError, WatchEvent, WatchStream};
use flynn_testkit::Etcd;
use futures::StreamExt;

/// How long anything that should happen "now" may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// One store under test and what keeps it alive.
pub struct Backend {
    pub store: Arc<dyn Store>,
    /// A lease TTL the backend honours as asked. etcd raises shorter TTLs to its minimum, which
    /// is 2 s with the default heartbeat and election timeout; the embedded store counts in ms.
    pub short_ttl: Duration,
    pub etcd: Option<Etcd>,
    pub dir: Option<tempfile::TempDir>,
}

impl Backend {
    pub async fn etcd() -> Backend {
        let etcd = Etcd::start().await;
        let store = flynn_store::open(&etcd.url())
            .await
            .expect("connect to etcd");
        Backend {
            store,
            short_ttl: Duration::from_secs(2),
            etcd: Some(etcd),
            dir: None,
        }
    }

    pub async fn memory() -> Backend {
        Backend {
            store: Arc::new(EmbeddedStore::in_memory()),
            short_ttl: Duration::from_secs(1),
            etcd: None,
            dir: None,
        }
    }

    pub async fn file() -> Backend {
        let dir = tempfile::tempdir().expect("temporary dir");
        let url = format!("file://{}", dir.path().join("store.redb").display());
        let store = flynn_store::open(&url).await.expect("open the store file");
        Backend {
            store,
            short_ttl: Duration::from_secs(1),
            etcd: None,
            dir: Some(dir),
        }
    }

    /// The store's current revision.
    pub async fn revision(&self) -> Revision {
        self.store.range("").await.expect("range").revision
    }
}

/// Declares one module per backend with one test per case.
#[macro_export]
macro_rules! for_each_backend {
    ($($case:ident),* $(,)?) => {
        $crate::backend_tests!(etcd; $($case),*);
        $crate::backend_tests!(memory; $($case),*);
        $crate::backend_tests!(file; $($case),*);
    };
}

#[macro_export]
macro_rules! backend_tests {
    ($backend:ident; $($case:ident),*) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = $crate::common::Backend::$backend().await;
                    super::$case(&backend).await;
                }
            )*
        }
    };
}

/// The next item of a watch, or a failure if none comes within [`DEADLINE`].
pub async fn next_item(watch: &mut WatchStream) -> Option<Result<WatchEvent, StoreError>> {
    tokio::time::timeout(DEADLINE, watch.next())
        .await
        .expect("the watch delivered nothing in time")
}

/// The next event of a watch; fails on an error, the end of the stream or a timeout.
pub async fn next_event(watch: &mut WatchStream) -> WatchEvent {
    match next_item(watch).await {
        Some(Ok(event)) => event,
        Some(Err(e)) => panic!("the watch failed: {e}"),
        None => panic!("the watch ended"),
    }
}

/// The value of a put event, or a failure naming what came instead.
pub fn expect_put(event: WatchEvent) -> KeyValue {
    match event {
        WatchEvent::Put(kv) => kv,
        other => panic!("expected a put, got {other:?}"),
    }
}

pub fn kv(key: &str, value: &[u8], create: Revision, modified: Revision) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: value.to_vec(),
        create_revision: create,
        mod_revision: modified,
        lease: None,
    }
}
