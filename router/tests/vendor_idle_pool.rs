//! The keep-alive pool of idle HTTP/1 backend connections that vendor patch 0002 gives pingora
//! (vendor/pingora-core/src/connectors/idle_pool.rs), driven through the API the proxy uses:
//! `TransportConnector::new_stream` connects, `release_stream` puts a connection in the pool,
//! `reused_stream` takes one out. Real sockets on 127.0.0.1 and real time: the pool's idle
//! timeouts use std's clock, its sweeper runs once a second.
//!
//! These are not unit tests beside the pool because they could not run there: pingora-core is
//! outside the workspace, and cargo refuses to test a crate that is not a workspace member and
//! has dev-dependencies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::protocols::Stream;
use pingora::upstreams::peer::{BasicPeer, Peer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How long a test waits for something that must happen (the sweeper runs once a second).
const WAIT: Duration = Duration::from_secs(5);

/// A backend: a listener and the peer that names it.
struct Backend {
    listener: TcpListener,
    peer: BasicPeer,
}

impl Backend {
    async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        Backend {
            listener,
            peer: BasicPeer::new(&addr.to_string()),
        }
    }

    fn key(&self) -> u64 {
        self.peer.reuse_hash()
    }

    /// A new connection made by `connector`, and the backend's end of it.
    async fn connect(&self, connector: &TransportConnector) -> (Stream, TcpStream) {
        let stream = connector.new_stream(&self.peer).await.expect("connect");
        let (server, from) = self.listener.accept().await.expect("accept");
        assert_eq!(from, local_addr(&stream), "accepted another connection");
        (stream, server)
    }
}

/// A connector whose pool holds `capacity` connections, and what its pool discards (how long
/// each discarded connection was idle).
fn connector(capacity: usize) -> (TransportConnector, mpsc::UnboundedReceiver<Duration>) {
    let (discarded, discards) = mpsc::unbounded_channel();
    let mut options = ConnectorOptions::new(capacity);
    options.keepalive_pool_callback = Some(Arc::new(move |idle: Duration| {
        let _ = discarded.send(idle);
    }));
    (TransportConnector::new(Some(options)), discards)
}

/// The connection's own address: which connection a stream is.
fn local_addr(stream: &Stream) -> SocketAddr {
    let digest = stream.get_socket_digest().expect("socket digest");
    *digest
        .local_addr()
        .and_then(|addr| addr.as_inet())
        .expect("inet local addr")
}

/// The connection `reused_stream` hands out for `backend`, by its address.
async fn reused(connector: &TransportConnector, backend: &Backend) -> Option<SocketAddr> {
    connector
        .reused_stream(&backend.peer)
        .await
        .map(|stream| local_addr(&stream))
}

/// Waits until the pool closed the connection whose backend end is `server`.
async fn closed(server: &mut TcpStream) {
    let mut buf = [0u8; 16];
    match tokio::time::timeout(WAIT, server.read(&mut buf)).await {
        // a close with nothing unread is a FIN; with unread data, a reset
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("read {n} bytes from an idle connection"),
        Err(_) => panic!("the connection is still open after {WAIT:?}"),
    }
}

/// Waits for the pool to discard a connection; returns how long it was idle.
async fn discard(discards: &mut mpsc::UnboundedReceiver<Duration>) -> Duration {
    tokio::time::timeout(WAIT, discards.recv())
        .await
        .expect("no connection discarded in time")
        .expect("callback dropped")
}

/// The backend's close or write reaches the client's socket and the runtime's reactor: the pool
/// checks a connection with a read that must not block, which sees only readiness already
/// polled.
async fn let_the_reactor_see_it() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn a_connection_is_reused_for_its_own_peer_only() {
    let (connector, mut discards) = connector(16);
    let (a, b) = (Backend::start().await, Backend::start().await);

    let (stream, _server) = a.connect(&connector).await;
    let addr = local_addr(&stream);
    connector.release_stream(stream, a.key(), None);
    assert_eq!(reused(&connector, &b).await, None, "another peer's key");
    assert_eq!(
        reused(&connector, &a).await,
        Some(addr),
        "its own key, once"
    );
    assert_eq!(reused(&connector, &a).await, None, "handed out once only");

    // Released under another peer's key, a connection is not handed out for that peer: the
    // address it was connected to is checked (the patch's replacement for getpeername(2)).
    let (stream, mut server) = a.connect(&connector).await;
    connector.release_stream(stream, b.key(), None);
    assert_eq!(reused(&connector, &b).await, None);
    closed(&mut server).await;
    assert!(discards.try_recv().is_err(), "nothing was discarded");
}

#[tokio::test]
async fn the_most_recently_released_connection_is_reused_first() {
    let (connector, _discards) = connector(16);
    let a = Backend::start().await;
    let mut released = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..3 {
        let (stream, server) = a.connect(&connector).await;
        released.push(local_addr(&stream));
        servers.push(server);
        connector.release_stream(stream, a.key(), None);
    }
    for addr in released.iter().rev() {
        assert_eq!(reused(&connector, &a).await, Some(*addr));
    }
    assert_eq!(reused(&connector, &a).await, None);
}

