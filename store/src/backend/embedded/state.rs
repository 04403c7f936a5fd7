//! The embedded store's memory: keys, leases, and the recent event history for watches.
//!
//! Writers plan a [`Batch`] against the state, persist it, then [`State::apply`] it; applying is
//! the only way keys change, and it publishes the events to the history and the live watchers
//! under the same lock, so a watch that replays and then subscribes sees no gap and no duplicate.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::{KeyValue, LeaseId, Page, Revision, StoreError, WatchEvent};

/// How many events the history keeps; a watch from before them gets [`StoreError::Compacted`].
pub(super) const HISTORY_LIMIT: usize = 10_000;

/// A stored key's value and metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub lease: Option<LeaseId>,
}

impl Entry {
    pub fn to_kv(&self, key: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            lease: self.lease,
        }
    }
}

/// A live lease.
#[derive(Debug)]
pub(super) struct Lease {
    pub ttl: Duration,
    pub deadline: Instant,
    pub keys: BTreeSet<String>,
    /// Set when the reaper has decided to end it: keep-alives fail from then on.
    pub expiring: bool,
}

/// One atomic change: planned under the state lock, persisted, then applied.
#[derive(Debug, Default)]
pub(super) struct Batch {
    /// The store revision once applied.
    pub revision: Revision,
    pub puts: Vec<(String, Entry)>,
    pub deletes: Vec<String>,
    pub grant: Option<(LeaseId, Duration)>,
    pub revoke: Option<LeaseId>,
    pub next_lease: LeaseId,
}

/// What a writer's plan decided: an optional change and the caller's answer.
pub(super) type Plan<T> = Result<(Option<Batch>, T), StoreError>;

/// The events of one revision, published to live watchers as one message so that a watcher
/// that falls behind breaks between revisions, never inside one.
pub(super) type Published = Arc<[Arc<WatchEvent>]>;

/// Everything the embedded store knows.
#[derive(Debug)]
pub(super) struct State {
    pub kvs: BTreeMap<String, Entry>,
    pub revision: Revision,
    pub next_lease: LeaseId,
    pub leases: HashMap<LeaseId, Lease>,
    history: VecDeque<Arc<WatchEvent>>,
    history_limit: usize,
    /// The oldest revision a watch may start from.
    first_available: Revision,
}

impl State {
    /// A state restored from disk (or empty). Leases get their full TTL from now; the history
    /// starts empty, so watches from before `revision + 1` are compacted.
    pub fn new(
        kvs: BTreeMap<String, Entry>,
        revision: Revision,
        next_lease: LeaseId,
        leases: Vec<(LeaseId, Duration)>,
    ) -> State {
        let now = Instant::now();
        let mut by_id: HashMap<LeaseId, Lease> = leases
            .into_iter()
            .map(|(id, ttl)| {
                let lease = Lease {
                    ttl,
                    deadline: now + ttl,
                    keys: BTreeSet::new(),
                    expiring: false,
                };
                (id, lease)
            })
            .collect();
        for (key, entry) in &kvs {
            if let Some(lease) = entry.lease.and_then(|id| by_id.get_mut(&id)) {
                lease.keys.insert(key.clone());
            }
        }
        State {
            kvs,
            revision,
            next_lease: next_lease.max(1),
            leases: by_id,
            history: VecDeque::new(),
            history_limit: HISTORY_LIMIT,
            first_available: revision + 1,
        }
    }

    /// An empty batch based on the current revision and lease counter.
    pub fn batch(&self) -> Batch {
        Batch {
            revision: self.revision,
            next_lease: self.next_lease,
            ..Batch::default()
        }
    }

