//! The embedded store's file: keys, the revision counter and leases in a redb database.
//!
//! Each [`Batch`] is one redb write transaction, committed before it is applied in memory.
//! These functions block on file I/O: call them off the async worker threads.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::Path;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::state::{Batch, Entry};
use crate::{LeaseId, Revision, StoreError};

/// key -> create revision, mod revision, lease (0: none), each i64 little-endian, then the value.
const KVS: TableDefinition<&str, &[u8]> = TableDefinition::new("kvs");
/// "revision" and "next_lease".
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
/// lease id -> TTL in milliseconds.
const LEASES: TableDefinition<i64, u64> = TableDefinition::new("leases");

const REVISION: &str = "revision";
const NEXT_LEASE: &str = "next_lease";
/// Drawn when the file is created (or first opened by a version that did not have it).
const STORE_ID: &str = "store_id";
const HEADER: usize = 24;

/// What the file held when it was opened.
pub(super) struct Loaded {
    pub kvs: BTreeMap<String, Entry>,
    pub revision: Revision,
    pub next_lease: LeaseId,
    pub leases: Vec<(LeaseId, Duration)>,
    pub id: i64,
}

fn failed(e: impl Display) -> StoreError {
    StoreError::Embedded(e.to_string())
}

/// Opens (or creates) the database at `path` and reads everything in it.
pub(super) fn open(path: &Path) -> Result<(Database, Loaded), StoreError> {
    let db = Database::create(path)
        .map_err(|e| StoreError::Embedded(format!("{}: {e}", path.display())))?;
    let txn = db.begin_write().map_err(failed)?;
    let id = {
        txn.open_table(KVS).map_err(failed)?;
        txn.open_table(LEASES).map_err(failed)?;
        let mut meta = txn.open_table(META).map_err(failed)?;
        let stored = meta.get(STORE_ID).map_err(failed)?.map(|v| v.value());
        match stored {
            Some(id) => id,
            None => {
                let id = super::fresh_id();
                meta.insert(STORE_ID, id).map_err(failed)?;
                id
            }
        }
    };
    txn.commit().map_err(failed)?;

    let txn = db.begin_read().map_err(failed)?;
    let meta = txn.open_table(META).map_err(failed)?;
    let revision = meta.get(REVISION).map_err(failed)?.map_or(0, |v| v.value());
    let next_lease = meta
        .get(NEXT_LEASE)
        .map_err(failed)?
        .map_or(1, |v| v.value());

    let mut kvs = BTreeMap::new();
    for row in txn
        .open_table(KVS)
        .map_err(failed)?
        .iter()
        .map_err(failed)?
    {
        let (key, value) = row.map_err(failed)?;
        let key = key.value().to_owned();
        let entry = decode(value.value())
            .ok_or_else(|| StoreError::Embedded(format!("corrupt entry for key {key:?}")))?;
        kvs.insert(key, entry);
    }

    let mut leases = Vec::new();
    for row in txn
        .open_table(LEASES)
        .map_err(failed)?
        .iter()
        .map_err(failed)?
    {
        let (id, ttl) = row.map_err(failed)?;
        leases.push((id.value(), Duration::from_millis(ttl.value())));
    }
    Ok((
        db,
        Loaded {
            kvs,
            revision,
            next_lease,
            leases,
            id,
        },
    ))
}

/// Writes `batch` in one durable transaction.
pub(super) fn commit(db: &Database, batch: &Batch) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(failed)?;
    {
        let mut kvs = txn.open_table(KVS).map_err(failed)?;
        for key in &batch.deletes {
            kvs.remove(key.as_str()).map_err(failed)?;
        }
        for (key, entry) in &batch.puts {
            kvs.insert(key.as_str(), encode(entry).as_slice())
                .map_err(failed)?;
        }
        let mut leases = txn.open_table(LEASES).map_err(failed)?;
        if let Some(id) = batch.revoke {
            leases.remove(id).map_err(failed)?;
        }
        if let Some((id, ttl)) = batch.grant {
            let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            leases.insert(id, millis).map_err(failed)?;
        }
        let mut meta = txn.open_table(META).map_err(failed)?;
        meta.insert(REVISION, batch.revision).map_err(failed)?;
        meta.insert(NEXT_LEASE, batch.next_lease).map_err(failed)?;
    }
    txn.commit().map_err(failed)
}

fn encode(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + entry.value.len());
    out.extend_from_slice(&entry.create_revision.to_le_bytes());
    out.extend_from_slice(&entry.mod_revision.to_le_bytes());
    out.extend_from_slice(&entry.lease.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&entry.value);
    out
}

fn decode(bytes: &[u8]) -> Option<Entry> {
    let field = |i: usize| -> Option<i64> {
        let raw: [u8; 8] = bytes.get(i * 8..(i + 1) * 8)?.try_into().ok()?;
        Some(i64::from_le_bytes(raw))
    };
    let lease = field(2)?;
    Some(Entry {
        create_revision: field(0)?,
        mod_revision: field(1)?,
        lease: (lease != 0).then_some(lease),
        value: bytes.get(HEADER..)?.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let entry = Entry {
            value: b"{\"a\":1}".to_vec(),
            create_revision: 3,
            mod_revision: 9,
            lease: Some(42),
        };
        assert_eq!(decode(&encode(&entry)), Some(entry.clone()));
        let bare = Entry {
            lease: None,
            value: Vec::new(),
            ..entry
        };
        assert_eq!(decode(&encode(&bare)), Some(bare));
        assert_eq!(decode(&[1, 2, 3]), None);
    }
}
