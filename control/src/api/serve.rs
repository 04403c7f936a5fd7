//! The controller's (and the host agent's) HTTP server: an axum router on hyper's HTTP/1.1
//! connections (upgrades included), with the limits a listener facing clients needs, which
//! `axum::serve` does not set:
//!
//! - a deadline for each request head ([`ServeOptions::header_timeout`]): a client that sends
//!   its head byte by byte (slowloris), or opens a connection and says nothing, is cut off;
//!   an idle kept-alive connection is closed after the same time;
//! - a cap on the bytes of a request head ([`MAX_HEAD`]);
//! - TCP keep-alive probes ([`KEEPALIVE`]), so that a client that vanished without closing
//!   (a host gone, a NAT entry dropped) is noticed even on a connection with nothing to send,
//!   such as a quiet event stream; a client that closes is noticed at once by hyper;
//! - a [`Connection`] handle in every request's extensions, through which a handler closes its
//!   own connection: how an event subscriber that stopped reading gets its socket and buffers
//!   freed even though nothing more can be written to it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::ServiceExt;

/// Bytes a request head may take (request line and headers); a longer one gets 431.
pub const MAX_HEAD: usize = 64 * 1024;

/// Probes start after this much silence, then go every [`KEEPALIVE_INTERVAL`].
pub const KEEPALIVE: Duration = Duration::from_secs(30);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// How the server treats its clients.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// How long a client has to send a whole request head, from its first byte (or from the
    /// end of the previous response on a kept-alive connection).
    pub header_timeout: Duration,
    /// Who serves, in log lines ("controller", "host agent").
    pub name: &'static str,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_timeout: Duration::from_secs(10),
            name: "controller",
        }
    }
}

/// The connection a request came on; [`Connection::close`] drops it (the socket, hyper's
/// buffers and the response being written) at once.
#[derive(Clone, Debug, Default)]
pub struct Connection(Arc<Notify>);

impl Connection {
    pub fn close(&self) {
        self.0.notify_one();
    }
}

/// Serves `app` on `listener` until the listener fails for good (it never does on its own: a
/// failed accept, such as running out of descriptors, is logged and retried after a pause).
pub async fn serve(listener: TcpListener, app: Router, options: ServeOptions) -> io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .max_buf_size(MAX_HEAD);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of descriptors, most likely: give the connections that hold them a
                // moment to end instead of spinning.
                tracing::warn!(error = %e, "{}: cannot accept a connection", options.name);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE)
            .with_interval(KEEPALIVE_INTERVAL);
        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!(%peer, error = %e, "{}: cannot set TCP keep-alive", options.name);
        }
        let connection = Connection::default();
        let closed = connection.0.clone();
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(connection.clone());
            let app = app.clone();
            async move { app.oneshot(request).await }
        });
        let serving = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let name = options.name;
        tokio::spawn(async move {
            tokio::select! {
                served = serving => {
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "{name}: connection ended");
                    }
                }
                () = closed.notified() => {
                    tracing::debug!(%peer, "{name}: connection closed by the server");
                }
            }
        });
    }
}

/// An error of one connection, not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
