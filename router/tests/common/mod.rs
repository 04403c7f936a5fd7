//! The black-box harness: a real etcd, the real `flynn-router` binary on free ports, and a store
//! client to write routes and instances the way the controller would.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use flynn_store::{Keys, Store};
use flynn_testkit::client::{self, Response};
use flynn_testkit::{eventually, free_port, Etcd};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// Runs each named `async fn name(engine: &[&str])` once per HTTP engine, as
/// `<name>::fast_path` (`--h1-fast-path true`) and `<name>::pingora` (`--h1-fast-path false`):
/// one suite, both engines (as the store's conformance suite runs on both store backends).
#[allow(unused_macros)]
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fast_path() {
                super::$name(&["--h1-fast-path", "true"]).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pingora() {
                super::$name(&["--h1-fast-path", "false"]).await;
            }
        }
    )*};
}
#[allow(unused_imports)]
pub(crate) use on_both_engines;

/// The flags of one engine followed by `extra` ones.
pub fn flags<'a>(engine: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    engine.iter().chain(extra).copied().collect()
}

/// How long the tests give the router to apply a store change. The contract is milliseconds;
/// this is generous so that a loaded CI machine does not flake.
pub const APPLY: Duration = Duration::from_secs(5);

pub struct Harness {
    pub etcd: Etcd,
    pub store: Arc<dyn Store>,
    pub keys: Keys,
    pub router: Router,
}

impl Harness {
    /// etcd plus a router with the default flags (and `extra` ones), synced and healthy.
    pub async fn start(extra: &[&str]) -> Harness {
        let etcd = Etcd::start().await;
        let store = flynn_store::open(&etcd.url()).await.expect("open etcd");
        let router = Router::start(&etcd.url(), extra).await;
        Harness {
            etcd,
            store,
            keys: Keys::default(),
            router,
        }
    }

    /// Writes an HTTP route `{domain, path, service, ...extra}` under `id`.
    pub async fn route(&self, id: &str, domain: &str, path: &str, service: &str) {
        self.route_with(id, domain, path, service, json!({})).await;
    }

    pub async fn route_with(
        &self,
        id: &str,
        domain: &str,
        path: &str,
        service: &str,
        extra: serde_json::Value,
    ) {
        let mut route = json!({
            "id": id, "type": "http", "domain": domain, "path": path, "service": service,
        });
        if let (Some(route), Some(extra)) = (route.as_object_mut(), extra.as_object()) {
            route.extend(extra.clone());
        }
        self.put_raw(&self.keys.route(id), route.to_string()).await;
    }

    pub async fn remove_route(&self, id: &str) {
        self.store
            .delete(&self.keys.route(id))
            .await
            .expect("delete route");
    }

    /// Stores a certificate (PEM chain and key) under `id`.
    pub async fn cert(&self, id: &str, cert_pem: &str, key_pem: &str) {
        let value = json!({"id": id, "cert": cert_pem, "key": key_pem}).to_string();
        self.put_raw(&self.keys.cert(id), value).await;
    }

    /// Registers `addr` as instance `id` of `service` (no lease).
    pub async fn instance(&self, service: &str, id: &str, addr: SocketAddr) {
        let value = json!({"id": id, "addr": addr.to_string()}).to_string();
        self.put_raw(&self.keys.instance(service, id), value).await;
    }

    pub async fn remove_instance(&self, service: &str, id: &str) {
        self.store
            .delete(&self.keys.instance(service, id))
            .await
            .expect("delete instance");
    }

    pub async fn put_raw(&self, key: &str, value: impl Into<Vec<u8>>) {
        self.store
            .put(key, value.into(), None)
            .await
            .expect("store put");
    }

    /// Waits until `host` answers `status` at `path` ([`Router::wait_status`]).
    pub async fn wait_status(&self, host: &str, path: &str, status: u16) {
        self.router.wait_status(host, path, status).await
    }

    /// A GET through the router on a fresh connection.
    pub async fn get(&self, path: &str, host: &str) -> Response {
        client::get(&self.router.http.to_string(), path, host)
            .await
            .expect("request through the router")
    }
}

