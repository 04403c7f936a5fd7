//! Puts the router together on a pingora server: the proxy on the HTTP listeners, the admin
//! app on the admin listener, and the store sync as a background service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use flynn_store::{Keys, Store};
use ipnet::IpNet;
use pingora::apps::http_app::HttpServer;
use pingora::apps::{HttpServerOptions, ServerApp};
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::{ConnectionLimit, Service};
use rustls::sign::CertifiedKey;

use crate::access_log::AccessLog;
use crate::admin::Admin;
use crate::drain::{self, Drain};
use crate::metrics::Metrics;
use crate::proxy::h1::FastH1;
use crate::proxy::sticky::StickyKey;
use crate::proxy::{ClientTimeouts, Proxy, UpstreamTimeouts};
use crate::proxy_protocol::inbound::{Trusted, WithProxyHeader};
use crate::registration::{self, Registration};
use crate::sync::{self, TableWriter};
use crate::table::Table;
use crate::tcp::{self, TcpSettings};
use crate::tls::tickets::{keeper::Keeper, SharedTicketer};
use crate::tls::SniResolver;

/// Where the router gets its store from.
#[derive(Clone)]
pub enum StoreSource {
    /// Opened (and re-opened until it answers) from a URL.
    Url(String),
    /// Shared with the rest of the process, as in `flynn server`.
    Shared(Arc<dyn Store>),
}

impl StoreSource {
    /// The store: the shared one, or opened from the URL (retried until it answers).
    pub async fn open(&self) -> Arc<dyn Store> {
        match self {
            StoreSource::Url(url) => sync::open_with_retry(url).await,
            StoreSource::Shared(store) => store.clone(),
        }
    }
}

/// Everything the router needs to run.
pub struct RouterConfig {
    pub store: StoreSource,
    pub keys: Keys,
    pub http_addrs: Vec<SocketAddr>,
    /// TLS listeners; the certificate comes from the route matching the SNI name.
    pub https_addrs: Vec<SocketAddr>,
    /// Served when no route's certificate matches the SNI name; None fails such handshakes.
    pub default_cert: Option<Arc<CertifiedKey>>,
    /// How often the TLS session ticket keys shared through the store are replaced.
    pub ticket_rotate: Duration,
    /// Accept HTTP/2 with prior knowledge (h2c) on the plain listeners.
    pub h2c: bool,
    /// Plain HTTP/1.1 requests through the router's own loop (`proxy::h1`), the rest to pingora.
    pub h1_fast_path: bool,
    /// CA bundle for backends' certificates (`backend_protocol: h2`); None: the system's roots.
    pub backend_ca: Option<std::path::PathBuf>,
    /// Connections from these networks must start with a PROXY header (v1 or v2).
    pub proxy_protocol_from: Vec<IpNet>,
    /// The key sealing sticky cookies; None: the one shared through the store.
    pub cookie_key: Option<[u8; 32]>,
    pub admin_addr: SocketAddr,
    /// This router's id, registered under `<prefix>/routers/` with its admin address.
    pub router_id: String,
    /// Where TCP route listeners open.
    pub tcp: TcpSettings,
    pub threads: usize,
    /// Idle and request-head deadlines for clients.
    pub client_timeouts: ClientTimeouts,
    /// Client connections open at once, on every listener (TCP routes included).
    pub max_connections: usize,
    pub timeouts: UpstreamTimeouts,
    pub drain_timeout: Duration,
    /// Where every answered request is logged (`--access-log`), if anywhere.
    pub access_log: Option<Arc<AccessLog>>,
    /// Take the listening sockets over from a running router (graceful binary upgrade).
    pub upgrade: bool,
    /// Where the running router hands its sockets over on SIGQUIT.
    pub upgrade_sock: String,
    /// Where the route table is kept on disk between runs (`crate::sync::snapshot`).
    pub snapshot: Option<std::path::PathBuf>,
    /// Whether a start with no table of its own takes a live router's (`crate::sync::peers`).
    pub join_peers: bool,
}

