//! A table on disk, for a restarting router to serve from at once and then watch the store
//! from where the table was, instead of listing a million routes again (`crate::sync`).
//!
//! What it holds: the HTTP routes as the table keeps them (validated and normalised, their
//! names in one list, grouped by domain in the table's own shards), the TCP routes, and each
//! service's instances (id, address, create revision), with the key prefix, the store's id and
//! the revision the routes and the instances reflect ([`Meta`]). Not the certificates: their
//! private keys stay in the store, and the few of them are listed at every start.
//!
//! The format, all integers little-endian or LEB128 (`varint`), strings a varint length and
//! UTF-8:
//! ```text
//! "FLYNNTBL" u32 version
//! body:    blocks, each: u8 tag, u64 length, bytes; in this order:
//!          1 meta: prefix, store id, i64 routes revision, i64 services revision
//!          2 names: varint count, each a string (every path, service and certificate id)
//!          3 section (any number): u8 kind (0 exact, 1 wildcard, 2 catch-all), varint shard,
//!            varint groups, each: domain, varint routes, each route:
//!            u8 0 + 16 uuid bytes (`http-<uuid>`) | u8 1 + id text;
//!            varint path, varint service, varint certificate (0: none, else name + 1),
//!            u8 flags (sticky 1, leader 2, drain_backends 4, disable_keep_alives 8),
//!            u8 backend protocol (0 http1, 1 h2c, 2 h2)
//!          4 TCP routes: varint count, each: id, u16 port, service, u8 leader, u8 proxy
//!            protocol (0 none, 1 v1, 2 v2), u8 has app id + app id
//!          5 services: varint count, each: name, varint instances, each: id, address,
//!            i64 create revision
//!          0 end (empty)
//! trailer: u64 body length, u32 CRC-32 of the body, "FLYNNEND"
//! ```
//! Sections are the table's shards: [`load`] reads the file block by block and hands the
//! sections to a thread per CPU as they come (memory: a few blocks, never the whole file),
//! and each shard's set goes to the table as it is, sized once, with no edit of a shared map.
//! The checksum is checked at the end; a table read from a file that fails it is dropped.
//!
//! [`read`] never panics on what it reads: a short, foreign, other-version or corrupt file is
//! a [`SnapshotError`] (the caller then lists the store as if there were none).

mod read;
mod write;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use flynn_store::Revision;

use super::Table;
pub use read::{read, read_from, read_meta, read_with};
pub use write::write;

const MAGIC: &[u8; 8] = b"FLYNNTBL";
const END: &[u8; 8] = b"FLYNNEND";
/// The format [`write`] writes and [`read`] reads.
pub const VERSION: u32 = 1;
/// Body length, CRC and end mark.
const TRAILER: usize = 8 + 4 + 8;

/// Block tags.
const END_OF_BODY: u8 = 0;
const META: u8 = 1;
const NAMES: u8 = 2;
const SECTION: u8 = 3;
const TCP: u8 = 4;
const SERVICES: u8 = 5;

/// Section kinds.
const EXACT: u8 = 0;
const WILDCARD: u8 = 1;
const CATCH_ALL: u8 = 2;

/// Where a table came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// The key prefix mirrored (`Keys::prefix`).
    pub prefix: String,
    /// The id of the store ([`flynn_store::StoreStatus::id`]).
    pub store: String,
    /// The revision the routes reflect: every change up to it, none after it.
    pub routes: Revision,
    /// The revision the service instances reflect.
    pub services: Revision,
}

/// Why a snapshot cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a table snapshot")]
    Foreign,
    #[error("format version {0}; this router reads version {VERSION}")]
    Version(u32),
    #[error("truncated")]
    Truncated,
    #[error("checksum mismatch: the file is corrupt")]
    Checksum,
    #[error("corrupt: {0}")]
    Corrupt(&'static str),
}

/// Writes `table` to `path` atomically: a temporary file beside it (mode 0600), synced, then
/// renamed over `path`, and the directory synced. Returns the size written.
pub fn save(path: &Path, table: &Table, meta: &Meta) -> Result<u64, SnapshotError> {
    let tmp = temporary(path);
    let saved = save_via(&tmp, path, table, meta);
    if saved.is_err() {
        // A save cut short (a full disk, most likely) must not keep its partial file: it
        // would hold the space, and its name (by process id) is never written again.
        let _ = fs::remove_file(&tmp);
    }
    saved
}

fn save_via(tmp: &Path, path: &Path, table: &Table, meta: &Meta) -> Result<u64, SnapshotError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let size = write(table, meta, &mut out)?;
    let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    drop(file);
    fs::rename(tmp, path)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()?;
    Ok(size)
}

/// `<path>.<pid>.tmp`: two routers sharing a file (one handing its sockets to the next, both
/// saving) never write into one temporary file.
fn temporary(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}.tmp", std::process::id()));
    PathBuf::from(name)
}

/// Whether the file at `path` holds a table of the same store and key prefix at least as new
/// as `meta`'s on both feeds (e.g. saved by the router that took this one's sockets over).
pub fn holds_newer(path: &Path, meta: &Meta) -> bool {
    let on_disk = File::open(path)
        .and_then(|file| Ok((file.metadata()?.len(), file)))
        .ok()
        .and_then(|(size, file)| read_meta(BufReader::new(file), size).ok());
    on_disk.is_some_and(|disk| {
        disk.store == meta.store
            && disk.prefix == meta.prefix
            && disk.routes >= meta.routes
            && disk.services >= meta.services
    })
}

/// The table saved at `path`; None when there is no file.
pub fn load(path: &Path) -> Result<Option<(Table, Meta)>, SnapshotError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let size = file.metadata()?.len();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    read_from(BufReader::with_capacity(1 << 20, file), size, threads).map(Some)
}

#[cfg(test)]
mod tests;
