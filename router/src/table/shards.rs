//! A copy-on-write hash set in shards: cloning it is one reference count, and an edit after a
//! clone copies the outer array of shard pointers and the one shard it changes (a few thousand
//! entries at a million), not the whole set. Entries are small (a pointer or two), so a route
//! costs a few bytes in each set instead of a node of a persistent map.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::sync::Arc;

/// The sets' hasher: foldhash, seeded at random per process (several times faster than std's
/// SipHash on host names and ids; keys come from the store, lookups never insert).
type Hasher = foldhash::quality::RandomState;
pub(super) type HashSet<T> = std::collections::HashSet<T, Hasher>;

/// Shards per set (a power of two).
pub(super) const SHARDS: usize = 256;

/// A set of `T` looked up by `K` (`T: Borrow<K>`).
#[derive(Debug)]
pub struct Shards<K: ?Sized, T> {
    shards: Arc<Vec<Arc<HashSet<T>>>>,
    len: usize,
    key: PhantomData<fn(&K)>,
}

impl<K: ?Sized, T> Clone for Shards<K, T> {
    fn clone(&self) -> Self {
        Shards {
            shards: self.shards.clone(),
            len: self.len,
            key: PhantomData,
        }
    }
}

impl<K: ?Sized, T> Default for Shards<K, T> {
    fn default() -> Self {
        Shards {
            shards: Arc::new(
                (0..SHARDS)
                    .map(|_| Arc::new(HashSet::with_hasher(Hasher::default())))
                    .collect(),
            ),
            len: 0,
            key: PhantomData,
        }
    }
}

/// The shard of a key: the top bits of a fixed-seed hash (the set inside hashes again with
/// its own random seed). The same in every process (table snapshots rely on it).
pub(super) fn shard_of<K: Hash + ?Sized>(key: &K) -> usize {
    let hash = foldhash::fast::FixedState::with_seed(0x5eed).hash_one(key);
    (hash >> 56) as usize & (SHARDS - 1)
}

impl<K: Hash + Eq + ?Sized, T: Hash + Eq + Clone + Borrow<K>> Shards<K, T> {
    pub fn get(&self, key: &K) -> Option<&T> {
        self.shards.get(shard_of(key))?.get(key)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Adds `value`, or replaces the entry with the same key; returns the one replaced.
    pub fn insert(&mut self, value: T) -> Option<T> {
        let shard = self.shard_mut(shard_of(value.borrow()))?;
        let old = shard.replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove(&mut self, key: &K) -> Option<T> {
        let i = shard_of(key);
        // Copy nothing when there is nothing to remove.
        self.shards.get(i)?.get(key)?;
        let old = self.shard_mut(i)?.take(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.shards.iter().flat_map(|shard| shard.iter())
    }

    /// The shards, in order: shard `i` holds the keys whose [`shard_of`] is `i`.
    pub fn sets(&self) -> impl Iterator<Item = &HashSet<T>> {
        self.shards.iter().map(|shard| &**shard)
    }

    /// A set from its [`SHARDS`] shards, each holding only keys of its own [`shard_of`] (the
    /// caller's promise: a key in the wrong shard is never found); None for another count.
    pub fn from_sets(sets: Vec<HashSet<T>>) -> Option<Shards<K, T>> {
        if sets.len() != SHARDS {
            return None;
        }
        let len = sets.iter().map(HashSet::len).sum();
        Some(Shards {
            shards: Arc::new(sets.into_iter().map(Arc::new).collect()),
            len,
            key: PhantomData,
        })
    }

    fn shard_mut(&mut self, i: usize) -> Option<&mut HashSet<T>> {
        Arc::make_mut(&mut self.shards)
            .get_mut(i)
            .map(Arc::make_mut)
    }
}

/// An empty shard with room for `capacity` entries.
pub(super) fn new_set<T>(capacity: usize) -> HashSet<T> {
    HashSet::with_capacity_and_hasher(capacity, Hasher::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_leave_clones_alone() {
        let mut a: Shards<str, String> = Shards::default();
        for i in 0..1000 {
            assert!(a.insert(format!("k{i}")).is_none());
        }
        let b = a.clone();
        assert!(a.insert("k1".into()).is_some());
        assert_eq!(a.remove("k2").as_deref(), Some("k2"));
        assert_eq!(a.remove("k2"), None);
        assert_eq!((a.len(), b.len()), (999, 1000));
        assert!(b.get("k2").is_some() && a.get("k2").is_none());
        assert_eq!(a.iter().count(), 999);
        // Only the edited shards were copied.
        let shared = a
            .shards
            .iter()
            .zip(b.shards.iter())
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert!(shared >= SHARDS - 2, "{shared}");
    }
}
