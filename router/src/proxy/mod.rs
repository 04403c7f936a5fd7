//! Where a request is routed: pingora's `ProxyHttp` phases, in the order they run. Plain
//! HTTP/1.1 requests take the router's own loop in [`h1`] instead, and plain HTTP/2 streams the
//! same path by way of `h2`, with the same behaviour; this path serves the rest (upgrades,
//! CONNECT, chunked and large uploads, HTTP/2 backends, HTTP/1.0).
//!
//! 1. `request_filter`: the request's [`plan`] by the current table snapshot (no lock), the
//!    same as the fast path's: 404 or 503 answered right here, else the service to forward to.
//! 2. `upstream_peer`: the next instance by the [`Attempts`] rule every engine follows (the
//!    sticky pin, P2C least in flight, or the leader).
//! 3. `fail_to_connect`: a connect failure is retried on another instance, a few times.
//! 4. `upstream_request_filter` / `response_filter`: forwarding headers in, hop-by-hop out.
//! 5. `fail_to_proxy`: 503 when no connect succeeded, 504 on a backend timeout, else 502.
//! 6. `logging`: metrics.

pub mod framing;
pub mod h1;
mod h2;
pub mod headers;
pub mod plan;
pub mod responses;
pub mod sticky;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use flynn_store::types::BackendProtocol;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::protocols::http::ServerSession;
use pingora::proxy::FailToProxy;
use pingora::upstreams::peer::{H1UpgradePolicy, PeerOptions};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::access_log::{AccessLog, Answered, Request};
use crate::backend::{Attempts, InFlight};
use crate::drain;
use crate::metrics::Metrics;
use crate::table::host::HostBuf;
use crate::table::{RouteEntry, Table};
use headers::Origin;
use plan::Plan;
use responses::Canned;
use sticky::StickyKey;

/// Timeouts towards backends.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamTimeouts {
    /// How long one connection attempt may take before the next instance is tried.
    pub connect: Duration,
    /// How long the backend may stay silent (reading its response) before a 504.
    pub read: Duration,
    /// How long an unused pooled connection to a backend is kept.
    pub idle: Duration,
}

impl UpstreamTimeouts {
    /// Sets these timeouts on a backend peer's options.
    pub fn apply(&self, options: &mut PeerOptions) {
        options.connection_timeout = Some(self.connect);
        options.read_timeout = Some(self.read);
        options.idle_timeout = Some(self.idle);
    }
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        UpstreamTimeouts {
            connect: Duration::from_secs(1),
            read: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        }
    }
}

/// Deadlines for clients, on every engine and protocol.
#[derive(Clone, Copy, Debug)]
pub struct ClientTimeouts {
    /// How long a connection may wait for its next request (HTTP/1 keep-alive, or HTTP/2 with
    /// no stream open), and a request body between two reads.
    pub keepalive: Duration,
    /// How long a request head may take from its first byte (from the connection's start for
    /// the first request), and a connection's PROXY header, TLS handshake or HTTP/2 preface.
    pub header: Duration,
}

/// The HTTP proxy: reads the shared table, writes metrics.
#[derive(Clone)]
pub struct Proxy {
    table: Arc<ArcSwap<Table>>,
    metrics: Arc<Metrics>,
    timeouts: UpstreamTimeouts,
    sticky: Arc<StickyKey>,
    in_flight: Arc<drain::InFlight>,
    access_log: Option<Arc<AccessLog>>,
}

impl Proxy {
    pub fn new(
        table: Arc<ArcSwap<Table>>,
        metrics: Arc<Metrics>,
        timeouts: UpstreamTimeouts,
        sticky: Arc<StickyKey>,
        in_flight: Arc<drain::InFlight>,
        access_log: Option<Arc<AccessLog>>,
    ) -> Proxy {
        Proxy {
            table,
            metrics,
            timeouts,
            sticky,
            in_flight,
            access_log,
        }
    }

    /// What the access log keeps of a request, read (and copied) only when there is a log.
    pub(crate) fn logged(&self, read: impl FnOnce() -> Request) -> Option<Request> {
        self.access_log.as_ref().map(|_| read())
    }

