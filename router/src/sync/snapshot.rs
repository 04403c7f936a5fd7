//! The table on disk (`--snapshot`): loaded at start, so that a restarting router serves at
//! once and watches the store from where its table was instead of listing every route again;
//! saved after changes (at most every [`SAVE_EVERY`]) and at shutdown, off the request path
//! and off the store sync's task (on the blocking pool). The format is
//! [`crate::table::snapshot`]'s.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::peers::{Latest, Published};
use crate::table::snapshot::{self, Meta};
use crate::table::Table;

/// Shortest time between two saves while changes come.
pub const SAVE_EVERY: Duration = Duration::from_secs(10);

/// The snapshot file of one router.
pub struct Snapshots {
    path: PathBuf,
    /// The newest complete table, the one to save.
    latest: Arc<Latest>,
    /// What the file holds now; held while a save runs, so that two saves never interleave.
    saved: Arc<Mutex<Option<Meta>>>,
}

impl Snapshots {
    pub fn new(path: PathBuf, latest: Arc<Latest>) -> Arc<Snapshots> {
        Arc::new(Snapshots {
            path,
            latest,
            saved: Arc::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The table saved at the path, when there is a usable one for `prefix`: anything else
    /// (no file, a damaged or foreign one, another prefix) is None, with a log line saying why.
    pub(super) async fn load(&self, prefix: &str) -> Option<(Table, Meta)> {
        let path = self.path.clone();
        let started = Instant::now();
        let loaded = tokio::task::spawn_blocking(move || snapshot::load(&path)).await;
        let path = self.path.display();
        let (table, meta) = match loaded {
            Ok(Ok(Some(loaded))) => loaded,
            Ok(Ok(None)) => {
                tracing::info!(%path, "no table snapshot yet: listing the store");
                return None;
            }
            Ok(Err(error)) => {
                tracing::warn!(%path, %error, "ignoring the table snapshot: listing the store");
                return None;
            }
            Err(error) => {
                tracing::warn!(%path, %error, "reading the table snapshot failed: listing the store");
                return None;
            }
        };
        if meta.prefix != prefix {
            tracing::warn!(
                %path,
                snapshot_prefix = meta.prefix,
                prefix,
                "the table snapshot is of another key prefix: listing the store"
            );
            return None;
        }
        tracing::info!(
            %path,
            routes = table.route_count(),
            instances = table.instance_count(),
            store = meta.store,
            routes_revision = meta.routes,
            instances_revision = meta.services,
            took_ms = started.elapsed().as_millis() as u64,
            "loaded the table snapshot"
        );
        Some((table, meta))
    }

    /// The file holds `meta`'s table (it was just loaded): no need to write it again.
    pub(super) fn loaded(&self, meta: Meta) {
        *self.saved.lock().unwrap_or_else(PoisonError::into_inner) = Some(meta);
    }

    /// Saves each new table, at most every [`SAVE_EVERY`]; runs until the process ends.
    pub(super) async fn run(self: Arc<Self>) {
        let mut changes = self.latest.subscribe();
        let mut last: Option<tokio::time::Instant> = None;
        while changes.changed().await.is_ok() {
            if let Some(last) = last {
                tokio::time::sleep_until(last + SAVE_EVERY).await;
            }
            if self.save().await {
                last = Some(tokio::time::Instant::now());
            }
        }
    }

    /// Saves the latest table unless the file holds it already (at shutdown); true when it
    /// tried to write the file. The save runs on the blocking pool and logs its outcome there,
    /// so a save under way finishes (and says so) even when the task that asked is dropped.
    pub async fn save(&self) -> bool {
        self.save_with(false).await
    }

    /// The last save, at shutdown: as [`Snapshots::save`], but a file holding a table at least
    /// as new (saved by the router this one handed its sockets to, in a graceful upgrade) is
    /// left as it is.
    pub async fn save_at_exit(&self) -> bool {
        self.save_with(true).await
    }

    async fn save_with(&self, at_exit: bool) -> bool {
        let Some(pending) = self.latest.get() else {
            return false;
        };
        let path = self.path.clone();
        let saved = self.saved.clone();
        let done =
            tokio::task::spawn_blocking(move || save_blocking(&path, &saved, &pending, at_exit));
        match done.await {
            Ok(tried) => tried,
            Err(error) => {
                tracing::warn!(%error, "saving the table snapshot failed");
                true
            }
        }
    }
}

/// Writes `pending` to `path` unless `saved` says the file holds it already (or, `at_exit`,
/// unless the file holds a table at least as new).
fn save_blocking(
    path: &Path,
    saved: &Mutex<Option<Meta>>,
    pending: &Published,
    at_exit: bool,
) -> bool {
    let mut saved = saved.lock().unwrap_or_else(PoisonError::into_inner);
    if saved.as_ref() == Some(&pending.meta) {
        return false;
    }
    if at_exit && snapshot::holds_newer(path, &pending.meta) {
        tracing::info!(
            path = %path.display(),
            "the table snapshot on disk is at least as new as this router's: left as it is"
        );
        return false;
    }
    let started = Instant::now();
    let shown = path.display();
    match snapshot::save(path, &pending.table, &pending.meta) {
        Ok(bytes) => {
            *saved = Some(pending.meta.clone());
            tracing::info!(
                path = %shown,
                bytes,
                routes = pending.table.route_count(),
                routes_revision = pending.meta.routes,
                instances_revision = pending.meta.services,
                took_ms = started.elapsed().as_millis() as u64,
                "saved the table snapshot"
            );
        }
        Err(error) => {
            tracing::warn!(path = %shown, %error, "cannot save the table snapshot")
        }
    }
    true
}
