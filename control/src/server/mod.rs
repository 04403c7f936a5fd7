//! `flynn server`: the all-in-one node. The router (pingora, on the main thread) and the
//! controller API (axum, on its own runtime thread) share one store: the embedded one under
//! the data directory by default, or etcd with `--store etcd://…`.
//!
//! On first start it generates the controller key (`<data>/controller.key`) and writes the
//! client config (`~/.flynnrc`, cluster `default`) so that `flynn create` works at once.

mod setup;

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use flynn_router::proxy::UpstreamTimeouts;
use flynn_router::server::{RouterConfig, StoreSource};
use flynn_router::tcp::TcpSettings;
use flynn_store::{Keys, Store};

use crate::api::{self, ApiConfig};

/// Run the router and the controller on one node. Every flag is also a FLYNN_… variable.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where the state lives: `embedded` (a file in the data directory),
    /// etcd://host:port[,host:port...], file:///path/store.redb, or memory:
    #[arg(long, env = "FLYNN_STORE", default_value = "embedded")]
    pub store: String,

    /// Key prefix of everything Flynn keeps in the store.
    #[arg(long, env = "FLYNN_STORE_PREFIX", default_value = flynn_store::schema::DEFAULT_PREFIX)]
    pub store_prefix: String,

    /// Data directory (embedded store, controller key) [default: $XDG_DATA_HOME/flynn, else
    /// ~/.local/share/flynn]
    #[arg(long = "data", env = "FLYNN_DATA")]
    pub data: Option<PathBuf>,

    /// Plain HTTP listeners (repeat, or separate with commas).
    #[arg(
        long = "http-addr",
        env = "FLYNN_HTTP_ADDR",
        value_delimiter = ',',
        default_value = "0.0.0.0:8080"
    )]
    pub http_addrs: Vec<SocketAddr>,

    /// HTTPS listeners; certificates come from the routes, by SNI.
    #[arg(
        long = "https-addr",
        env = "FLYNN_HTTPS_ADDR",
        value_delimiter = ',',
        default_value = "0.0.0.0:8443"
    )]
    pub https_addrs: Vec<SocketAddr>,

    /// No HTTPS listener.
    #[arg(long = "no-https", env = "FLYNN_NO_HTTPS")]
    pub no_https: bool,

    /// PEM certificate for TLS clients whose name has no route certificate
    /// [default: a generated self-signed one for localhost]
    #[arg(long, env = "FLYNN_DEFAULT_CERT", requires = "default_key")]
    pub default_cert: Option<PathBuf>,

    /// The private key of --default-cert.
    #[arg(long, env = "FLYNN_DEFAULT_KEY", requires = "default_cert")]
    pub default_key: Option<PathBuf>,

    /// Ports TCP routes may use (and get allocated from).
    #[arg(long = "tcp-ports", env = "FLYNN_TCP_PORTS", default_value = "3000-3500", value_parser = parse_port_range)]
    pub tcp_ports: RangeInclusive<u16>,

    /// The address TCP route listeners open on.
    #[arg(long = "tcp-ip", env = "FLYNN_TCP_IP", default_value = "0.0.0.0")]
    pub tcp_ip: IpAddr,

    /// The controller API's listener.
    #[arg(
        long = "controller-addr",
        env = "FLYNN_CONTROLLER_ADDR",
        default_value = "127.0.0.1:8081"
    )]
    pub controller_addr: SocketAddr,

    /// The router's admin listener (/metrics, /health).
    #[arg(
        long = "admin-addr",
        env = "FLYNN_ADMIN_ADDR",
        default_value = "127.0.0.1:8082"
    )]
    pub admin_addr: SocketAddr,

    /// New apps get the route <app>.<domain> ("" for none).
    #[arg(
        long = "default-domain",
        env = "FLYNN_DEFAULT_DOMAIN",
        default_value = "localhost"
    )]
    pub default_domain: String,

    /// The controller key [default: <data>/controller.key, generated on first start]
    #[arg(
        long = "controller-key",
        env = "FLYNN_CONTROLLER_KEY",
        hide_env_values = true
    )]
    pub controller_key: Option<String>,

    /// Name of this cluster in the client config.
    #[arg(
        long = "cluster-name",
        env = "FLYNN_CLUSTER_NAME",
        default_value = "default"
    )]
    pub cluster_name: String,

    /// Do not write the client config (~/.flynnrc).
    #[arg(long = "no-client-config", env = "FLYNN_NO_CLIENT_CONFIG")]
    pub no_client_config: bool,

    /// Worker threads for the proxy [default: one per CPU]
    #[arg(long, env = "FLYNN_THREADS")]
    pub threads: Option<usize>,

    /// How long one connection attempt to a backend may take.
    #[arg(long, env = "FLYNN_CONNECT_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// How long a backend may stay silent while answering before the client gets a 504.
    #[arg(long, env = "FLYNN_UPSTREAM_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,

    /// On SIGTERM, how long in-flight requests may take to finish.
    #[arg(long, env = "FLYNN_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Log filter (tracing's env-filter syntax).
    #[arg(long, env = "FLYNN_LOG", default_value = "info")]
    pub log: String,
}