#[tokio::test]
async fn a_connection_idle_past_its_timeout_is_not_reused() {
    let (connector, mut discards) = connector(16);
    let a = Backend::start().await;
    let (long, _long_server) = a.connect(&connector).await;
    let long_addr = local_addr(&long);
    connector.release_stream(long, a.key(), Some(Duration::from_secs(60)));
    // released last, so taken first: it has expired, the one under it has not
    let (short, mut short_server) = a.connect(&connector).await;
    let timeout = Duration::from_millis(30);
    connector.release_stream(short, a.key(), Some(timeout));

    tokio::time::sleep(timeout * 3).await;
    assert_eq!(reused(&connector, &a).await, Some(long_addr));
    closed(&mut short_server).await;
    assert!(discard(&mut discards).await >= timeout);
    assert!(discards.try_recv().is_err(), "one connection discarded");
}

/// Puts three connections to `a` in the pool, oldest first: a good one, one the backend then
/// writes on, one the backend then closes. The good one's address and server end, and the
/// server end of the one written on.
async fn good_wrote_on_closed(
    connector: &TransportConnector,
    a: &Backend,
) -> (SocketAddr, TcpStream, TcpStream) {
    let (good, good_server) = a.connect(connector).await;
    let good_addr = local_addr(&good);
    connector.release_stream(good, a.key(), None);
    let (wrote_on, mut wrote_on_server) = a.connect(connector).await;
    connector.release_stream(wrote_on, a.key(), None);
    let (closed_by_backend, closed_server) = a.connect(connector).await;
    connector.release_stream(closed_by_backend, a.key(), None);

    drop(closed_server);
    wrote_on_server.write_all(b"x").await.expect("write");
    (good_addr, good_server, wrote_on_server)
}

#[tokio::test]
async fn a_connection_the_backend_closed_or_wrote_on_is_not_reused() {
    let (connector, mut discards) = connector(16);
    let a = Backend::start().await;
    let (good_addr, _good_server, mut wrote_on_server) = good_wrote_on_closed(&connector, &a).await;
    let_the_reactor_see_it().await;

    assert_eq!(connector.unexpected_data_connection_count(), 0);
    assert_eq!(reused(&connector, &a).await, Some(good_addr));
    assert_eq!(connector.unexpected_data_connection_count(), 1);
    closed(&mut wrote_on_server).await;
    discard(&mut discards).await;
    discard(&mut discards).await;
    assert!(discards.try_recv().is_err(), "two connections discarded");
}

#[tokio::test]
async fn a_full_pool_closes_the_connection_idle_the_longest_over_all_keys() {
    let (connector, mut discards) = connector(3);
    let (a, b, c) = (
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    );
    // oldest first: a1, b1, b2; then c1 and c2 each make room
    let (a1, mut a1_server) = a.connect(&connector).await;
    let (b1, mut b1_server) = b.connect(&connector).await;
    let (b2, _b2_server) = b.connect(&connector).await;
    let (c1, _c1_server) = c.connect(&connector).await;
    let (c2, _c2_server) = c.connect(&connector).await;
    let (b2_addr, c1_addr, c2_addr) = (local_addr(&b2), local_addr(&c1), local_addr(&c2));
    for (stream, key) in [(a1, a.key()), (b1, b.key()), (b2, b.key())] {
        connector.release_stream(stream, key, None);
        // distinct idle-since instants
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    // a1 goes though b's key holds more connections and c's is the one being released
    connector.release_stream(c1, c.key(), None);
    closed(&mut a1_server).await;
    discard(&mut discards).await;
    connector.release_stream(c2, c.key(), None);
    closed(&mut b1_server).await;
    discard(&mut discards).await;
    assert!(discards.try_recv().is_err(), "two connections evicted");

    assert_eq!(reused(&connector, &a).await, None);
    assert_eq!(reused(&connector, &b).await, Some(b2_addr));
    assert_eq!(reused(&connector, &b).await, None);
    assert_eq!(reused(&connector, &c).await, Some(c2_addr));
    assert_eq!(reused(&connector, &c).await, Some(c1_addr));
}

#[tokio::test]
async fn the_sweeper_closes_expired_connections() {
    let (connector, mut discards) = connector(16);
    let a = Backend::start().await;
    let (kept, _kept_server) = a.connect(&connector).await;
    let kept_addr = local_addr(&kept);
    connector.release_stream(kept, a.key(), None);
    let (expiring, mut expiring_server) = a.connect(&connector).await;
    let timeout = Duration::from_millis(50);
    connector.release_stream(expiring, a.key(), Some(timeout));

    // nothing takes from the pool: the sweeper closes it
    closed(&mut expiring_server).await;
    assert!(discard(&mut discards).await >= timeout);
    assert_eq!(reused(&connector, &a).await, Some(kept_addr));
}

#[tokio::test]
async fn the_sweeper_closes_connections_the_backend_closed_or_wrote_on() {
    let (connector, mut discards) = connector(16);
    let a = Backend::start().await;
    let (good_addr, _good_server, mut wrote_on_server) = good_wrote_on_closed(&connector, &a).await;

    // nothing takes from the pool: the sweeper drops both
    discard(&mut discards).await;
    discard(&mut discards).await;
    closed(&mut wrote_on_server).await;
    assert_eq!(connector.unexpected_data_connection_count(), 1);
    assert_eq!(reused(&connector, &a).await, Some(good_addr));
    assert_eq!(reused(&connector, &a).await, None);
}
