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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use flynn_store::{Keys, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::registration::routers_prefix;
use crate::table::snapshot::{self, Meta};
use crate::table::Table;

/// Peers asked at most, one after the other.
const MAX_PEERS: usize = 3;
/// How long a peer may take to accept the connection.
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

/// The newest complete table this router has published (what `GET /snapshot` serves).
#[derive(Default)]
pub struct Latest(ArcSwapOption<Published>);

impl Latest {
    pub(super) fn set(&self, table: Arc<Table>, meta: Meta) {
        self.0.store(Some(Arc::new(Published { table, meta })));
    }

    /// The table encoded as a snapshot; None while there is no complete table yet.
    pub async fn encode(&self) -> Option<std::io::Result<Vec<u8>>> {
        let published = self.0.load_full()?;
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
    for peer in peers.into_iter().take(MAX_PEERS) {
        let started = Instant::now();
        let bytes = match get_snapshot(peer).await {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::info!(%peer, %error, "no table from this router");
                continue;
            }
        };
        let size = bytes.len();
        let read = tokio::task::spawn_blocking(move || snapshot::read(&bytes)).await;
        match read {
            Ok(Ok((table, meta))) if meta.prefix == keys.prefix() => {
                tracing::info!(
                    %peer,
                    bytes = size,
                    routes = table.route_count(),
                    instances = table.instance_count(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "took the table of a live router"
                );
                return Some((table, meta, peer));
            }
            Ok(Ok((_, meta))) => tracing::warn!(
                %peer,
                peer_prefix = meta.prefix,
                "that router's table is of another key prefix"
            ),
            Ok(Err(error)) => tracing::warn!(%peer, %error, "that router's table is unreadable"),
            Err(error) => tracing::warn!(%peer, %error, "reading that router's table failed"),
        }
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
    #[error("no connection within {CONNECT:?}")]
    ConnectTimeout,
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
}

/// `GET /snapshot` from the admin listener at `peer`: the body of a 200 answer.
async fn get_snapshot(peer: SocketAddr) -> Result<Vec<u8>, PeerError> {
    let mut stream = timeout(CONNECT, TcpStream::connect(peer))
        .await
        .map_err(|_| PeerError::ConnectTimeout)??;
    let exchange = async {
        stream
            .write_all(b"GET /snapshot HTTP/1.1\r\nHost: flynn-router\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(MAX_BYTES + MAX_HEAD as u64 + 1)
            .read_to_end(&mut answer)
            .await?;
        Ok::<_, PeerError>(answer)
    };
    let mut answer = timeout(FETCH, exchange)
        .await
        .map_err(|_| PeerError::Timeout)??;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut head = httparse::Response::new(&mut headers);
    let head_len = match head.parse(&answer) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err(PeerError::Malformed("incomplete head")),
        Err(_) => return Err(PeerError::Malformed("bad head")),
    };
    match head.code {
        Some(200) => {}
        Some(status) => return Err(PeerError::Status(status)),
        None => return Err(PeerError::Malformed("no status")),
    }
    let length = head
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
    if (answer.len() - head_len) as u64 != length {
        return Err(PeerError::Malformed(
            "body shorter or longer than its Content-Length",
        ));
    }
    answer.drain(..head_len);
    Ok(answer)
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
