//! The HTTP/1.1 fast path: plain keep-alive requests are proxied by this loop; every other
//! request goes to pingora's proxy with the bytes already read. HTTP/2 connections go to
//! `proxy::h2`, whose plain streams take the same path as plain HTTP/1.1 requests here
//! ([`FastH1::forward`], with the stream as the [`Conn`]'s client).
//!
//! Why: pingora's general request path spends three to four times nginx's user CPU per proxied
//! request (boxed futures, two header maps per message, tasks and channels between the two
//! halves; benches/README.md), and the router on it reached 0.76× nginx's requests per second. For the common request, a GET or a small POST on a keep-alive
//! connection, this loop parses the head once in place (httparse), writes the upstream head
//! straight from the client's bytes, and relays the response with as few writes as possible.
//!
//! What is taken is decided per request before anything is consumed (`request::parse`):
//! HTTP/1.1 in origin form, one plain Host, no body or a Content-Length one, no
//! Transfer-Encoding, Upgrade or Expect, Connection naming only keep-alive or close, on a route
//! to HTTP/1 backends. Anything else hands the connection, with what was read of it, to pingora
//! for the rest of its life. The behaviour is the router's either way: the same plan
//! (`proxy::plan`), attempts (`backend::Attempts`), framing rule (`proxy::framing`), answers
//! (`proxy::responses`), headers and metrics.
//!
//! - [`client`]: the client connection, request heads and their deadlines, the router's own
//!   answers;
//! - [`upstream`]: the backend connection, the request sent, the response head read;
//! - [`relay`]: the response body passed on, and its typed errors.

mod client;
mod relay;
pub mod request;
pub mod response;
mod upstream;

