//! HTTP/2 clients, stream by stream: a plain request to HTTP/1 backends takes the HTTP/1.1 fast
//! path's way (`proxy::h1`); every other stream goes to pingora's proxy as before.
//!
//! Why: pingora serves each HTTP/2 stream with its general proxy path (a large boxed future per
//! stream, two header maps, an HTTP/1 upstream session with its own tasks and channels), which
//! made HTTP/2 over TLS cost the router 1.57 times nginx's CPU per request (benches/README.md).
//! Here a stream's request is written once as the HTTP/1.1 head the fast path reads and from then
//! on follows that path: the same plan (`proxy::plan`), attempts, pooled backend connections
//! (shared with HTTP/1 clients), forwarding headers, framing rule, canned answers and metrics.
//! Only the response's way back differs ([`relay`]): an HTTP/2 head, the body in DATA frames as
//! the stream's flow control allows.
//!
//! The connection itself is pingora's: its handshake (within the header timeout) and accept loop
//! (graceful shutdown, idle timeout, malformed-stream budget; made public by vendor patch 0008).
//! What is taken is decided per stream, before anything of it is consumed: not CONNECT, no body
//! or a Content-Length one of at most `request::MAX_BODY` (read whole first, as an HTTP/1 body
//! that came with its head), a head `request::parse` takes, on a route to HTTP/1 backends
//! (`Plan::hands_over`, the HTTP/1.1 fast path's test).
//!
//! - [`head`]: the request head as HTTP/1.1, the response head as HTTP/2;
//! - [`relay`]: the response body passed on.

pub(super) mod head;
mod relay;

use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::BytesMut;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::{self, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use tokio::time::timeout;

use super::h1::{answer_h2, origin, request, Conn, FastH1};
use super::plan::{plan, Plan};
use crate::access_log::Answered;

/// The streams of one HTTP/2 connection under way, served inside the connection's own task
/// (as nginx and HAProxy serve a connection's streams), not in a task each as pingora does.
///
/// Why: with a task per stream, a router busy with more runnable streams than tokio's local run
/// queue holds (256 per worker) moves the rest to the shared queue, which a worker looks at
/// only every 61st task: those streams wait far longer than the others. With 50 connections of
/// 10 streams each (benches/edge.sh's h2 load), one stream in 20 took over 40 ms and the
/// slowest 110-130 ms (nginx: 40 ms at most); at 200 streams in flight, 20 ms. A connection's
/// task now polls its streams itself, in the order they wake, and no stream costs a task.
///
/// The set is behind a mutex only because the accept loop's callback and the task's poll both
/// reach it; both run in this one task, one after the other, so it is never contended.
#[derive(Default)]
struct Streams<'a> {
    set: Mutex<FuturesUnordered<Pin<Box<dyn Future<Output = ()> + Send + 'a>>>>,
}

impl<'a> Streams<'a> {
    fn push(&self, stream: Pin<Box<dyn Future<Output = ()> + Send + 'a>>) {
        self.set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(stream);
    }

    /// Polls the streams that woke: ready once none is left.
    fn poll_streams(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut set = self.set.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            match set.poll_next_unpin(cx) {
                Poll::Ready(Some(())) => continue,
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Runs `accept` (the connection's accept loop, which adds streams) and the streams side by
    /// side until `accept` ends, then the streams left until each has ended (the connection is
    /// closed: their sends fail, and each is counted as it ends). The streams are polled after
    /// `accept`, so a stream it adds is polled in the same turn.
    async fn serve(&self, accept: impl Future<Output = ()>) {
        let mut accept = pin!(accept);
        poll_fn(|cx| {
            if accept.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            let _ = self.poll_streams(cx);
            Poll::Pending
        })
        .await;
        poll_fn(|cx| self.poll_streams(cx)).await;
    }
}

/// An HTTP/2 stream the fast path serves: pingora's session for it, and the response head
/// written for it and not sent yet.
pub(in crate::proxy) struct H2Stream {
    pub(in crate::proxy) session: HttpSession,
    pub(in crate::proxy) head: head::ResponseHead,
}

impl FastH1 {
    /// Serves an HTTP/2 connection (ALPN h2, or h2c with prior knowledge) until it closes, its
    /// streams inside the connection's own task ([`Streams`]).
    pub(super) async fn serve_h2(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let digest = Arc::new(Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest: stream.get_timing_digest(),
            proxy_digest: stream.get_proxy_digest(),
            socket_digest: stream.get_socket_digest(),
        });
        let handshake = server::handshake(stream, self.proxy.h2_options.clone());
        // A client that never completes the preface is not waited for forever.
        let conn = match timeout(self.timeouts.header, handshake).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "HTTP/2 handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("HTTP/2 preface not received within the header timeout");
                return;
            }
        };
        let idle = self
            .proxy
            .server_options
            .as_ref()
            .and_then(|o| o.h2_idle_timeout);
        let streams = Streams::default();
        let accept = server::accept_downstream_sessions(
            conn,
            digest,
            shutdown.clone(),
            idle,
            |session, guard| {
                // The stream's session and its serving state (a few KiB) boxed: the set holds
                // a pointer per stream.
                let stream = Box::new(H2Stream {
                    session,
                    head: head::ResponseHead::default(),
                });
                streams.push(Box::pin(async move {
                    // Held while the stream is served: the connection is busy, not idle.
                    let _guard = guard;
                    // A panic ends this stream only (its session dropped: reset), as when each
                    // stream was a task of its own, not the connection's other streams.
                    let served = AssertUnwindSafe(self.serve_stream(stream, shutdown));
                    if served.catch_unwind().await.is_err() {
                        tracing::error!("serving an HTTP/2 stream panicked: stream dropped");
                    }
                }));
            },
        );
        streams.serve(accept).await;
    }

