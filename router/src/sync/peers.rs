//! A router that starts with no table of its own (no `--snapshot` file, or one it cannot use)
//! takes the table of a live peer instead of listing every route from the store: listing a
//! million routes costs etcd 3.4 9–11 CPU seconds, copying a peer's table takes well under one.
//!
//! Every router keeps its newest complete table ([`Latest`]: routes and instances from one
//! store, no listing under way, with the store's id and revisions) and serves it on its admin
//! listener as `GET /snapshot`, in [`crate::table::snapshot`]'s format. A starting router reads
//! the live routers' registrations (`<prefix>/routers/`), asks a few of them in random order,
//! checks the table it got against the store (same id, not ahead of it), serves it, and its
//! mirrors resume watching from the table's revisions: whatever changed since comes as watch
//! events, and a store compacted past them is listed as after any snapshot.
//! `--join-peers false` turns this off (the router then always lists).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flynn_store::{Keys, Store};
use tokio::sync::watch;

use crate::registration::routers_prefix;
use crate::table::snapshot::{self, Meta};
use crate::table::Table;

/// Peers asked at most, one after the other. A peer that refuses the connection at once (a
/// router gone whose registration has not expired yet) is not counted: it costs nothing, and
/// registrations of stopped routers must not hide the live one.
const MAX_PEERS: usize = 3;
/// How long a peer may take to accept the connection, or to send the next bytes.
const CONNECT: Duration = Duration::from_secs(1);
/// How long a peer may take to send its whole table (a million routes: ~46 MB, about a
/// second to encode).
const FETCH: Duration = Duration::from_secs(20);
/// The largest table taken from a peer.
const MAX_BYTES: u64 = 2 << 30;
/// The longest answer head read.
const MAX_HEAD: usize = 8 * 1024;

/// A complete table and where it is from.
pub struct Published {
    pub table: Arc<Table>,
    pub meta: Meta,
}

/// The newest complete table this router has published (routes and instances from one store,
/// no listing under way): what `GET /snapshot` serves and the `--snapshot` file saves
/// (`super::snapshot`, which waits on its changes).
pub struct Latest(watch::Sender<Option<Arc<Published>>>);

impl Default for Latest {
    fn default() -> Self {
        Latest(watch::Sender::new(None))
    }
}

impl Latest {
    pub(super) fn set(&self, table: Arc<Table>, meta: Meta) {
        self.0
            .send_replace(Some(Arc::new(Published { table, meta })));
    }

    pub(super) fn get(&self) -> Option<Arc<Published>> {
        self.0.borrow().clone()
    }

    /// Changes each time a new complete table is published.
    pub(super) fn subscribe(&self) -> watch::Receiver<Option<Arc<Published>>> {
        self.0.subscribe()
    }

    /// The table encoded as a snapshot; None while there is no complete table yet.
    pub async fn encode(&self) -> Option<std::io::Result<Vec<u8>>> {
        let published = self.get()?;
        let encoded = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(64 * published.table.route_count() + 4096);
            snapshot::write(&published.table, &published.meta, &mut out).map(|_| out)
        })
        .await;
        Some(encoded.unwrap_or_else(|e| Err(std::io::Error::other(e))))
    }
}