    /// The keys under `prefix`, sorted.
    pub fn range(&self, prefix: &str) -> Vec<KeyValue> {
        self.kvs
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, entry)| entry.to_kv(key))
            .collect()
    }

    /// Up to `limit` keys under `prefix` after `after`, as they were at revision `at` (now when
    /// None). The store keeps only the latest values: an older revision can be read when no
    /// change since then touched the keys still to list, which the history tells; otherwise
    /// (or when the history no longer reaches back to it) the answer is `Compacted`.
    pub fn page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        at: Option<Revision>,
    ) -> Result<Page, StoreError> {
        use std::ops::Bound;
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let revision = at.unwrap_or(self.revision);
        if revision > self.revision {
            return Err(StoreError::Rejected(format!(
                "revision {revision} is in the future (the store is at {})",
                self.revision
            )));
        }
        if revision < self.revision {
            if revision + 1 < self.first_available {
                return Err(StoreError::Compacted {
                    compact_revision: self.first_available,
                });
            }
            let first_later = self.history.partition_point(|e| e.revision() <= revision);
            let still_to_list = |key: &str| {
                key.starts_with(prefix)
                    && match start {
                        Bound::Excluded(after) => key > after,
                        _ => true,
                    }
            };
            if let Some(changed) = self
                .history
                .range(first_later..)
                .find(|e| still_to_list(e.key()))
            {
                return Err(StoreError::Compacted {
                    compact_revision: changed.revision(),
                });
            }
        }
        let mut keys = self
            .kvs
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix));
        let kvs: Vec<KeyValue> = keys
            .by_ref()
            .take(limit)
            .map(|(key, entry)| entry.to_kv(key))
            .collect();
        let more = keys.next().is_some();
        Ok(Page {
            kvs,
            revision,
            more,
        })
    }

    /// Fails unless `lease` exists and is not ending.
    pub fn check_lease(&self, lease: Option<LeaseId>) -> Result<(), StoreError> {
        match lease {
            None => Ok(()),
            Some(id) => match self.leases.get(&id) {
                Some(l) if !l.expiring && l.deadline > Instant::now() => Ok(()),
                _ => Err(StoreError::LeaseNotFound(id)),
            },
        }
    }

    /// Plans writing `value` to `key` at the next revision.
    pub fn plan_put(
        &self,
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Batch, StoreError> {
        self.check_lease(lease)?;
        let mut batch = self.batch();
        batch.revision += 1;
        let create_revision = self
            .kvs
            .get(&key)
            .map_or(batch.revision, |e| e.create_revision);
        let entry = Entry {
            value,
            create_revision,
            mod_revision: batch.revision,
            lease,
        };
        batch.puts.push((key, entry));
        Ok(batch)
    }

    /// Plans deleting `key` at the next revision (None when it does not exist).
    pub fn plan_delete(&self, key: String) -> Option<Batch> {
        if !self.kvs.contains_key(&key) {
            return None;
        }
        let mut batch = self.batch();
        batch.revision += 1;
        batch.deletes.push(key);
        Some(batch)
    }

    /// Plans ending lease `id` and deleting its keys (in one revision, if it has any).
    pub fn plan_revoke(&self, id: LeaseId) -> Result<Batch, StoreError> {
        let lease = self.leases.get(&id).ok_or(StoreError::LeaseNotFound(id))?;
        let mut batch = self.batch();
        if !lease.keys.is_empty() {
            batch.revision += 1;
            batch.deletes = lease.keys.iter().cloned().collect();
        }
        batch.revoke = Some(id);
        Ok(batch)
    }

    /// Plans ending lease `id` if its deadline has passed, and marks it as ending.
    pub fn plan_expire(&mut self, id: LeaseId, now: Instant) -> Option<Batch> {
        let lease = self.leases.get_mut(&id)?;
        if !lease.expiring && lease.deadline > now {
            return None;
        }
        lease.expiring = true;
        self.plan_revoke(id).ok()
    }

    /// The earliest lease deadline, if any lease lives.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.leases.values().map(|l| l.deadline).min()
    }

    /// The leases whose deadline has passed.
    pub fn due_leases(&self, now: Instant) -> Vec<LeaseId> {
        self.leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Renews lease `id` for its TTL.
    pub fn keep_alive(&mut self, id: LeaseId, now: Instant) -> Result<(), StoreError> {
        match self.leases.get_mut(&id) {
            Some(lease) if !lease.expiring && lease.deadline > now => {
                lease.deadline = now + lease.ttl;
                Ok(())
            }
            _ => Err(StoreError::LeaseNotFound(id)),
        }
    }

    /// Applies a persisted batch and publishes its events.
    pub fn apply(&mut self, batch: Batch, events: &broadcast::Sender<Published>) {
        let revision = batch.revision;
        let mut published = Vec::with_capacity(batch.deletes.len() + batch.puts.len());
        for key in batch.deletes {
            if let Some(old) = self.kvs.remove(&key) {
                self.unbind(old.lease, &key);
                published.push(WatchEvent::Delete {
                    key,
                    mod_revision: revision,
                });
            }
        }
        for (key, entry) in batch.puts {
            let old_lease = self.kvs.get(&key).and_then(|e| e.lease);
            if old_lease != entry.lease {
                self.unbind(old_lease, &key);
            }
            if let Some(lease) = entry.lease.and_then(|id| self.leases.get_mut(&id)) {
                lease.keys.insert(key.clone());
            }
            published.push(WatchEvent::Put(entry.to_kv(&key)));
            self.kvs.insert(key, entry);
        }
        if let Some(id) = batch.revoke {
            self.leases.remove(&id);
        }
        if let Some((id, ttl)) = batch.grant {
            let lease = Lease {
                ttl,
                deadline: Instant::now() + ttl,
                keys: BTreeSet::new(),
                expiring: false,
            };
            self.leases.insert(id, lease);
        }
        self.revision = revision;
        self.next_lease = batch.next_lease;
        let published: Published = published.into_iter().map(Arc::new).collect();
        self.history.extend(published.iter().cloned());
        if !published.is_empty() {
            // No receiver is not an error: nobody watches right now.
            let _ = events.send(published);
        }
        self.trim();
    }

    fn unbind(&mut self, lease: Option<LeaseId>, key: &str) {
        if let Some(lease) = lease.and_then(|id| self.leases.get_mut(&id)) {
            lease.keys.remove(key);
        }
    }

    /// Drops whole revisions from the front until the history fits its limit.
    fn trim(&mut self) {
        while self.history.len() > self.history_limit {
            let Some(oldest) = self.history.pop_front() else {
                break;
            };
            let revision = oldest.revision();
            while self
                .history
                .front()
                .is_some_and(|e| e.revision() == revision)
            {
                self.history.pop_front();
            }
            self.first_available = self.first_available.max(revision + 1);
        }
    }

    /// Drops the history before `revision`.
    pub fn compact(&mut self, revision: Revision) -> Result<(), StoreError> {
        if revision > self.revision {
            return Err(StoreError::Rejected(format!(
                "cannot compact to revision {revision}: the store is at {}",
                self.revision
            )));
        }
        if revision <= self.first_available {
            return Ok(());
        }
        while self
            .history
            .front()
            .is_some_and(|e| e.revision() < revision)
        {
            self.history.pop_front();
        }
        self.first_available = revision;
        Ok(())
    }

    /// The recorded events under `prefix` from revision `from` on.
    pub fn replay(&self, prefix: &str, from: Revision) -> Result<Vec<WatchEvent>, StoreError> {
        if from < self.first_available {
            return Err(StoreError::Compacted {
                compact_revision: self.first_available,
            });
        }
        let start = self.history.partition_point(|e| e.revision() < from);
        Ok(self
            .history
            .range(start..)
            .filter(|e| e.key().starts_with(prefix))
            .map(|e| WatchEvent::clone(e))
            .collect())
    }

    #[cfg(test)]
    pub fn set_history_limit(&mut self, limit: usize) {
        self.history_limit = limit;
    }
}