/// `3000-3500` → 3000..=3500.
fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (first, last) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not FIRST-LAST"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| format!("{p:?} is not a port"))
    };
    let (first, last) = (port(first)?, port(last)?);
    if first == 0 || first > last {
        return Err(format!(
            "{s:?}: the first port must be 1 or more and not above the last"
        ));
    }
    Ok(first..=last)
}

/// Runs until SIGTERM or SIGINT (pingora's graceful shutdown); returns only on a start-up error.
pub fn run(mut args: Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log)?)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))?;
    if args.http_addrs.is_empty() {
        anyhow::bail!("at least one --http-addr is needed");
    }
    if args.threads == Some(0) {
        anyhow::bail!("--threads must be at least 1");
    }
    if args.no_https {
        args.https_addrs.clear();
    }
    let data = setup::data_dir(args.data.as_deref())?;
    let store_url = setup::store_url(&args.store, &data);
    let key = match &args.controller_key {
        Some(key) if !key.trim().is_empty() => key.trim().to_owned(),
        _ => setup::controller_key(&data)?,
    };
    // pingora retries a busy address and then panics in a service thread; fail clearly first.
    for addr in args
        .http_addrs
        .iter()
        .chain(&args.https_addrs)
        .chain([&args.admin_addr])
    {
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    }
    let controller_listener =
        std::net::TcpListener::bind(args.controller_addr).with_context(|| {
            format!(
                "cannot listen on {} (--controller-addr)",
                args.controller_addr
            )
        })?;
    controller_listener.set_nonblocking(true)?;

    // The controller's runtime also hosts the embedded store's lease reaper: it runs for
    // the life of the process, on its own thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("flynn-controller")
        .enable_all()
        .build()
        .context("cannot start the controller's runtime")?;
    let store: Arc<dyn Store> = runtime
        .block_on(flynn_store::open(&store_url))
        .with_context(|| format!("cannot open the store {store_url}"))?;
    let keys = Keys::new(&args.store_prefix);

    let reserved: Vec<u16> = args
        .http_addrs
        .iter()
        .chain(&args.https_addrs)
        .chain([&args.admin_addr, &args.controller_addr])
        .map(|a| a.port())
        .collect();
    let mut config = ApiConfig::new(key.clone());
    config.keys = keys.clone();
    config.tcp_ports = args.tcp_ports.clone();
    config.reserved_ports = reserved.iter().copied().collect();
    config.default_domain = Some(args.default_domain.trim().to_owned()).filter(|d| !d.is_empty());
    let app = api::app(store.clone(), config);
    let listener = {
        let _guard = runtime.enter();
        tokio::net::TcpListener::from_std(controller_listener)?
    };
    let controller_url = setup::controller_url(args.controller_addr);
    std::thread::Builder::new()
        .name("flynn-controller".to_owned())
        .spawn(move || {
            let served = runtime.block_on(async move { axum::serve(listener, app).await });
            if let Err(e) = served {
                tracing::error!(error = %e, "the controller API stopped");
            }
        })
        .context("cannot start the controller thread")?;
    tracing::info!(url = %controller_url, store = %store_url, data = %data.display(), "controller API up");

    if !args.no_client_config {
        let router_url = args
            .http_addrs
            .first()
            .map(|a| format!("http://localhost:{}", a.port()));
        setup::write_client_config(&args.cluster_name, &controller_url, &key, router_url)?;
    }

    let default_cert = setup::default_cert(&args)?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tracing::info!(http = ?args.http_addrs, https = ?args.https_addrs, admin = %args.admin_addr,
        tcp = ?args.tcp_ports, "starting the router");
    let server = flynn_router::server::build(RouterConfig {
        store: StoreSource::Shared(store),
        keys,
        http_addrs: args.http_addrs,
        https_addrs: args.https_addrs,
        default_cert,
        h2c: false,
        proxy_protocol_from: Vec::new(),
        cookie_key: None,
        admin_addr: args.admin_addr,
        tcp: TcpSettings {
            ip: args.tcp_ip,
            ports: args.tcp_ports,
            reserved,
            connect_timeout: args.connect_timeout,
        },
        threads,
        timeouts: UpstreamTimeouts {
            connect: args.connect_timeout,
            read: args.upstream_timeout,
            ..UpstreamTimeouts::default()
        },
        drain_timeout: args.drain_timeout,
        upgrade: false,
        upgrade_sock: data.join("upgrade.sock").display().to_string(),
    });
    server.run_forever()
}
