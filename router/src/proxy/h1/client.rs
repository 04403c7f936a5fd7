//! The client side of the fast path: its connection and buffers, reading request heads within
//! their deadlines, and the router's own answers.

use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use pingora::protocols::http::v2::server::HttpSession;
use pingora::protocols::{SocketDigest, Stream};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use super::super::h2::H2Stream;
use super::super::headers::Origin;
use super::super::responses;
use super::response::{self, HeadOut};
use super::{request, Conn, End, FastH1, HEAD_READ, IDLE_RELEASE, MAX_HEAD, MIN_ROOM};

/// Who a request came from: an HTTP/1 client connection, or one stream of an HTTP/2 one
/// (`proxy::h2`), whose request head the stream's handler wrote into `Conn::buf` as HTTP/1.1.
pub(in crate::proxy) enum Client {
    H1(Stream),
    /// Boxed: an HTTP/1 connection's state stays small.
    H2(Box<H2Stream>),
}

impl Client {
    /// Reads from the client. An HTTP/2 stream has nothing more to read here (its request body,
    /// if any, was read whole before): this waits until the client resets the stream or its
    /// connection fails, as the end of an HTTP/1 connection would.
    pub(super) async fn read_buf(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            Client::H1(stream) => stream.read_buf(buf).await,
            Client::H2(stream) => gone(&mut stream.session).await,
        }
    }

    /// [`Self::read_buf`] into a slice.
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Client::H1(stream) => stream.read(buf).await,
            Client::H2(stream) => gone(&mut stream.session).await,
        }
    }
}