    /// Serves one stream: on the fast path when it takes it, else by pingora's proxy.
    async fn serve_stream(&self, mut stream: Box<H2Stream>, shutdown: &ShutdownWatch) {
        let start = Instant::now();
        let mut buf = BytesMut::with_capacity(1024);
        let Some(head) = head::write_h1(stream.session.req_header(), &mut buf) else {
            return self.hand_over_stream(stream, shutdown).await;
        };
        let body = !stream.session.is_body_empty();
        if body && head.content_length == 0 {
            // A body of no declared length (allowed in HTTP/2): pingora streams it.
            return self.hand_over_stream(stream, shutdown).await;
        }
        let planned = plan(
            &self.router.table.load(),
            &buf[head.host.clone()],
            &buf[head.path.clone()],
        );
        if planned.hands_over(body) {
            return self.hand_over_stream(stream, shutdown).await;
        }
        let _in_flight = self.router.in_flight.enter();
        self.router.metrics.h2_fast_streams.inc();
        let logged = self.router.logged(|| head.logged(&buf));
        let from = stream.session.digest().map_or_else(
            || origin(None, false),
            |d| origin(d.socket_digest.as_deref(), d.ssl_digest.is_some()),
        );
        let mut chosen = None;
        let status = match planned {
            Plan::Answer(status) => answer_h2(&mut stream.session, status).await,
            Plan::Forward { route, service } => {
                if body && !self.read_body(&mut stream.session, &mut buf, &head).await {
                    // The client did not send the body it announced, in time: no answer.
                    stream.session.shutdown();
                    let done = || Answered {
                        origin: from,
                        proto: "HTTP/2",
                        upstream: None,
                    };
                    self.router.answered(0, start, logged.as_ref(), done);
                    return;
                }
                let mut conn = Conn::for_stream(stream, buf, from, shutdown.clone());
                self.forward(&mut conn, &head, &route, &service, &mut chosen)
                    .await
                    .0
            }
        };
        let done = || Answered {
            origin: from,
            proto: "HTTP/2",
            upstream: chosen,
        };
        self.router.answered(status, start, logged.as_ref(), done);
    }

    /// Reads the stream's whole request body (its Content-Length, at most `request::MAX_BODY`)
    /// into `buf` after the head, each part within the keep-alive timeout as for an HTTP/1
    /// body. false: the client sent less, more, or not in time.
    async fn read_body(
        &self,
        session: &mut HttpSession,
        buf: &mut BytesMut,
        head: &request::Head,
    ) -> bool {
        let end = head.len + head.content_length as usize;
        loop {
            match timeout(self.timeouts.keepalive, session.read_body_bytes()).await {
                Ok(Ok(Some(data))) if buf.len() + data.len() <= end => buf.extend_from_slice(&data),
                Ok(Ok(None)) => return buf.len() == end,
                _ => return false,
            }
        }
    }

    /// Gives the stream to pingora's proxy, as every stream went before.
    async fn hand_over_stream(&self, stream: Box<H2Stream>, shutdown: &ShutdownWatch) {
        self.router.metrics.h2_handed_over.inc();
        let session = ServerSession::new_http2(stream.session);
        HttpServerApp::process_new_http(&self.proxy, session, shutdown).await;
    }
}
