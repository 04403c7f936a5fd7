//! The backend side of the fast path: a connection by the attempts rule every engine follows,
//! the request sent (its body streamed from the client), the response head read.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Buf;
use pingora::protocols::Stream;
use pingora::upstreams::peer::{HttpPeer, Peer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use super::super::sticky;
use super::client::Client;
use super::{request, response, Conn, FastH1, RelayError, MAX_HEAD, MIN_ROOM};
use crate::backend::{Attempts, Backend, InFlight, Service};
use crate::table::RouteEntry;

/// A backend connection for one request, counted in flight on its instance while it lives.
pub(super) struct Upstream {
    stream: Stream,
    reused: bool,
    peer: HttpPeer,
    /// Counts the request in flight on its instance (and names the instance).
    in_flight: InFlight,
}

/// Why a request could not be proxied.
pub(super) enum Failed {
    /// A reused backend connection answered nothing: the backend had closed it.
    Stale,
    /// The client went away or broke off.
    Client,
    /// Answered with this status (and the connection closed).
    Status(u16),
}

impl FastH1 {
    /// Proxies one request (its head at the start of `conn.buf`) to an instance of `service`:
    /// the status the client got (0: none) and whether its connection stays open. An HTTP/2
    /// stream's request takes this path too (`proxy::h2`): only the response's way to the
    /// client differs ([`Self::relay_h2`]). `chosen`: the instance the request went to last,
    /// if it was sent (the access log's `upstream`).
    pub(in crate::proxy) async fn forward(
        &self,
        conn: &mut Conn,
        head: &request::Head,
        route: &RouteEntry,
        service: &Arc<Service>,
        chosen: &mut Option<SocketAddr>,
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
                    self.connect_failed(&upstream.in_flight, &e);
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
        *chosen = Some(upstream.in_flight.backend().addr);
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
                conn.add_response_header(b"Set-Cookie", cookie.as_bytes());
            }
        }
        let relayed = if conn.h2_session().is_some() {
            self.relay_h2(conn, &mut upstream.stream, resp.framing)
                .await
        } else {
            self.relay(conn, &mut upstream.stream, resp.framing).await
        };
        match relayed {
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
            // A chunked body broken before its first byte went out: the head still waits in
            // `conn.out`, so the client gets the router's 502 (as for a broken head), not a
            // connection closed with no answer.
            Err(e @ RelayError::Malformed(_)) if conn.head_pending() => {
                tracing::debug!(error = %e, "response body malformed before anything was sent");
                self.router.metrics.relay_failed(e.side());
                conn.drop_pending_head();
                self.fail(conn, 502).await
            }
            // Cut off mid-body: the client's connection cannot carry another response (an
            // HTTP/2 stream is reset: the client must not take it for a whole response).
            Err(e) => {
                tracing::debug!(error = %e, side = e.side().label(), "response body cut off");
                self.router.metrics.relay_failed(e.side());
                if let Some(session) = conn.h2_session() {
                    session.shutdown();
                }
                (resp.status, false)
            }
        }
    }

    /// A connection to the next instance `attempts` gives: pooled, or new (a failed connect
    /// goes on to the next instance, by the rule every engine follows). None: no instance
    /// could be reached.
    pub(super) async fn connect(&self, attempts: &mut Attempts) -> Option<Upstream> {
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
                Err(e) => self.connect_failed(&in_flight, &e),
            }
        }
    }

    /// Counts a failed connect and ejects its instance for a while.
    pub(super) fn connect_failed(&self, instance: &InFlight, e: &pingora::Error) {
        tracing::debug!(backend = %instance.backend().addr, error = %e, "connect failed");
        self.router.metrics.upstream_connect_errors.inc();
        instance.backend().failed();
    }

    /// A new connection to `peer`. Boxed: connecting is a large future (TLS states included)
    /// that would otherwise be part of, and size, every client connection's task for its whole
    /// life; a new backend connection is rare next to the pooled ones.
    pub(super) async fn new_stream(&self, peer: &HttpPeer) -> pingora::Result<Stream> {
        Box::pin(self.connector.new_stream(peer)).await
    }

    /// The peer pingora's connector connects to (and pools by).
    pub(super) fn peer(&self, backend: &Backend) -> HttpPeer {
        let mut peer = HttpPeer::new(backend.addr, false, String::new());
        self.router.timeouts.apply(&mut peer.options);
        peer
    }

    /// Sends the request upstream (the rest of its body streamed from the client) and reads the
    /// response head, passing interim (1xx) responses on; the client's head is in `conn.out`.
    pub(super) async fn exchange(
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
                let (buf, date) = (&conn.from_backend, date.as_bytes());
                let parsed = match &mut conn.client {
                    // Written as the HTTP/2 head its client gets, not as HTTP/1.1 text.
                    Client::H2(stream) => {
                        response::parse(buf, head.is_head, keep_client, date, &mut stream.head)
                    }
                    Client::H1(_) => {
                        response::parse(buf, head.is_head, keep_client, date, &mut conn.out)
                    }
                };
                match parsed {
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
}