/// The `flynn-router` binary, killed when dropped.
pub struct Router {
    child: Child,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Router {
    /// Starts the router and waits until `/health` says it has synced.
    pub async fn start(store_url: &str, extra: &[&str]) -> Router {
        let router = Router::spawn(store_url, extra);
        router.wait_healthy().await;
        router
    }

    /// Starts the router without waiting for anything.
    pub fn spawn(store_url: &str, extra: &[&str]) -> Router {
        let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
        Router::spawn_at(store_url, [port(), port(), port()], extra)
    }

    /// Starts the router on given HTTP, HTTPS and admin addresses (as a successor does).
    pub fn spawn_at(
        store_url: &str,
        [http, https, admin]: [SocketAddr; 3],
        extra: &[&str],
    ) -> Router {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("router.log");
        let child = Command::new(env!("CARGO_BIN_EXE_flynn-router"))
            .arg("--store")
            .arg(store_url)
            .arg("--http-addr")
            .arg(http.to_string())
            .arg("--https-addr")
            .arg(https.to_string())
            .arg("--admin-addr")
            .arg(admin.to_string())
            .args(["--threads", "2", "--log"])
            // FLYNN_TEST_ROUTER_LOG=debug shows pingora's own logs when a test needs them.
            .arg(std::env::var("FLYNN_TEST_ROUTER_LOG").unwrap_or("info,flynn_router=debug".into()))
            .args(extra)
            .env_remove("FLYNN_STORE")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("router log"))
            .stderr(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&log)
                    .expect("router log"),
            )
            .kill_on_drop(true)
            .spawn()
            .expect("start flynn-router");
        Router {
            child,
            http,
            https,
            admin,
            log,
            _dir: dir,
        }
    }

    /// The admin `/health` status (0 when the admin listener does not answer).
    pub async fn health(&self) -> u16 {
        client::get(&self.admin.to_string(), "/health", "admin")
            .await
            .map(|r| r.status)
            .unwrap_or(0)
    }

    pub async fn wait_healthy(&self) {
        let admin_addr = self.admin.to_string();
        let healthy = eventually(Duration::from_secs(20), "router /health 200", || {
            let admin_addr = admin_addr.clone();
            async move {
                client::get(&admin_addr, "/health", "admin")
                    .await
                    .is_ok_and(|r| r.status == 200)
            }
        })
        .await;
        if let Err(e) = healthy {
            panic!("{e}\nrouter log:\n{}", self.log());
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `QUIT`, ...) to the router process.
    pub fn signal(&self, name: &str) {
        let pid = self.pid().expect("router still running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// Waits for the process to end; None when it is still running after `within`.
    pub async fn exited_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        client::get(&self.admin.to_string(), "/metrics", "admin")
            .await
            .expect("GET /metrics")
            .text()
    }

    /// The value of one sample, e.g. `flynn_router_routes` or
    /// `flynn_router_requests_total{class="2xx"}`.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics().await;
        metric_value(&text, sample).unwrap_or_else(|| panic!("no sample {sample} in\n{text}"))
    }

    /// Waits (up to [`APPLY`]) until `host` answers `status` at `path`; panics with the log.
    pub async fn wait_status(&self, host: &str, path: &str, status: u16) {
        let addr = self.http.to_string();
        let waited = eventually(APPLY, &format!("{host}{path} to answer {status}"), || {
            let addr = addr.clone();
            async move {
                client::get(&addr, path, host)
                    .await
                    .is_ok_and(|r| r.status == status)
            }
        })
        .await;
        if let Err(e) = waited {
            panic!("{e}\nrouter log:\n{}", self.log());
        }
    }

    /// Waits (up to [`APPLY`]) until `sample`'s value satisfies `want`; panics with the metrics.
    pub async fn wait_metric(&self, sample: &str, want: impl Fn(f64) -> bool) {
        let result = eventually(APPLY, sample, || async {
            metric_value(&self.metrics().await, sample).is_some_and(&want)
        })
        .await;
        if let Err(e) = result {
            panic!("{e}\nmetrics:\n{}", self.metrics().await);
        }
    }
}

pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The JSON the echo backend answered with; panics with the response when it is not JSON.
pub fn echoed(response: &Response) -> serde_json::Value {
    response
        .json()
        .unwrap_or_else(|e| panic!("{e}: status {} {:?}", response.status, response.text()))
}

/// Which backend answered.
pub fn backend_of(response: &Response) -> String {
    echoed(response)["backend"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A TCP server on 127.0.0.1 that runs `serve` on every connection it accepts, for backends that
/// misbehave in ways a real HTTP server will not.
pub async fn raw_server<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// Reads into `seen` until it starts with a whole request head: the head's length, or None when
/// the connection ends first.
pub async fn read_head(stream: &mut TcpStream, seen: &mut Vec<u8>) -> Option<usize> {
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(end + 4);
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// A backend that answers every request (head only, no body read) with a fixed raw response,
/// keeping the connection open for the next one.
pub async fn raw_backend(response: &'static [u8]) -> SocketAddr {
    raw_backend_with(response, false).await
}

/// [`raw_backend`], closing each connection after its first response when `close` is set
/// (for bodies that end when the connection does).
pub async fn raw_backend_with(response: &'static [u8], close: bool) -> SocketAddr {
    raw_server(move |mut stream| async move {
        let mut seen = Vec::new();
        while let Some(len) = read_head(&mut stream, &mut seen).await {
            seen.drain(..len);
            if stream.write_all(response).await.is_err() || close {
                return;
            }
        }
    })
    .await
}