/// A ready-to-run pingora server with the router's services added.
pub fn build(config: RouterConfig) -> Server {
    crate::tls::install_provider();
    let conf = ServerConf {
        threads: config.threads,
        // With `false` (a single-threaded runtime per thread) a pooled backend connection
        // taken by another thread was often not reused (tests/upstream.rs), and one thread
        // measured no faster (benches/README.md).
        work_stealing: true,
        // Idle backend connections kept for reuse, across all backends (pingora's default is
        // 128): an edge router in front of many apps, or HTTP/2 clients with many streams in
        // flight, needs more, or it opens a new backend connection for most requests.
        upstream_keepalive_pool_size: 1024,
        // Trust for `h2` backends' certificates; None: the system's roots.
        ca_file: config
            .backend_ca
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned()),
        // The `Drain` service ends pingora's grace period as soon as nothing is in flight; the
        // period is only the upper bound.
        grace_period_seconds: Some(config.drain_timeout.as_secs() + 1),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: config.upgrade_sock.clone(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: config.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    let in_flight = Arc::new(drain::InFlight::default());
    server.bootstrap();

    let table = Arc::new(ArcSwap::from_pointee(Table::default()));
    let metrics = Arc::new(Metrics::new());

    let sticky = Arc::new(match &config.cookie_key {
        Some(key) => StickyKey::from_bytes(key).expect("a 32-byte key"),
        // Replaced by the store's shared key as soon as the store answers.
        None => StickyKey::random(),
    });
    if let Some(log) = &config.access_log {
        metrics.register(Box::new(log.dropped()));
    }
    let router = Proxy::new(
        table.clone(),
        metrics.clone(),
        config.timeouts,
        sticky.clone(),
        in_flight.clone(),
        config.access_log.clone(),
    );
    let mut proxy = pingora::proxy::http_proxy(&server.configuration, router.clone());
    let mut options = HttpServerOptions::default();
    options.h2c = config.h2c;
    options.keepalive_timeout = Some(config.client_timeouts.keepalive);
    options.h2_idle_timeout = Some(config.client_timeouts.keepalive);
    options.header_timeout = Some(config.client_timeouts.header);
    proxy.server_options = Some(options);
    let limit = Arc::new(ConnectionLimit::new(config.max_connections));
    metrics.watch_connections(limit.clone());
    let resolver = Arc::new(SniResolver::new(
        table.clone(),
        config.default_cert.clone(),
        metrics.clone(),
    ));
    let ticketer = SharedTicketer::new(config.ticket_rotate);
    let listeners = Listeners {
        http: &config.http_addrs,
        https: &config.https_addrs,
        resolver,
        ticketer: ticketer.clone(),
        threads: config.threads,
        handshake_timeout: config.client_timeouts.header,
        limit: limit.clone(),
    };
    let trusted = (!config.proxy_protocol_from.is_empty()).then(|| {
        Trusted::new(
            config.proxy_protocol_from.clone(),
            metrics.proxy_header_refused.clone(),
        )
    });
    let app = FastH1::new(
        proxy,
        router,
        &server.configuration,
        config.h1_fast_path,
        config.client_timeouts,
    );
    server.add_boxed_service(listeners.service(app, trusted));

    let writer = TableWriter::new(config.keys.clone(), table.clone(), metrics.clone())
        .with_snapshot(config.snapshot)
        .with_join_peers(config.join_peers);
    let mut admin = Service::new(
        "flynn-router admin".to_owned(),
        HttpServer::new_app(Admin {
            metrics: metrics.clone(),
            table: table.clone(),
            latest: writer.latest(),
            id: config.router_id.clone(),
        }),
    );
    admin.add_tcp(&config.admin_addr.to_string());
    admin.threads = Some(1);

    let registration = background_service(
        "flynn-router registration",
        Registration {
            store: config.store.clone(),
            keys: config.keys.clone(),
            id: config.router_id.clone(),
            admin: registration::advertised(config.admin_addr),
            metrics: metrics.clone(),
        },
    );
    let tickets = (!config.https_addrs.is_empty()).then(|| {
        background_service(
            "flynn-router tls tickets",
            Keeper {
                store: config.store.clone(),
                keys: config.keys.clone(),
                period: config.ticket_rotate,
                ticketer,
            },
        )
    });
    // With a snapshot file, the drain waits for its last save (work in flight until then).
    let saving = writer.snapshots().is_some().then(|| in_flight.enter());
    let mut tcp_routes = background_service(
        "flynn-router tcp routes",
        TcpRoutes {
            shared: tcp::Shared {
                table,
                metrics: metrics.clone(),
                in_flight: in_flight.clone(),
                limit,
            },
            changes: writer.subscribe(),
            settings: config.tcp,
        },
    );
    // TCP route connections are served on the runtime of this service: as many threads as the
    // HTTP listeners get (pingora gives a background service one).
    tcp_routes.threads = Some(config.threads);
    let drain = background_service(
        "flynn-router drain",
        Drain {
            in_flight,
            timeout: config.drain_timeout,
            grace_end: server.grace_period_end(),
        },
    );
    let sync = background_service(
        "flynn-router store sync",
        StoreSync {
            source: config.store,
            writer: std::sync::Mutex::new(Some(writer)),
            saving: std::sync::Mutex::new(saving),
            sticky: config.cookie_key.is_none().then_some(sticky),
            metrics,
        },
    );

    server.add_service(admin);
    server.add_service(sync);
    server.add_service(registration);
    server.add_service(tcp_routes);
    server.add_service(drain);
    if let Some(tickets) = tickets {
        server.add_service(tickets);
    }
    server
}

/// The read buffer under each TLS client connection.
const TLS_READ_BUFFER: usize = 16 * 1024;

/// The client-facing listeners of the HTTP app.
struct Listeners<'a> {
    http: &'a [SocketAddr],
    https: &'a [SocketAddr],
    resolver: Arc<SniResolver>,
    ticketer: Arc<SharedTicketer>,
    threads: usize,
    /// How long a connection's PROXY header and TLS handshake may take.
    handshake_timeout: Duration,
    limit: Arc<ConnectionLimit>,
}

