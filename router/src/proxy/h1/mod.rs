//! The HTTP/1.1 fast path: plain keep-alive requests are proxied by this loop; every other
//! request, and every HTTP/2 connection, goes to pingora's proxy with the bytes already read.
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
//! for the rest of its life. The behaviour is the router's
//! either way: same routing, headers, errors, retries, metrics.

pub mod request;
pub mod response;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::{HttpPeer, Peer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::error::Elapsed;
use tokio::time::timeout;

use super::headers::Origin;
use super::plan::{plan, Engine, Facts, Plan};
use super::{responses, sticky, ClientTimeouts, Proxy};
use crate::backend::{Attempts, Backend, InFlight, Service};
use crate::table::RouteEntry;
use response::{Chunks, Framing};

/// The longest request or response head (pingora's limit too, vendored): a longer request gets
/// 431, a longer response 502.
const MAX_HEAD: usize = 64 * 1024;
/// What a read asks room for while a head (or a small body) is awaited: a busy kept-alive
/// connection holds this much per direction.
const HEAD_READ: usize = 4 * 1024;
/// What a read of a response body asks room for: a connection that has passed a large body on
/// keeps this much.
const BODY_READ: usize = 16 * 1024;
/// An idle client connection gives its buffers back after this long.
const IDLE_RELEASE: Duration = Duration::from_secs(1);
/// The least room a read gets: a buffer grows only when less than this is left in it.
const MIN_ROOM: usize = 1024;

/// The HTTP app of the client listeners: the fast path in front of pingora's proxy.
pub struct FastH1 {
    proxy: Arc<HttpProxy<Proxy>>,
    router: Proxy,
    /// Backend connections of the fast path (pingora's proxy keeps its own).
    connector: TransportConnector,
    /// pingora's proxy accepts HTTP/2 with prior knowledge: connections starting with its
    /// preface are its.
    h2c: bool,
    /// `false`: every connection is handed to pingora's proxy as it comes.
    enabled: bool,
    timeouts: ClientTimeouts,
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
    /// Answer with this status (the router's own), then close.
    Refuse(u16),
}

/// A client connection and the buffers its requests reuse.
struct Conn {
    client: Stream,
    /// Read from the client, not used yet (the start of the next request, at most).
    buf: BytesMut,
    /// The head (and body, when it came with it) of the request sent upstream.
    upstream: Vec<u8>,
    /// What is written to the client next.
    out: Vec<u8>,
    /// Read from the backend, not passed on yet.
    from_backend: BytesMut,
    origin: Origin,
    shutdown: ShutdownWatch,
    /// When the request head being read started: the connection's start for the first
    /// request, else the head's first byte; None between requests.
    head_started: Option<Instant>,
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
            Some(false) => return ServerApp::process_new(&self.proxy, client, shutdown).await,
            None => return None,
        }
        if !self.enabled {
            let started = Some(Instant::now());
            self.hand_over(client, BytesMut::new(), started, shutdown)
                .await;
            return None;
        }
        let mut conn = Conn::new(client, shutdown.clone());
        if let End::HandOver = self.serve(&mut conn).await {
            self.router.metrics.h1_handed_over.inc();
            let (client, read, started) = conn.into_parts();
            self.hand_over(client, read, started, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

impl Conn {
    fn new(client: Stream, shutdown: ShutdownWatch) -> Conn {
        let socket = client.get_socket_digest();
        let origin = Origin {
            client_ip: socket
                .as_ref()
                .and_then(|d| d.peer_addr())
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            proto: if client.get_ssl_digest().is_some() {
                "https"
            } else {
                "http"
            },
            port: socket
                .as_ref()
                .and_then(|d| d.local_addr())
                .and_then(|a| a.as_inet())
                .map(|a| a.port()),
        };
        let mut conn = Conn {
            client,
            buf: BytesMut::new(),
            upstream: Vec::new(),
            out: Vec::new(),
            from_backend: BytesMut::new(),
            origin,
            shutdown,
            head_started: Some(Instant::now()),
        };
        conn.take_buffers();
        conn
    }

    /// The buffers a connection starts with (and takes again after [`Self::release_buffers`]).
    fn take_buffers(&mut self) {
        self.buf.reserve(HEAD_READ);
        self.from_backend.reserve(HEAD_READ);
        self.upstream.reserve(1024);
        self.out.reserve(1024);
    }

    /// The client, what was read of it and when its current head started; the rest of the
    /// connection's buffers are freed here, not kept for the connection's life.
    fn into_parts(self) -> (Stream, BytesMut, Option<Instant>) {
        (self.client, self.buf, self.head_started)
    }

    /// Gives the buffers back while the connection is idle.
    fn release_buffers(&mut self) {
        self.buf = BytesMut::new();
        self.from_backend = BytesMut::new();
        self.upstream = Vec::new();
        self.out = Vec::new();
    }

    /// Writes `out` to the client.
    async fn send_out(&mut self) -> std::io::Result<()> {
        self.client.write_all(&self.out).await?;
        self.client.flush().await
    }
}

/// A backend connection for one request, counted in flight on its instance while it lives.
struct Upstream {
    stream: Stream,
    reused: bool,
    peer: HttpPeer,
    /// Counts the request in flight on its instance (and names the instance).
    in_flight: InFlight,
}

/// Why a request could not be proxied.
enum Failed {
    /// A reused backend connection answered nothing: the backend had closed it.
    Stale,
    /// The client went away or broke off.
    Client,
    /// Answered with this status (and the connection closed).
    Status(u16),
}

impl FastH1 {
    /// Whether the fast path takes this connection at all: not HTTP/2 (by ALPN or, with h2c,
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
                    self.router.metrics.record_request(sent, start);
                    return End::Close;
                }
                Err(end) => return end,
            };
            let start = Instant::now();
            let _in_flight = self.router.in_flight.enter();
            let facts = Facts {
                host: &conn.buf[head.host.clone()],
                path: &conn.buf[head.path.clone()],
                body: head.content_length > 0,
            };
            let (status, keep) = match plan(&self.router.table.load(), &facts, Engine::FastPath) {
                Plan::HandOver => return End::HandOver,
                Plan::Answer(status) => (status, self.answer(conn, &head, status).await),
                Plan::Forward { route, service } => {
                    self.forward(conn, &head, &route, &service).await
                }
            };
            self.router.metrics.record_request(status, start);
            if !keep {
                return End::Close;
            }
        }
    }

    /// Waits for a whole request head at the start of `conn.buf`: within the header timeout
    /// from its start (408 after), at most [`MAX_HEAD`] long (431 beyond).
    async fn read_head(&self, conn: &mut Conn) -> Result<request::Head, End> {
        loop {
            if !conn.buf.is_empty() {
                match request::parse(&conn.buf) {
                    request::Parse::Head(head) if head.len > MAX_HEAD => {
                        return Err(End::Refuse(431))
                    }
                    request::Parse::Head(head) => {
                        conn.head_started = None;
                        return Ok(head);
                    }
                    request::Parse::HandOver => return Err(End::HandOver),
                    request::Parse::Partial if conn.buf.len() >= MAX_HEAD => {
                        return Err(End::Refuse(431))
                    }
                    request::Parse::Partial => {}
                }
            }
            let head_time_left = conn
                .head_started
                .map(|started| self.timeouts.header.saturating_sub(started.elapsed()));
            let read = match head_time_left {
                // Between requests: as long as keep-alive allows.
                None => self.wait_for_request(conn, self.timeouts.keepalive).await?,
                // A connection's first request: its first byte within the header timeout.
                Some(left) if conn.buf.is_empty() => self.wait_for_request(conn, left).await?,
                Some(left) => {
                    conn.buf.reserve(MIN_ROOM);
                    match timeout(left, conn.client.read_buf(&mut conn.buf)).await {
                        Err(_) => return Err(End::Refuse(408)),
                        Ok(read) => Ok(read),
                    }
                }
            };
            match read {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Err(End::Close),
            }
            if conn.head_started.is_none() {
                conn.head_started = Some(Instant::now());
            }
        }
    }

    /// Between requests: reads the start of the next one into the empty `conn.buf`, waiting
    /// at most `limit`. A shutdown closes the idle connection. A connection idle for longer
    /// than [`IDLE_RELEASE`] gives its buffers back meanwhile (an idle client then costs about
    /// 10 KiB instead of 16, benches/idle.sh) and takes new ones when its next request comes.
    async fn wait_for_request(
        &self,
        conn: &mut Conn,
        limit: Duration,
    ) -> Result<Result<std::io::Result<usize>, Elapsed>, End> {
        if *conn.shutdown.borrow() {
            return Err(End::Close);
        }
        conn.buf.reserve(MIN_ROOM);
        tokio::select! {
            read = timeout(IDLE_RELEASE.min(limit), conn.client.read_buf(&mut conn.buf)) => {
                match read {
                    Ok(read) => return Ok(Ok(read)),
                    Err(elapsed) if limit <= IDLE_RELEASE => return Ok(Err(elapsed)),
                    Err(_) => {}
                }
            }
            _ = conn.shutdown.changed() => return Err(End::Close),
        }
        conn.release_buffers();
        let mut first = [0u8; 64];
        let read = tokio::select! {
            read = timeout(limit - IDLE_RELEASE, conn.client.read(&mut first)) => read,
            _ = conn.shutdown.changed() => return Err(End::Close),
        };
        if let Ok(Ok(n)) = read {
            conn.take_buffers();
            conn.buf.extend_from_slice(&first[..n]);
        }
        Ok(read)
    }

    /// Answers with one of the router's own statuses; whether the connection stays open.
    async fn answer(&self, conn: &mut Conn, head: &request::Head, status: u16) -> bool {
        conn.buf.advance(head.len);
        let keep = !head.close && !*conn.shutdown.borrow();
        let date = pingora::protocols::http::date::get_cached_date();
        responses::write_http1(&mut conn.out, status, keep, date.as_bytes());
        conn.send_out().await.is_ok() && keep
    }

    /// Proxies one request (its head at the start of `conn.buf`) to an instance of `service`:
    /// the status the client got (0: none) and whether its connection stays open.
    async fn forward(
        &self,
        conn: &mut Conn,
        head: &request::Head,
        route: &RouteEntry,
        service: &Arc<Service>,
    ) -> (u16, bool) {
        conn.upstream.clear();
        let rewrite = request::Rewrite {
            close_backend: route.disable_keep_alives,
            sticky: route.sticky,
        };
        let sticky_cookie =
            request::write_upstream(&conn.buf, head, &conn.origin, rewrite, &mut conn.upstream);
        // Sticky routes: the instance the client's cookie pins (if it still opens).
        let pinned = sticky_cookie
            .and_then(|sealed| std::str::from_utf8(sealed).ok())
            .and_then(|sealed| self.router.sticky.open(sealed));
        let with_head = (conn.buf.len() - head.len).min(head.content_length as usize);
        conn.upstream
            .extend_from_slice(&conn.buf[head.len..head.len + with_head]);
        conn.buf.advance(head.len + with_head);
        let body_left = head.content_length - with_head as u64;
        let keep_client = !head.close && !*conn.shutdown.borrow();

        let mut attempts = Attempts::new(service.clone(), route.leader, pinned);
        let Some(mut upstream) = self.connect(&mut attempts).await else {
            return self.fail(conn, 503).await;
        };
        let mut result = self
            .exchange(conn, &mut upstream.stream, body_left, head, keep_client)
            .await;
        if matches!(result, Err(Failed::Stale))
            && upstream.reused
            && head.idempotent
            && body_left == 0
        {
            // The backend had closed the pooled connection: an idempotent request goes once
            // more (all of it is still in `conn.upstream`), on a new connection to the same
            // instance or, when that fails to connect, to the next ones.
            upstream = match self.new_stream(&upstream.peer).await {
                Ok(fresh) => Upstream {
                    stream: fresh,
                    reused: false,
                    ..upstream
                },
                Err(e) => {
                    self.connect_failed(&attempts, &upstream.in_flight, &e);
                    drop(upstream);
                    let next = self.connect(&mut attempts).await;
                    let Some(next) = next else {
                        return self.fail(conn, 503).await;
                    };
                    next
                }
            };
            result = self
                .exchange(conn, &mut upstream.stream, body_left, head, keep_client)
                .await;
        }
        let resp = match result {
            Ok(resp) => resp,
            Err(Failed::Status(status)) => {
                if status == 504 {
                    // Avoided for a while, as an instance that refuses connections is.
                    upstream.in_flight.backend().failed();
                }
                return self.fail(conn, status).await;
            }
            Err(Failed::Stale) => return self.fail(conn, 502).await,
            Err(Failed::Client) => return (0, false),
        };
        // The instance answered: healthy again, whatever failed before.
        upstream.in_flight.backend().succeeded();
        let chosen = &upstream.in_flight.backend().id;
        if route.sticky && attempts.pinned() != Some(chosen.as_str()) {
            // The client is pinned to the instance that answered, from now on.
            if let Some(sealed) = self.router.sticky.seal(chosen) {
                let cookie = sticky::set_cookie(&sealed, conn.origin.proto == "https");
                response::add_header(&mut conn.out, b"Set-Cookie", cookie.as_bytes());
            }
        }
        match self.relay(conn, &mut upstream.stream, resp.framing).await {
            Ok(clean) => {
                if clean && resp.reusable && !route.disable_keep_alives {
                    self.connector.release_stream(
                        upstream.stream,
                        upstream.peer.reuse_hash(),
                        Some(self.router.timeouts.idle),
                    );
                }
                (resp.status, keep_client)
            }
            // Cut off mid-body: the client's connection cannot carry another response.
            Err(()) => (resp.status, false),
        }
    }

    /// A connection to the next instance `attempts` gives: pooled, or new (a failed connect
    /// goes on to the next instance, by the rule every engine follows). None: no instance
    /// could be reached.
    async fn connect(&self, attempts: &mut Attempts) -> Option<Upstream> {
        loop {
            let backend = attempts.next()?;
            let in_flight = InFlight::new(backend.clone());
            let peer = self.peer(&backend);
            let connected = match self.connector.reused_stream(&peer).await {
                Some(pooled) => Ok((pooled, true)),
                None => self.new_stream(&peer).await.map(|fresh| (fresh, false)),
            };
            match connected {
                Ok((stream, reused)) => {
                    return Some(Upstream {
                        stream,
                        reused,
                        peer,
                        in_flight,
                    });
                }
                Err(e) => self.connect_failed(attempts, &in_flight, &e),
            }
        }
    }

    /// Counts a failed connect and ejects its instance for a while.
    fn connect_failed(&self, attempts: &Attempts, instance: &InFlight, e: &pingora::Error) {
        tracing::debug!(backend = %instance.backend().addr, error = %e, "connect failed");
        self.router.metrics.upstream_connect_errors.inc();
        attempts.failed(instance.backend());
    }

    /// A new connection to `peer`. Boxed: connecting is a large future (TLS states included)
    /// that would otherwise be part of, and size, every client connection's task for its whole
    /// life; a new backend connection is rare next to the pooled ones.
    async fn new_stream(&self, peer: &HttpPeer) -> pingora::Result<Stream> {
        Box::pin(self.connector.new_stream(peer)).await
    }

    /// The peer pingora's connector connects to (and pools by).
    fn peer(&self, backend: &Backend) -> HttpPeer {
        let mut peer = HttpPeer::new(backend.addr, false, String::new());
        self.router.timeouts.apply(&mut peer.options);
        peer
    }

    /// Sends the request upstream (the rest of its body streamed from the client) and reads the
    /// response head, passing interim (1xx) responses on; the client's head is in `conn.out`.
    async fn exchange(
        &self,
        conn: &mut Conn,
        upstream: &mut Stream,
        mut body_left: u64,
        head: &request::Head,
        keep_client: bool,
    ) -> Result<response::Head, Failed> {
        let sent = upstream.write_all(&conn.upstream).await;
        if sent.is_err() {
            return Err(Failed::Stale);
        }
        while body_left > 0 {
            if conn.buf.is_empty() {
                conn.buf.reserve(MIN_ROOM);
                let wait = self.timeouts.keepalive;
                match timeout(wait, conn.client.read_buf(&mut conn.buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return Err(Failed::Client),
                }
            }
            let take = conn.buf.len().min(body_left as usize);
            if upstream.write_all(&conn.buf[..take]).await.is_err() {
                return Err(Failed::Status(502));
            }
            conn.buf.advance(take);
            body_left -= take as u64;
        }
        if upstream.flush().await.is_err() {
            return Err(Failed::Status(502));
        }

        conn.from_backend.clear();
        let date = pingora::protocols::http::date::get_cached_date();
        let mut received = false;
        loop {
            if !conn.from_backend.is_empty() {
                received = true;
                match response::parse(
                    &conn.from_backend,
                    head.is_head,
                    keep_client,
                    date.as_bytes(),
                    &mut conn.out,
                ) {
                    response::Parse::Final(resp) if resp.len > MAX_HEAD => {
                        tracing::info!("response head from a backend too long");
                        return Err(Failed::Status(502));
                    }
                    response::Parse::Final(resp) => {
                        conn.from_backend.advance(resp.len);
                        return Ok(resp);
                    }
                    response::Parse::Interim(len) => {
                        conn.from_backend.advance(len);
                        conn.send_out().await.map_err(|_| Failed::Client)?;
                        continue;
                    }
                    response::Parse::Bad(why) => {
                        tracing::info!(why, "bad response from a backend");
                        return Err(Failed::Status(502));
                    }
                    response::Parse::Partial if conn.from_backend.len() >= MAX_HEAD => {
                        tracing::info!("response head from a backend too long");
                        return Err(Failed::Status(502));
                    }
                    response::Parse::Partial => {}
                }
            }
            conn.from_backend.reserve(MIN_ROOM);
            let read = timeout(
                self.router.timeouts.read,
                upstream.read_buf(&mut conn.from_backend),
            );
            // While the backend thinks, a client that hangs up ends the request (as nginx
            // does): its backend connection is closed rather than kept busy for nobody. Bytes
            // the client sends meanwhile are its next request.
            let watch_client = conn.buf.len() < MAX_HEAD;
            if watch_client {
                conn.buf.reserve(MIN_ROOM);
            }
            tokio::select! {
                read = read => match read {
                    Ok(Ok(n)) if n > 0 => {}
                    Ok(_) if !received => return Err(Failed::Stale),
                    Ok(_) => return Err(Failed::Status(502)),
                    Err(_) => return Err(Failed::Status(504)),
                },
                more = conn.client.read_buf(&mut conn.buf), if watch_client => match more {
                    Ok(n) if n > 0 => {}
                    _ => return Err(Failed::Client),
                },
            }
        }
    }

    /// Passes the response body on after the head in `conn.out`. `Ok(true)`: the body ended
    /// exactly where the backend's bytes did, so its connection can be reused.
    async fn relay(
        &self,
        conn: &mut Conn,
        upstream: &mut Stream,
        framing: Framing,
    ) -> Result<bool, ()> {
        let read_timeout = self.router.timeouts.read;
        match framing {
            Framing::Empty => {
                conn.send_out().await.map_err(drop)?;
            }
            Framing::Length(mut left) => loop {
                let take = conn.from_backend.len().min(left as usize);
                conn.out.extend_from_slice(&conn.from_backend[..take]);
                conn.from_backend.advance(take);
                left -= take as u64;
                conn.send_out().await.map_err(drop)?;
                conn.out.clear();
                if left == 0 {
                    break;
                }
                read_more(upstream, &mut conn.from_backend, read_timeout).await?;
            },
            Framing::Chunked => {
                let mut chunks = Chunks::default();
                loop {
                    let n = chunks.advance(&conn.from_backend).map_err(|why| {
                        tracing::info!(why, "bad chunked body from a backend");
                    })?;
                    conn.out.extend_from_slice(&conn.from_backend[..n]);
                    conn.from_backend.advance(n);
                    if chunks.done() || !conn.out.is_empty() {
                        conn.send_out().await.map_err(drop)?;
                        conn.out.clear();
                    }
                    if chunks.done() {
                        break;
                    }
                    read_more(upstream, &mut conn.from_backend, read_timeout).await?;
                }
            }
            Framing::UntilClose => {
                loop {
                    if !conn.from_backend.is_empty() {
                        chunk(&mut conn.out, &conn.from_backend);
                        conn.from_backend.clear();
                    }
                    conn.send_out().await.map_err(drop)?;
                    conn.out.clear();
                    conn.from_backend.reserve(BODY_READ);
                    match timeout(read_timeout, upstream.read_buf(&mut conn.from_backend)).await {
                        Ok(Ok(0)) => break,
                        Ok(Ok(_)) => {}
                        _ => return Err(()),
                    }
                }
                conn.out.extend_from_slice(b"0\r\n\r\n");
                conn.send_out().await.map_err(drop)?;
                return Ok(false);
            }
        }
        Ok(conn.from_backend.is_empty())
    }

    /// Answers with an error status of the router's own and closes: `(status, false)`.
    async fn fail(&self, conn: &mut Conn, status: u16) -> (u16, bool) {
        let date = pingora::protocols::http::date::get_cached_date();
        responses::write_http1(&mut conn.out, status, false, date.as_bytes());
        if conn.send_out().await.is_err() {
            return (0, false);
        }
        (status, false)
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
        let mut session = ServerSession::new_http1(client);
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

/// Reads more of a response body; the end of the connection or a timeout is an error here.
async fn read_more(upstream: &mut Stream, buf: &mut BytesMut, wait: Duration) -> Result<(), ()> {
    buf.reserve(BODY_READ);
    match timeout(wait, upstream.read_buf(buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        _ => Err(()),
    }
}

/// Appends `data` as one chunk of a chunked body.
fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    use std::io::Write;
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}