/// Waits until the client of an HTTP/2 stream resets it (`Ok(0)`) or its connection fails.
async fn gone(session: &mut HttpSession) -> std::io::Result<usize> {
    match session.idle().await {
        Ok(_) => Ok(0),
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}

/// Where a client's request came from and arrived: what the forwarding headers say.
pub(in crate::proxy) fn origin(socket: Option<&SocketDigest>, tls: bool) -> Origin {
    Origin {
        client_ip: socket
            .and_then(|d| d.peer_addr())
            .and_then(|a| a.as_inet())
            .map(|a| a.ip()),
        proto: if tls { "https" } else { "http" },
        port: socket
            .and_then(|d| d.local_addr())
            .and_then(|a| a.as_inet())
            .map(|a| a.port()),
    }
}

impl Conn {
    pub(super) fn new(client: Stream, shutdown: ShutdownWatch) -> Conn {
        let socket = client.get_socket_digest();
        let origin = origin(socket.as_deref(), client.get_ssl_digest().is_some());
        let mut conn = Conn {
            client: Client::H1(client),
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
    pub(super) fn take_buffers(&mut self) {
        self.buf.reserve(HEAD_READ);
        self.from_backend.reserve(HEAD_READ);
        self.upstream.reserve(1024);
        self.out.reserve(1024);
    }

    /// One HTTP/2 stream's request: its head as HTTP/1.1 (and its whole body, if any) in `buf`.
    pub(in crate::proxy) fn for_stream(
        stream: Box<H2Stream>,
        buf: BytesMut,
        origin: Origin,
        shutdown: ShutdownWatch,
    ) -> Conn {
        Conn {
            client: Client::H2(stream),
            upstream: Vec::with_capacity(buf.len() + 256),
            buf,
            // Unused: the response head is written as an HTTP/2 one (`H2Stream::head`).
            out: Vec::new(),
            from_backend: BytesMut::with_capacity(HEAD_READ),
            origin,
            shutdown,
            head_started: None,
        }
    }

    /// The client, what was read of it and when its current head started; the rest of the
    /// connection's buffers are freed here, not kept for the connection's life. None for an
    /// HTTP/2 stream (never handed over this way).
    pub(super) fn into_parts(self) -> Option<(Stream, BytesMut, Option<Instant>)> {
        match self.client {
            Client::H1(client) => Some((client, self.buf, self.head_started)),
            Client::H2(_) => None,
        }
    }

    /// The HTTP/2 stream this request came on, if it did.
    pub(in crate::proxy) fn h2_session(&mut self) -> Option<&mut HttpSession> {
        match &mut self.client {
            Client::H1(_) => None,
            Client::H2(stream) => Some(&mut stream.session),
        }
    }

    /// Adds a header to the response head written for the client and not sent yet.
    pub(super) fn add_response_header(&mut self, name: &[u8], value: &[u8]) {
        match &mut self.client {
            Client::H1(_) => response::add_header(&mut self.out, name, value),
            Client::H2(stream) => stream.head.header(name, value),
        }
    }

    /// Whether a response head is written for the client and not sent yet.
    pub(super) fn head_pending(&self) -> bool {
        match &self.client {
            Client::H1(_) => !self.out.is_empty(),
            Client::H2(stream) => stream.head.pending(),
        }
    }

    /// Drops the response head written for the client and not sent.
    pub(super) fn drop_pending_head(&mut self) {
        self.out.clear();
        if let Client::H2(stream) = &mut self.client {
            stream.head.clear();
        }
    }

    /// Gives the buffers back while the connection is idle.
    pub(super) fn release_buffers(&mut self) {
        self.buf = BytesMut::new();
        self.from_backend = BytesMut::new();
        self.upstream = Vec::new();
        self.out = Vec::new();
    }

    /// Writes `out` to the client. On an HTTP/2 stream only interim (1xx) heads get here, and
    /// they are not passed on (pingora's HTTP/2 session drops them too): its final response goes
    /// through the stream's own relay.
    pub(super) async fn send_out(&mut self) -> std::io::Result<()> {
        match &mut self.client {
            Client::H1(client) => {
                client.write_all(&self.out).await?;
                client.flush().await
            }
            Client::H2(_) => Ok(()),
        }
    }
}

impl FastH1 {
    /// Waits for a whole request head at the start of `conn.buf`: within the header timeout
    /// from its start (408 after), at most [`MAX_HEAD`] long (431 beyond).
    pub(super) async fn read_head(&self, conn: &mut Conn) -> Result<request::Head, End> {
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
            match head_time_left {
                // Between requests: as long as keep-alive allows.
                None => self.wait_for_request(conn, self.timeouts.keepalive).await?,
                // A connection's first request: its first byte within the header timeout.
                Some(left) if conn.buf.is_empty() => self.wait_for_request(conn, left).await?,
                Some(left) => {
                    conn.buf.reserve(MIN_ROOM);
                    match timeout(left, conn.client.read_buf(&mut conn.buf)).await {
                        Err(_) => return Err(End::Refuse(408)),
                        Ok(Ok(n)) if n > 0 => {}
                        Ok(_) => return Err(End::Close),
                    }
                }
            }
            if conn.head_started.is_none() {
                conn.head_started = Some(Instant::now());
            }
        }
    }

    /// Between requests: reads the start of the next one into the empty `conn.buf`, waiting
    /// at most `limit`. The client closing, the time running out or a shutdown close the idle
    /// connection ([`End::Close`]). A connection still idle after [`IDLE_RELEASE`] is parked
    /// ([`End::Park`], with the time it may still wait): its request state and buffers are
    /// freed meanwhile ([`Self::park`]).
    pub(super) async fn wait_for_request(
        &self,
        conn: &mut Conn,
        limit: Duration,
    ) -> Result<(), End> {
        if *conn.shutdown.borrow() {
            return Err(End::Close);
        }
        conn.buf.reserve(MIN_ROOM);
        tokio::select! {
            read = timeout(IDLE_RELEASE.min(limit), conn.client.read_buf(&mut conn.buf)) => {
                match read {
                    Ok(Ok(n)) if n > 0 => Ok(()),
                    Err(_) if limit > IDLE_RELEASE => Err(End::Park(limit - IDLE_RELEASE)),
                    _ => Err(End::Close),
                }
            }
            _ = conn.shutdown.changed() => Err(End::Close),
        }
    }

    /// An idle connection waits here, with its buffers given back and no request state (the
    /// caller has dropped it), for at most `left`: true when the first bytes of its next
    /// request came (in `conn.buf`; the head's deadline runs from them, or from the
    /// connection's start for its first request), false when it is to
    /// close (the client went, the time ran out, the router is shutting down). An idle
    /// connection then holds about 2.2 KB of heap instead of 6.2 (heap profile in
    /// benches/README.md, "Idle connections, parked").
    pub(super) async fn park(&self, conn: &mut Conn, left: Duration) -> bool {
        conn.release_buffers();
        let mut first = [0u8; 64];
        let read = tokio::select! {
            read = timeout(left, conn.client.read(&mut first)) => read,
            _ = conn.shutdown.changed() => return false,
        };
        match read {
            Ok(Ok(n)) if n > 0 => {
                conn.take_buffers();
                conn.buf.extend_from_slice(&first[..n]);
                conn.head_started.get_or_insert_with(Instant::now);
                true
            }
            _ => false,
        }
    }

    /// Answers with one of the router's own statuses; whether the connection stays open.
    pub(super) async fn answer(&self, conn: &mut Conn, head: &request::Head, status: u16) -> bool {
        conn.buf.advance(head.len);
        let keep = !head.close && !*conn.shutdown.borrow();
        let date = pingora::protocols::http::date::get_cached_date();
        responses::write_http1(&mut conn.out, status, keep, date.as_bytes());
        conn.send_out().await.is_ok() && keep
    }

    /// Answers with an error status of the router's own and closes: `(status, false)`.
    pub(super) async fn fail(&self, conn: &mut Conn, status: u16) -> (u16, bool) {
        if let Some(session) = conn.h2_session() {
            return (answer_h2(session, status).await, false);
        }
        let date = pingora::protocols::http::date::get_cached_date();
        responses::write_http1(&mut conn.out, status, false, date.as_bytes());
        if conn.send_out().await.is_err() {
            return (0, false);
        }
        (status, false)
    }
}

/// Answers an HTTP/2 stream with one of the router's own statuses (the headers and body every
/// engine sends): the status, or 0 when the client is gone.
pub(in crate::proxy) async fn answer_h2(session: &mut HttpSession, status: u16) -> u16 {
    let canned = responses::canned(status);
    let sent = match session.write_response_header_ref(&canned.header, false) {
        Ok(()) => session.write_body(canned.body.clone(), true).await,
        Err(e) => Err(e),
    };
    match sent {
        Ok(()) => status,
        Err(e) => {
            tracing::debug!(error = %e, "could not answer an HTTP/2 stream");
            0
        }
    }
}
