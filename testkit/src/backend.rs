//! A real HTTP/1.1 (or h2c) backend on 127.0.0.1 that answers with JSON describing the request
//! it got: `{"backend", "method", "version", "uri", "headers": [[name, value], ...], "body_len"}`.
//!
//! Special paths: `/slow/<ms>` waits before answering, `/status/<code>` answers with that status,
//! `/stream` sends `first\n`, waits 1.5 s, then `last\n`. Any request with an `Upgrade` header is
//! switched (`101`) and then echoed byte for byte.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Options for a [`Backend`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Close kept-alive connections after this long without a request.
    pub idle_timeout: Option<Duration>,
    /// Listen on this address instead of a fresh port (to bring a backend back).
    pub addr: Option<SocketAddr>,
    /// Wait this long before answering any request (a slow instance).
    pub delay: Option<Duration>,
    /// Speak HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1, as gRPC servers do.
    pub h2c: bool,
    /// Speak HTTP/2 over TLS (ALPN h2) with this server configuration.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

/// A running backend; it stops (closing every connection) when dropped.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Stats {
    connections: AtomicUsize,
    requests: AtomicUsize,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Backend::start_with(name, Options::default()).await
    }

    pub async fn start_with(name: &str, options: Options) -> Backend {
        let bind = options
            .addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = TcpListener::bind(bind).await.expect("bind test backend");
        let addr = listener.local_addr().expect("backend address");
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(serve(listener, name.to_owned(), options, stats.clone()));
        Backend {
            name: name.to_owned(),
            addr,
            stats,
            task,
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::SeqCst)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }

    /// Stops listening and closes every connection.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, name: String, options: Options, stats: Arc<Stats>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        stats.connections.fetch_add(1, Ordering::SeqCst);
        let name = name.clone();
        let stats = stats.clone();
        let idle = options.idle_timeout;
        let delay = options.delay;
        let h2c = options.h2c;
        let tls = options.tls.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                stats.requests.fetch_add(1, Ordering::SeqCst);
                let name = name.clone();
                async move {
                    if let Some(delay) = delay {
                        tokio::time::sleep(delay).await;
                    }
                    answer(name, req).await
                }
            });
            let h2 =
                || hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Some(config) = tls {
                if let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await {
                    let _ = h2().serve_connection(TokioIo::new(stream), service).await;
                }
                return;
            }
            if h2c {
                let _ = h2().serve_connection(TokioIo::new(stream), service).await;
                return;
            }
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new());
            if let Some(idle) = idle {
                builder.header_read_timeout(idle);
            }
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn answer(name: String, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if let Some(protocol) = req.headers().get(hyper::header::UPGRADE).cloned() {
        return Ok(upgrade(&name, &mut req, protocol));
    }
    let path = req.uri().path().to_owned();
    if let Some(ms) = path.strip_prefix("/slow/") {
        let ms = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if path == "/stream" {
        let chunks = futures_stream();
        return Ok(Response::new(BodyExt::boxed(StreamBody::new(chunks))));
    }
    let status = path
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
        .unwrap_or(200);
    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    let uri = req.uri().to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body_len = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let json = serde_json::json!({
        "backend": name,
        "method": method,
        "version": version,
        "uri": uri,
        "headers": headers,
        "body_len": body_len,
    });
    let mut response = Response::new(BodyExt::boxed(Full::new(Bytes::from(json.to_string()))));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn futures_stream() -> impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send {
    futures::stream::unfold(0u8, |step| async move {
        match step {
            0 => Some((Ok(Frame::data(Bytes::from_static(b"first\n"))), 1)),
            1 => {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                Some((Ok(Frame::data(Bytes::from_static(b"last\n"))), 2))
            }
            _ => None,
        }
    })
}

/// Answers any upgrade request with `101`, then echoes every byte back on the upgraded
/// connection. The 101 carries `x-backend` and the `connection` header the backend received.
fn upgrade(
    name: &str,
    req: &mut Request<Incoming>,
    protocol: hyper::header::HeaderValue,
) -> Response<Body> {
    let received_connection = req
        .headers()
        .get(hyper::header::CONNECTION)
        .cloned()
        .unwrap_or(hyper::header::HeaderValue::from_static(""));
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut read, &mut write).await;
        }
    });
    let mut response = Response::new(BodyExt::boxed(Full::new(Bytes::new())));
    *response.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(hyper::header::UPGRADE, protocol);
    headers.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("upgrade"),
    );
    if let Ok(value) = hyper::header::HeaderValue::from_str(name) {
        headers.insert("x-backend", value);
    }
    headers.insert("x-received-connection", received_connection);
    response
}

/// The JSON list of `[name, value]` header pairs in a backend answer, as (name, value).
pub fn echoed_headers(json: &serde_json::Value) -> Vec<(String, String)> {
    json["headers"]
        .as_array()
        .map(|pairs| {
            pairs
                .iter()
                .filter_map(|p| Some((p[0].as_str()?.to_owned(), p[1].as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Every value of header `name` (case-insensitive) in a backend answer.
pub fn echoed_header(json: &serde_json::Value, name: &str) -> Vec<String> {
    echoed_headers(json)
        .into_iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}