    /// One answered request, on any engine: counted in the metrics, and logged with
    /// `--access-log` (`logged` from [`Self::logged`]; `answered` is only asked then).
    /// `status` 0: nothing was sent.
    pub(crate) fn answered(
        &self,
        status: u16,
        start: Instant,
        logged: Option<&Request>,
        answered: impl FnOnce() -> Answered,
    ) {
        self.metrics.record_request(status, start);
        if let (Some(log), Some(request)) = (&self.access_log, logged) {
            log.record(request, &answered(), status, start.elapsed());
        }
    }
}

/// Per-request state.
pub struct RequestCtx {
    start: Instant,
    route: Option<Arc<RouteEntry>>,
    /// The connect attempts (the same rule as the fast path's and TCP routes').
    attempts: Option<Attempts>,
    /// The instance of the current attempt, counted in flight while this lives.
    current: Option<InFlight>,
    /// Sticky routes: the cookie to set when the chosen instance is not the pinned one.
    set_cookie: Option<String>,
    /// Counts the request for draining.
    _in_flight: drain::Guard,
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    /// No downstream modules: pingora's default adds a response-compression module that is
    /// disabled (level 0) yet still built and run on every request. The router never compresses.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            route: None,
            attempts: None,
            current: None,
            set_cookie: None,
            _in_flight: self.in_flight.enter(),
        }
    }

    async fn refuse_request(&self, session: &mut ServerSession, status: u16) -> Result<()> {
        let canned = responses::canned(status);
        let logged = self.logged(Request::default);
        let done = || Answered {
            origin: session_origin(session),
            proto: "HTTP/1.1",
            upstream: None,
        };
        self.answered(status, Instant::now(), logged.as_ref(), done);
        session
            .write_error_response(canned.header.clone(), canned.body.clone())
            .await
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        // The snapshot is let go before anything is awaited.
        let planned = plan::plan(&self.table.load(), request_host(req), request_path(req));
        let (route, service) = match planned {
            Plan::Forward { route, service } => (route, service),
            Plan::Answer(status) => {
                answer(session, responses::canned(status)).await?;
                return Ok(true);
            }
        };
        let req = session.req_header();
        let pinned = if route.sticky {
            sticky::cookie_value(req).and_then(|v| self.sticky.open(v))
        } else {
            None
        };
        ctx.attempts = Some(Attempts::new(service, route.leader, pinned));
        ctx.route = Some(route);
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let (Some(route), Some(attempts)) = (&ctx.route, &mut ctx.attempts) else {
            return Err(Error::explain(ErrorType::InternalError, "no route chosen"));
        };
        // Still set: the last attempt connected, on a pooled connection the backend had closed
        // (pingora retries that only for idempotent requests). The same instance, once more.
        let again = ctx.current.take().map(|stale| stale.backend().clone());
        let Some(backend) = again.or_else(|| attempts.next()) else {
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                "no instance left to try",
            ));
        };
        if route.sticky {
            ctx.set_cookie = match attempts.pinned() {
                Some(id) if id == backend.id => None,
                _ => self.sticky.seal(&backend.id),
            };
        }
        // `h2`: TLS to the backend, named (SNI) and verified as the host the client asked for.
        let tls_name = match route.backend_protocol {
            BackendProtocol::H2 => Some(backend_tls_name(session.req_header())?),
            BackendProtocol::Http1 | BackendProtocol::H2c => None,
        };
        let mut peer = HttpPeer::new(
            backend.addr,
            tls_name.is_some(),
            tls_name.unwrap_or_default(),
        );
        if route.backend_protocol != BackendProtocol::Http1 {
            peer.options.set_http_version(2, 2);
        }
        self.timeouts.apply(&mut peer.options);
        // Any upgrade (not only WebSocket) reaches the backend with its handshake intact.
        peer.options.http_upstream_request_policy.h1_upgrade = H1UpgradePolicy::Preserve;

        ctx.current = Some(InFlight::new(backend));
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.metrics.upstream_connect_errors.inc();
        if let Some(current) = ctx.current.take() {
            current.backend().failed();
        }
        e.set_retry(ctx.attempts.as_ref().is_some_and(Attempts::more));
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        headers::add_forwarding(upstream_request, &session_origin(session))?;
        single_content_length(upstream_request)?;
        let h1_backend = ctx
            .route
            .as_ref()
            .is_some_and(|r| r.backend_protocol == BackendProtocol::Http1);
        if h1_backend && session.req_header().version == http::Version::HTTP_2 {
            join_cookies(upstream_request)?;
        }
        if ctx.route.as_ref().is_some_and(|r| r.sticky) {
            sticky::strip_cookie(upstream_request)?;
        }
        let upgrade = upstream_request.headers.contains_key(http::header::UPGRADE);
        if !upgrade && ctx.route.as_ref().is_some_and(|r| r.disable_keep_alives) {
            upstream_request.insert_header(http::header::CONNECTION, "close")?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The instance answered: healthy again, whatever failed before.
        if let Some(current) = &ctx.current {
            current.backend().succeeded();
        }
        if upstream_response.version <= http::Version::HTTP_11 {
            check_framing(upstream_response)?;
        }
        headers::strip_response_hop_by_hop(upstream_response);
        // A proxy answers with its own HTTP version (RFC 9110 §6.2): an HTTP/1.0 backend's
        // response goes out as HTTP/1.1, so the client's connection stays reusable.
        if upstream_response.version < http::Version::HTTP_11 {
            upstream_response.set_version(http::Version::HTTP_11);
        }
        if let Some(sealed) = ctx.set_cookie.take() {
            let cookie = sticky::set_cookie(&sealed, is_tls(session));
            upstream_response.append_header(http::header::SET_COOKIE, cookie)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let status = error_status(e);
        if status == 504 {
            // A backend that does not answer in time is avoided for a while, as one that does
            // not accept connections is.
            if let Some(current) = &ctx.current {
                current.backend().failed();
            }
        }
        if status > 0 {
            let canned = responses::canned(status);
            let (header, body) = (canned.header.clone(), canned.body.clone());
            if let Err(write) = session.write_error_response(header, body).await {
                tracing::debug!(%write, "could not send the error response");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let upstream = ctx.current.take().map(|last| last.backend().addr);
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let req = session.req_header();
        // The host routed by and the request target as sent, as the fast path logs them.
        let logged = self.logged(|| {
            Request::from_bytes(
                req.method.as_str().as_bytes(),
                request_host(req),
                req.raw_path(),
            )
        });
        let done = || Answered {
            origin: session_origin(session),
            proto: match req.version {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                http::Version::HTTP_09 => "HTTP/0.9",
                _ => "HTTP/1.1",
            },
            upstream,
        };
        self.answered(status, ctx.start, logged.as_ref(), done);
    }
}

/// The status the router answers with when proxying failed (0: the client is gone). What the
/// client did wrong is a 4xx, never a 5xx counted against a backend.
fn error_status(e: &Error) -> u16 {
    use ErrorType::*;
    let connect = matches!(
        e.etype(),
        ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | SocketError | BindError
    );
    match (e.etype(), e.esource()) {
        (HTTPStatus(code), _) => *code,
        (WriteError | ReadError | ConnectionClosed, ErrorSource::Downstream) => 0,
        (ReadTimedout, ErrorSource::Downstream) => 408,
        (_, ErrorSource::Downstream) => 400,
        _ if connect => 503,
        (ReadTimedout | WriteTimedout, ErrorSource::Upstream) => 504,
        (_, ErrorSource::Upstream) => 502,
        (_, ErrorSource::Internal | ErrorSource::Unset) => 500,
    }
}

/// Applies the framing rule both engines follow ([`framing`]) to an HTTP/1 backend's response:
/// a 502 for one that breaks it, one `Content-Length` for identical ones.
fn check_framing(resp: &mut ResponseHeader) -> Result<()> {
    use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    let values = |name| resp.headers.get_all(name).into_iter().map(|v| v.as_bytes());
    let body = framing::body_length(values(TRANSFER_ENCODING), values(CONTENT_LENGTH));
    match body {
        Err(why) => {
            tracing::info!(%why, "bad response from a backend");
            Err(Error::explain(
                ErrorType::HTTPStatus(502),
                "bad response framing",
            ))
        }
        Ok(framing::BodyLength::Length {
            length,
            rewrite: true,
        }) => resp.insert_header(CONTENT_LENGTH, itoa::Buffer::new().format(length)),
        Ok(framing::BodyLength::Chunked) if resp.headers.contains_key(CONTENT_LENGTH) => {
            resp.remove_header(&CONTENT_LENGTH);
            Ok(())
        }
        Ok(_) => Ok(()),
    }
}

/// A request's identical Content-Length values (`5, 5`, or two lines), which pingora accepts,
/// go to the backend as one plain value: a backend must not be left to read them its own way.
fn single_content_length(req: &mut RequestHeader) -> Result<()> {
    use http::header::CONTENT_LENGTH;
    let values = req.headers.get_all(CONTENT_LENGTH).into_iter();
    match framing::body_length([], values.map(|v| v.as_bytes())) {
        Ok(framing::BodyLength::Length {
            length,
            rewrite: true,
        }) => req.insert_header(CONTENT_LENGTH, itoa::Buffer::new().format(length)),
        Ok(_) => Ok(()),
        Err(_) => Err(Error::explain(
            ErrorType::HTTPStatus(400),
            "conflicting Content-Length values",
        )),
    }
}

/// An HTTP/2 request's cookie fields reach an HTTP/1 backend as one field, as on the fast path
/// (`h2::head`).
fn join_cookies(req: &mut RequestHeader) -> Result<()> {
    if req
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .nth(1)
        .is_none()
    {
        return Ok(());
    }
    let mut joined = Vec::new();
    headers::join_cookies(&req.headers, &mut joined);
    req.insert_header(http::header::COOKIE, joined)
}

/// Writes one of the router's own answers, keeping the client connection open.
async fn answer(session: &mut Session, canned: &Canned) -> Result<()> {
    session
        .write_response_header_ref(&canned.header, false)
        .await?;
    session
        .write_response_body(Some(canned.body.clone()), true)
        .await
}

/// Whether the client connection is TLS.
fn is_tls(session: &ServerSession) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// Where a request of pingora's proxy came from and arrived (its forwarding headers, and the
/// access log's client and scheme).
fn session_origin(session: &ServerSession) -> Origin {
    Origin {
        client_ip: session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip()),
        proto: if is_tls(session) { "https" } else { "http" },
        port: session
            .server_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.port()),
    }
}

