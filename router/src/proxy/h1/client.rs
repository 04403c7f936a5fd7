//! The client side of the fast path: its connection and buffers, reading request heads within
//! their deadlines, and the router's own answers.

use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::error::Elapsed;
use tokio::time::timeout;

use super::super::headers::Origin;
use super::super::responses;
use super::{request, Conn, End, FastH1, HEAD_READ, IDLE_RELEASE, MAX_HEAD, MIN_ROOM};

impl Conn {
    pub(super) fn new(client: Stream, shutdown: ShutdownWatch) -> Conn {
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
    pub(super) fn take_buffers(&mut self) {
        self.buf.reserve(HEAD_READ);
        self.from_backend.reserve(HEAD_READ);
        self.upstream.reserve(1024);
        self.out.reserve(1024);
    }

    /// The client, what was read of it and when its current head started; the rest of the
    /// connection's buffers are freed here, not kept for the connection's life.
    pub(super) fn into_parts(self) -> (Stream, BytesMut, Option<Instant>) {
        (self.client, self.buf, self.head_started)
    }

    /// Gives the buffers back while the connection is idle.
    pub(super) fn release_buffers(&mut self) {
        self.buf = BytesMut::new();
        self.from_backend = BytesMut::new();
        self.upstream = Vec::new();
        self.out = Vec::new();
    }

    /// Writes `out` to the client.
    pub(super) async fn send_out(&mut self) -> std::io::Result<()> {
        self.client.write_all(&self.out).await?;
        self.client.flush().await
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
    pub(super) async fn wait_for_request(
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
    pub(super) async fn answer(&self, conn: &mut Conn, head: &request::Head, status: u16) -> bool {
        conn.buf.advance(head.len);
        let keep = !head.close && !*conn.shutdown.borrow();
        let date = pingora::protocols::http::date::get_cached_date();
        responses::write_http1(&mut conn.out, status, keep, date.as_bytes());
        conn.send_out().await.is_ok() && keep
    }

    /// Answers with an error status of the router's own and closes: `(status, false)`.
    pub(super) async fn fail(&self, conn: &mut Conn, status: u16) -> (u16, bool) {
        let date = pingora::protocols::http::date::get_cached_date();
        responses::write_http1(&mut conn.out, status, false, date.as_bytes());
        if conn.send_out().await.is_err() {
            return (0, false);
        }
        (status, false)
    }
}