/// A table from one of the live routers registered in `store`, for `keys`' prefix, with the
/// admin address it came from; None when no peer gave one (each failure logged).
pub(super) async fn fetch(store: &dyn Store, keys: &Keys) -> Option<(Table, Meta, SocketAddr)> {
    let listed = match store.range(&routers_prefix(keys)).await {
        Ok(listed) => listed,
        Err(error) => {
            tracing::info!(%error, "cannot list the live routers: listing the store");
            return None;
        }
    };
    let mut peers: Vec<SocketAddr> = listed
        .kvs
        .iter()
        .filter_map(|kv| admin_address(&kv.value))
        .collect();
    fastrand::shuffle(&mut peers);
    if peers.is_empty() {
        tracing::info!("no live router to take the table from: listing the store");
        return None;
    }
    let mut asked = 0;
    for peer in peers {
        if asked == MAX_PEERS {
            break;
        }
        let started = Instant::now();
        let fetched = tokio::task::spawn_blocking(move || fetch_from(peer))
            .await
            .unwrap_or_else(|e| Err(PeerError::Io(std::io::Error::other(e))));
        match fetched {
            Ok((table, meta, bytes)) if meta.prefix == keys.prefix() => {
                tracing::info!(
                    %peer,
                    bytes,
                    routes = table.route_count(),
                    instances = table.instance_count(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "took the table of a live router"
                );
                return Some((table, meta, peer));
            }
            Ok((_, meta, _)) => tracing::warn!(
                %peer,
                peer_prefix = meta.prefix,
                "that router's table is of another key prefix"
            ),
            Err(PeerError::Unreadable(error)) => {
                tracing::warn!(%peer, %error, "that router's table is unreadable")
            }
            Err(error) => {
                tracing::info!(%peer, %error, "no table from this router");
                if error.refused() {
                    continue;
                }
            }
        }
        asked += 1;
    }
    None
}

/// The admin address in a router's registration (`{"id", "admin": "ip:port"}`).
fn admin_address(registration: &[u8]) -> Option<SocketAddr> {
    let value: serde_json::Value = serde_json::from_slice(registration).ok()?;
    value.get("admin")?.as_str()?.parse().ok()
}

/// Why a peer gave no table.
#[derive(Debug, thiserror::Error)]
enum PeerError {
    #[error("no whole answer within {FETCH:?}")]
    Timeout,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the answer is not HTTP: {0}")]
    Malformed(&'static str),
    #[error("answered {0}")]
    Status(u16),
    #[error("the table is over {MAX_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    Unreadable(#[from] snapshot::SnapshotError),
}

impl PeerError {
    /// Nothing listens at the peer's address: a router gone (see [`MAX_PEERS`]).
    fn refused(&self) -> bool {
        matches!(self, PeerError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    }
}

/// `GET /snapshot` from the admin listener at `peer`, the table decoded as it arrives (never
/// held whole in memory): the table, where it is from, and its size in bytes. Blocking (a
/// start-up's one-off, on the blocking pool); the whole exchange within [`FETCH`].
fn fetch_from(peer: SocketAddr) -> Result<(Table, Meta, u64), PeerError> {
    let stream = std::net::TcpStream::connect_timeout(&peer, CONNECT)?;
    stream.set_read_timeout(Some(CONNECT))?;
    stream.set_write_timeout(Some(CONNECT))?;
    (&stream)
        .write_all(b"GET /snapshot HTTP/1.1\r\nHost: flynn-router\r\nConnection: close\r\n\r\n")?;
    let mut input = BufReader::with_capacity(
        1 << 20,
        Deadline {
            inner: stream,
            end: Instant::now() + FETCH,
        },
    );
    // The head, line by line up to its empty line.
    let mut head = Vec::with_capacity(512);
    loop {
        let before = head.len();
        (&mut input)
            .take((MAX_HEAD - head.len()) as u64)
            .read_until(b'\n', &mut head)?;
        if head.len() == before || !head.ends_with(b"\n") {
            return Err(PeerError::Malformed("incomplete head"));
        }
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(PeerError::Malformed("bad head")),
    }
    match parsed.code {
        Some(200) => {}
        Some(status) => return Err(PeerError::Status(status)),
        None => return Err(PeerError::Malformed("no status")),
    }
    let length = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .ok_or(PeerError::Malformed("no Content-Length"))?;
    if length > MAX_BYTES {
        return Err(PeerError::TooLarge);
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (table, meta) = snapshot::read_from(input.take(length), length, threads)?;
    Ok((table, meta, length))
}

/// A reader that fails once its deadline has passed (each read also bounded by the socket's
/// read timeout), so that a peer trickling its table out cannot hold a start-up.
struct Deadline {
    inner: std::net::TcpStream,
    end: Instant,
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if Instant::now() > self.end {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                PeerError::Timeout.to_string(),
            ));
        }
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_give_their_admin_address() {
        assert_eq!(
            admin_address(br#"{"id":"router-1","admin":"127.0.0.5:9000"}"#),
            Some("127.0.0.5:9000".parse().unwrap())
        );
        assert_eq!(admin_address(br#"{"id":"router-1"}"#), None);
        assert_eq!(admin_address(br#"{"admin":"not an address"}"#), None);
        assert_eq!(admin_address(b"garbage"), None);
    }
}