/// The authority of an absolute-form URI or HTTP/2 request (RFC 9112 3.2.2: it wins over the
/// Host header; pingora refuses a Host that differs from it), else the Host header.
fn request_host(req: &RequestHeader) -> &[u8] {
    if let Some(authority) = req.uri.authority() {
        return authority.as_str().as_bytes();
    }
    req.headers
        .get(http::header::HOST)
        .map_or(&b""[..], |host| host.as_bytes())
}

/// The name a TLS backend's certificate is verified for: the request's host, without a port.
/// Never empty: pingora turns certificate verification off for an empty name.
fn backend_tls_name(req: &RequestHeader) -> Result<String> {
    HostBuf::new(request_host(req))
        .map(|h| h.as_str().to_owned())
        .filter(|name| !name.is_empty())
        .ok_or_else(|| {
            Error::explain(
                ErrorType::HTTPStatus(502),
                "no host name to verify the backend's certificate for",
            )
        })
}

/// The request target's path as the client sent it (absolute-form URIs reduced to their path).
fn request_path(req: &RequestHeader) -> &[u8] {
    let raw = req.raw_path();
    if raw.first() == Some(&b'/') {
        raw
    } else {
        req.uri.path().as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(etype: ErrorType, source: ErrorSource) -> Box<Error> {
        let mut e = Error::new(etype);
        e.esource = source;
        e
    }

    #[test]
    fn client_errors_are_never_blamed_on_a_backend() {
        use ErrorSource::*;
        use ErrorType::*;
        for (etype, source, status) in [
            (ConnectRefused, Upstream, 503),
            (ConnectTimedout, Unset, 503),
            (ReadTimedout, Upstream, 504),
            (InvalidHTTPHeader, Upstream, 502),
            (SocketError, Downstream, 400),
            (InvalidHTTPHeader, Downstream, 400),
            (ReadTimedout, Downstream, 408),
            (ConnectionClosed, Downstream, 0),
            (HTTPStatus(503), Internal, 503),
            (InternalError, Internal, 500),
        ] {
            let e = error(etype.clone(), source.clone());
            assert_eq!(error_status(&e), status, "{etype:?} from {source:?}");
        }
    }
}