pub(super) use client::{answer_h2, origin, Client};
pub(super) use relay::read_more;
pub use relay::{RelayError, Side};

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::listeners::L4BufferSettings;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::{Stream as L4Stream, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use tokio::time::timeout;

use super::headers::Origin;
use super::plan::{plan, Plan};
use super::{ClientTimeouts, Proxy};
use crate::access_log::{Answered, Request};

/// The longest request or response head (pingora's limit too, vendored): a longer request gets
/// 431, a longer response 502.
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// What a read asks room for while a head (or a small body) is awaited: a busy kept-alive
/// connection holds this much per direction.
const HEAD_READ: usize = 4 * 1024;
/// What a read of a response body asks room for: a connection that has passed a large body on
/// keeps this much.
pub(super) const BODY_READ: usize = 16 * 1024;
/// An idle client connection gives its buffers back after this long: long enough that a busy
/// kept-alive connection keeps them from one request to the next, short enough that a flood of
/// connections that each make a request and then idle (browsers, mobile clients) does not hold
/// the buffers of all of them at once (benches/idle.sh).
pub const IDLE_RELEASE: Duration = Duration::from_millis(100);
/// The least room a read gets: a buffer grows only when less than this is left in it.
const MIN_ROOM: usize = 1024;

/// The HTTP app of the client listeners: the fast path in front of pingora's proxy.
pub struct FastH1 {
    pub(super) proxy: Arc<HttpProxy<Proxy>>,
    pub(super) router: Proxy,
    /// Backend connections of the fast path, HTTP/1 and HTTP/2 clients alike (pingora's proxy
    /// keeps its own).
    connector: TransportConnector,
    /// pingora's proxy accepts HTTP/2 with prior knowledge: connections starting with its
    /// preface are HTTP/2 ones.
    h2c: bool,
    /// `false`: every connection is handed to pingora's proxy as it comes.
    pub(super) enabled: bool,
    pub(super) timeouts: ClientTimeouts,
}

impl FastH1 {
    /// `router` is the same state `proxy` was built with, `timeouts` the ones set on `proxy`'s
    /// server options. With `enabled` false, every request goes to pingora's proxy (still
    /// through [`Self::hand_over`], so that both engines keep connections alike).
    pub fn new(
        proxy: HttpProxy<Proxy>,
        router: Proxy,
        conf: &ServerConf,
        enabled: bool,
        timeouts: ClientTimeouts,
    ) -> FastH1 {
        let h2c = proxy.server_options.as_ref().is_some_and(|o| o.h2c);
        FastH1 {
            proxy: Arc::new(proxy),
            router,
            connector: TransportConnector::new(Some(ConnectorOptions::from_server_conf(conf))),
            h2c,
            enabled,
            timeouts,
        }
    }
}

/// How the fast path is done with a connection.
enum End {
    Close,
    HandOver,
    /// Idle since the last request for [`IDLE_RELEASE`]: wait for the next one parked
    /// ([`FastH1::park`]), for at most this long.
    Park(Duration),
    /// Answer with this status (the router's own), then close.
    Refuse(u16),
}

/// A client connection and the buffers its requests reuse (or one HTTP/2 stream and the buffers
/// of its one request).
pub(super) struct Conn {
    pub(super) client: client::Client,
    /// Read from the client, not used yet (the start of the next request, at most).
    pub(super) buf: BytesMut,
    /// The head (and body, when it came with it) of the request sent upstream.
    pub(super) upstream: Vec<u8>,
    /// What is written to an HTTP/1 client next (an HTTP/2 stream's response head is
    /// `H2Stream::head`).
    pub(super) out: Vec<u8>,
    /// Read from the backend, not passed on yet.
    pub(super) from_backend: BytesMut,
    pub(super) origin: Origin,
    pub(super) shutdown: ShutdownWatch,
    /// When the request head being read started: the connection's start for the first
    /// request, else the head's first byte; None between requests.
    pub(super) head_started: Option<Instant>,
}

#[async_trait]
impl ServerApp for FastH1 {
    async fn process_new(
        self: &Arc<Self>,
        mut client: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        match self.takes(&mut client).await {
            Some(true) => {}
            // HTTP/2 (a custom ALPN protocol stays pingora's). Boxed: the HTTP/2 connection's
            // state would otherwise size every HTTP/1 connection's task too.
            Some(false)
                if self.enabled
                    && !matches!(client.selected_alpn_proto(), Some(ALPN::Custom(_))) =>
            {
                Box::pin(self.serve_h2(client, shutdown)).await;
                return None;
            }
            Some(false) => return ServerApp::process_new(&self.proxy, client, shutdown).await,
            None => return None,
        }
        if !self.enabled {
            let started = Some(Instant::now());
            Box::pin(self.hand_over(client, BytesMut::new(), started, shutdown)).await;
            return None;
        }
        // What this future holds while the connection idles is what an idle client costs: the
        // connection, and the wait. The state of requests under way (`serve`) and pingora's
        // (`hand_over`) are boxed, so that they are freed meanwhile.
        let mut conn = Conn::new(client, shutdown.clone());
        loop {
            match Box::pin(self.serve(&mut conn)).await {
                End::Park(left) if self.park(&mut conn, left).await => {}
                End::HandOver => {
                    if let Some((client, read, started)) = conn.into_parts() {
                        self.router.metrics.h1_handed_over.inc();
                        Box::pin(self.hand_over(client, read, started, shutdown)).await;
                    }
                    return None;
                }
                _ => return None,
            }
        }
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

impl FastH1 {
    /// Whether the fast path takes this connection as HTTP/1: not HTTP/2 (by ALPN or, with h2c,
    /// by its preface). None: the client sent nothing within the header timeout.
    async fn takes(&self, client: &mut Stream) -> Option<bool> {
        match client.selected_alpn_proto() {
            Some(ALPN::H1) | None => {}
            Some(_) => return Some(false),
        }
        if self.h2c && client.get_ssl_digest().is_none() {
            const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
            let mut start = [0u8; PREFACE.len()];
            // Peeking waits for the client's first bytes, as pingora's own h2c check does.
            let peeked = timeout(self.timeouts.header, client.try_peek(&mut start)).await;
            return match peeked {
                Err(_) => None,
                Ok(peeked) => Some(matches!(peeked, Ok(true)) && start != PREFACE),
            };
        }
        Some(true)
    }

    /// Serves requests until the connection closes or one is for pingora.
    async fn serve(&self, conn: &mut Conn) -> End {
        loop {
            let head = match self.read_head(conn).await {
                Ok(head) => head,
                Err(End::Refuse(status)) => {
                    let start = Instant::now();
                    let sent = self.fail(conn, status).await.0;
                    let logged = self.router.logged(Request::default);
                    let origin = conn.origin;
                    let done = || Answered {
                        origin,
                        proto: "HTTP/1.1",
                        upstream: None,
                    };
                    self.router.answered(sent, start, logged.as_ref(), done);
                    return End::Close;
                }
                Err(end) => return end,
            };
            let start = Instant::now();
            let _in_flight = self.router.in_flight.enter();
            let logged = self.router.logged(|| head.logged(&conn.buf));
            let planned = plan(
                &self.router.table.load(),
                &conn.buf[head.host.clone()],
                &conn.buf[head.path.clone()],
            );
            if planned.hands_over(head.content_length > 0) {
                return End::HandOver;
            }
            let mut chosen = None;
            let (status, keep) = match planned {
                Plan::Answer(status) => (status, self.answer(conn, &head, status).await),
                Plan::Forward { route, service } => {
                    self.forward(conn, &head, &route, &service, &mut chosen)
                        .await
                }
            };
            let origin = conn.origin;
            let done = || Answered {
                origin,
                proto: "HTTP/1.1",
                upstream: chosen,
            };
            self.router.answered(status, start, logged.as_ref(), done);
            if !keep {
                return End::Close;
            }
        }
    }

    /// Hands the connection, with what was `read` of it, to pingora's proxy for good; the head
    /// under way (if any) `started` then.
    async fn hand_over(
        &self,
        client: Stream,
        read: BytesMut,
        started: Option<Instant>,
        shutdown: &ShutdownWatch,
    ) {
        let mut session = ServerSession::new_http1(with_write_buffer(client));
        let keepalive = self.timeouts.keepalive.as_secs().max(1);
        session.set_keepalive(if *shutdown.borrow() {
            None
        } else {
            Some(keepalive)
        });
        // The head under way keeps its deadline; the ones after start theirs at their first byte.
        session.set_header_timeout(Some(self.timeouts.header), started);
        // Requests the client pipelined behind this one are answered in order, as on the fast
        // path (pingora's default closes the connection after the first instead).
        session.set_pipelining_enabled(true);
        if !read.is_empty() {
            session.set_pipelined_prefix(read);
        }
        let mut result = self.proxy.process_new_http(session, shutdown).await;
        while let Some((client, settings)) = result.map(|r| r.consume()) {
            let mut session = ServerSession::new_http1(client);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            result = self.proxy.process_new_http(session, shutdown).await;
        }
    }
}

/// A plain client connection comes without pingora's write buffer (`server::Listeners`: the fast
/// path writes each message whole from its own buffer). pingora's HTTP/1 session writes a
/// chunked body piece by piece, so a connection handed to it gets the buffer back (vendor patch
/// 0009). TLS connections keep theirs (under rustls) all along.
fn with_write_buffer(client: Stream) -> Stream {
    if !client.as_any().is::<L4Stream>() {
        return client;
    }
    match client.into_any().downcast::<L4Stream>() {
        Ok(mut l4) => {
            l4.set_buffer(L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE));
            l4
        }
        Err(_) => unreachable!("the stream was checked to be an L4 one"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A connected pair: the router's side as the plain listener makes it (no buffers), and the
    /// client's.
    async fn unbuffered_pair() -> (Stream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        let mut l4 = L4Stream::from(accepted);
        l4.set_buffer(L4BufferSettings::unbuffered());
        (Box::new(l4), client)
    }

    /// Whether a byte written (not flushed) to `router_side` reaches `client` soon.
    async fn unflushed_write_arrives(router_side: &mut Stream, client: &mut TcpStream) -> bool {
        router_side.write_all(b"a").await.expect("write");
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(200), client.read(&mut byte)).await;
        matches!(read, Ok(Ok(1)))
    }

    #[tokio::test]
    async fn a_connection_handed_to_pingora_gets_its_write_buffer_back() {
        // As the fast path keeps it: each write goes out at once.
        let (mut router_side, mut client) = unbuffered_pair().await;
        assert!(unflushed_write_arrives(&mut router_side, &mut client).await);

        // As pingora's HTTP/1 session gets it: writes wait in the buffer for a flush.
        let (router_side, mut client) = unbuffered_pair().await;
        let mut router_side = with_write_buffer(router_side);
        assert!(!unflushed_write_arrives(&mut router_side, &mut client).await);
        router_side.flush().await.expect("flush");
        let mut byte = [0u8; 1];
        client.read_exact(&mut byte).await.expect("read");
        assert_eq!(&byte, b"a");
    }
}