impl Listeners<'_> {
    /// The service of `app`, behind the PROXY header check when `proxy_header` is set.
    fn service<A: ServerApp + Send + Sync + 'static>(
        &self,
        app: A,
        proxy_header: Option<Trusted>,
    ) -> Box<dyn pingora::services::ServiceWithDependents> {
        match proxy_header {
            None => Box::new(self.service_of(app, None)),
            Some(trusted) => {
                let app = WithProxyHeader {
                    inner: Arc::new(app),
                    trusted: trusted.clone(),
                };
                Box::new(self.service_of(app, Some(trusted)))
            }
        }
    }

    fn service_of<A: ServerApp + Send + Sync + 'static>(
        &self,
        app: A,
        proxy_header: Option<Trusted>,
    ) -> Service<A> {
        let mut service = Service::new("flynn-router http".to_owned(), app);
        for addr in self.http {
            // Reads straight into the HTTP layer's own buffer: pingora's default puts a 64 KiB
            // read buffer under every client connection (most of an idle connection's memory)
            // and copies out of it. Writes go straight out too: the fast path writes each
            // message whole, and gives pingora's HTTP/1 session its buffer back when it hands a
            // connection over (`proxy::h1`'s `with_write_buffer`).
            service.endpoints().add_listener(
                ListenerConfig::tcp(addr.to_string()).l4_buffer(L4BufferSettings::unbuffered()),
            );
        }
        for addr in self.https {
            // One TLS record (16 KiB) of read buffer, not pingora's 64 KiB: rustls reads at
            // most 4 KiB at a time, and the buffer makes that one read of up to a record from
            // the socket. It is allocated per read and freed once drained (vendor patch 0011),
            // so an idle connection holds none of it. No write buffer: rustls queues the
            // records it makes and writes them in one vectored write, so pingora's 1460 bytes
            // under it would be a copy of every small response, held for the connection's life.
            service.endpoints().add_listener(
                ListenerConfig::tcp(addr.to_string())
                    .tls(tls_settings(self.resolver.clone(), self.ticketer.clone()))
                    .l4_buffer(L4BufferSettings::new(TLS_READ_BUFFER, 0)),
            );
        }
        if let Some(trusted) = proxy_header {
            service.endpoints().set_pre_tls_callback(Arc::new(trusted));
        }
        service.threads = Some(self.threads);
        service.handshake_timeout = self.handshake_timeout;
        service.connection_limit = Some(self.limit.clone());
        service
    }
}

/// TLS 1.2 and 1.3, HTTP/2 or HTTP/1.1 by ALPN, the certificate chosen per handshake, session
/// tickets sealed with the keys shared through the store.
fn tls_settings(resolver: Arc<SniResolver>, ticketer: Arc<SharedTicketer>) -> TlsSettings {
    // No files: the resolver supplies every certificate.
    let mut settings =
        TlsSettings::intermediate("", "").expect("TLS settings without files cannot fail");
    settings.set_cert_resolver(resolver);
    settings.enable_h2();
    settings.set_config_hook(Box::new(move |config| config.ticketer = ticketer));
    settings
}

struct TcpRoutes {
    shared: tcp::Shared,
    changes: tokio::sync::watch::Receiver<u64>,
    settings: TcpSettings,
}

#[async_trait]
impl BackgroundService for TcpRoutes {
    async fn start(&self, shutdown: ShutdownWatch) {
        tcp::run(
            self.shared.clone(),
            self.changes.clone(),
            self.settings.clone(),
            shutdown,
        )
        .await;
    }
}

struct StoreSync {
    source: StoreSource,
    /// Taken once by `start`.
    writer: std::sync::Mutex<Option<TableWriter>>,
    /// Dropped once the table is saved at shutdown.
    saving: std::sync::Mutex<Option<drain::Guard>>,
    /// Set when the sticky-cookie key is to come from the store.
    sticky: Option<Arc<StickyKey>>,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl BackgroundService for StoreSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let writer = match self.writer.lock() {
            Ok(mut slot) => slot.take(),
            Err(_) => None,
        };
        let Some(mut writer) = writer else {
            return;
        };
        let snapshots = writer.snapshots();
        let work = async {
            // Serves the table saved on disk, if any, while the store opens.
            let store = sync::open(&self.source, &mut writer).await;
            if let Some(sticky) = &self.sticky {
                let (store, keys, sticky) = (store.clone(), writer.keys().clone(), sticky.clone());
                tokio::spawn(async move {
                    let key = sync::shared_cookie_key(store.as_ref(), &keys).await;
                    if sticky.replace(&key).is_ok() {
                        tracing::info!(
                            "sticky cookies sealed with the key shared through the store"
                        );
                    }
                });
            }
            sync::run(store, writer, self.metrics.clone()).await;
        };
        tokio::select! {
            _ = work => {}
            _ = shutdown.changed() => {}
        }
        if let Some(snapshots) = snapshots {
            snapshots.save_at_exit().await;
        }
        let saved = self.saving.lock().ok().and_then(|mut guard| guard.take());
        drop(saved);
    }
}
