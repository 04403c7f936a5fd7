//! The router's flags, each also a `FLYNN_…` environment variable: [`RouterArgs`] holds the
//! data-plane ones that `flynn-router` and `flynn server` share; [`Args`] adds the router
//! binary's store and log flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use flynn_store::Keys;

use crate::access_log::AccessLog;
use crate::proxy::{ClientTimeouts, UpstreamTimeouts};
use crate::server::{RouterConfig, StoreSource};
use crate::tcp::TcpSettings;
use crate::tls;

/// Flynn's edge router: serves HTTP for the routes and service instances in the store, applying
/// every change within milliseconds, with no reload.
#[derive(Parser, Debug, Clone)]
#[command(name = "flynn-router", version)]
pub struct Args {
    /// Where routes and instances live: etcd://host:port[,host:port...]
    #[arg(long, env = "FLYNN_STORE", default_value = "etcd://127.0.0.1:2379")]
    pub store: String,

    /// Key prefix of everything Flynn keeps in the store.
    #[arg(long, env = "FLYNN_STORE_PREFIX", default_value = flynn_store::schema::DEFAULT_PREFIX)]
    pub store_prefix: String,

    /// Log filter (tracing's env-filter syntax), e.g. `info` or `flynn_router=debug`.
    #[arg(long, env = "FLYNN_LOG", default_value = "info")]
    pub log: String,

    #[command(flatten)]
    pub router: RouterArgs,
}

impl Args {
    /// Checks what clap cannot: the store URL's scheme, and the data-plane flags.
    pub fn validate(&self) -> anyhow::Result<()> {
        let Some(hosts) = self.store.strip_prefix("etcd://") else {
            anyhow::bail!(
                "--store {:?}: the router reads etcd (etcd://host:port[,host:port...]); \
                 the embedded store runs inside `flynn server`",
                self.store
            );
        };
        if hosts.split(',').all(|h| h.trim().is_empty()) {
            anyhow::bail!("--store {:?} names no etcd host", self.store);
        }
        self.router.validate()
    }
}

/// The data plane's flags: listeners, TLS, TCP routes, PROXY protocol, timeouts, drain.
#[derive(clap::Args, Debug, Clone)]
pub struct RouterArgs {
    /// Address to serve plain HTTP on; repeat the flag (or separate with commas) for several.
    #[arg(
        long = "http-addr",
        env = "FLYNN_HTTP_ADDR",
        value_delimiter = ',',
        default_value = "0.0.0.0:8080"
    )]
    pub http_addrs: Vec<SocketAddr>,

    /// Address to serve HTTPS on (HTTP/2 and HTTP/1.1 by ALPN); repeatable. The certificate is
    /// the one of the route matching the SNI name, else the default one.
    #[arg(
        long = "https-addr",
        env = "FLYNN_HTTPS_ADDR",
        value_delimiter = ',',
        default_value = "0.0.0.0:8443"
    )]
    pub https_addrs: Vec<SocketAddr>,

    /// No HTTPS listener at all.
    #[arg(long = "no-https", env = "FLYNN_NO_HTTPS")]
    pub no_https: bool,

    /// Certificate chain (PEM) served when no route's certificate matches the SNI name.
    /// Without it (and --default-key) a self-signed one for localhost is generated at start.
    #[arg(long, env = "FLYNN_DEFAULT_CERT", requires = "default_key")]
    pub default_cert: Option<PathBuf>,

    /// Private key (PEM) of --default-cert.
    #[arg(long, env = "FLYNN_DEFAULT_KEY", requires = "default_cert")]
    pub default_key: Option<PathBuf>,

    /// Serve no default certificate: a handshake for a name without a route certificate fails.
    #[arg(long, env = "FLYNN_NO_DEFAULT_CERT", conflicts_with = "default_cert")]
    pub no_default_cert: bool,

    /// How often the TLS session ticket keys, shared by every router through the store, are
    /// replaced; a ticket resumes for one to two periods (the previous key still opens).
    #[arg(long, env = "FLYNN_TLS_TICKET_ROTATE", default_value = "12h", value_parser = parse_whole_seconds)]
    pub tls_ticket_rotate: Duration,

    /// CA certificates (PEM) that backends' certificates must be signed by, for routes with
    /// `backend_protocol: h2` (HTTP/2 over TLS). Default: the system's trusted roots.
    #[arg(long, env = "FLYNN_BACKEND_CA")]
    pub backend_ca: Option<PathBuf>,

    /// Accept HTTP/2 with prior knowledge (h2c) on the plain HTTP listeners.
    #[arg(long, env = "FLYNN_H2C")]
    pub h2c: bool,

    /// Proxy plain HTTP/1.1 requests and plain HTTP/2 streams (no body, or a Content-Length one
    /// up to 64 KiB, to HTTP/1 backends) with the router's own request path (for HTTP/1.1, 1.7
    /// times as many per second as pingora's proxy, at 0.6 of its CPU per request, in
    /// benches/load.sh); anything else (upgrades, CONNECT, chunked or larger uploads, HTTP/2
    /// backends, HTTP/1.0) goes to pingora's proxy either way. `false` sends everything there.
    #[arg(long, env = "FLYNN_H1_FAST_PATH", default_value_t = true, action = clap::ArgAction::Set)]
    pub h1_fast_path: bool,

    /// Connections to the HTTP and HTTPS listeners from this network (CIDR, repeatable) must
    /// start with a PROXY protocol header (v1 or v2), whose client address is then used.
    #[arg(
        long = "proxy-protocol-from",
        env = "FLYNN_PROXY_PROTOCOL_FROM",
        value_delimiter = ',',
        value_parser = parse_network
    )]
    pub proxy_protocol_from: Vec<ipnet::IpNet>,

    /// Key sealing sticky-session cookies: 32 bytes as 64 hex digits or URL-safe base64.
    /// Without it, every router shares one kept in the store (created on first use).
    #[arg(long, env = "FLYNN_COOKIE_KEY", value_parser = parse_cookie_key, hide_env_values = true)]
    pub cookie_key: Option<[u8; 32]>,

    /// Address the listeners of TCP routes open on.
    #[arg(long, env = "FLYNN_TCP_IP", default_value = "0.0.0.0")]
    pub tcp_ip: std::net::IpAddr,

    /// Ports TCP routes may use, as FIRST-LAST.
    #[arg(long, env = "FLYNN_TCP_PORTS", default_value = "3000-3500", value_parser = parse_port_range)]
    pub tcp_ports: std::ops::RangeInclusive<u16>,

    /// Address of the admin listener (/metrics, /health, /backends). Keep it on loopback.
    #[arg(long, env = "FLYNN_ADMIN_ADDR", default_value = "127.0.0.1:8082")]
    pub admin_addr: SocketAddr,

    /// This router's id, registered (with the admin address) under <prefix>/routers/ so that
    /// deploys can ask it what it serves [default: router-<random>, new at every start]
    #[arg(long = "router-id", env = "FLYNN_ROUTER_ID")]
    pub router_id: Option<String>,

    /// Worker threads for the proxy (default: one per CPU).
    #[arg(long, env = "FLYNN_THREADS")]
    pub threads: Option<usize>,

    /// How long one connection attempt to a backend may take before another is tried.
    #[arg(long, env = "FLYNN_CONNECT_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// How long a backend may stay silent while answering before the client gets a 504.
    #[arg(long, env = "FLYNN_UPSTREAM_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,

    /// How long a client connection may wait idle for its next request (HTTP/1.1 keep-alive,
    /// or an HTTP/2 connection with no stream open) before the router closes it; also how long
    /// a request body may pause between reads. nginx: `keepalive_timeout` 75 s.
    #[arg(long, env = "FLYNN_KEEPALIVE_TIMEOUT", default_value = "60s", value_parser = parse_whole_seconds)]
    pub keepalive_timeout: Duration,

    /// How long a client may take to send a whole request head (from its first byte; from the
    /// connection's start for the first request), its TLS handshake, its PROXY header or its
    /// HTTP/2 preface; a slower one gets 408 and is closed (slowloris). nginx:
    /// `client_header_timeout`, HAProxy: `timeout http-request`.
    #[arg(long, env = "FLYNN_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,

    /// Client connections open at once, across the HTTP, HTTPS and TCP route listeners. At the
    /// limit the router stops accepting (new connections wait in the kernel's queue) until one
    /// closes, so that it never runs out of file descriptors. Default: half the descriptor
    /// limit, which the router raises to its hard maximum at start (the other half is for
    /// backend connections).
    #[arg(long, env = "FLYNN_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Log every answered request as a line of JSON (time, client, method, host, uri, scheme,
    /// proto, status, upstream: the instance it went to, duration_ms) to this file (appended;
    /// rotate with logrotate's `copytruncate`), or to standard output with `-`. Lines are
    /// written by a thread of their own: a request never waits on the log, and lines that find
    /// its queue (64k) full are dropped and counted in flynn_router_access_log_dropped_total.
    /// Default: no access log
    #[arg(long, env = "FLYNN_ACCESS_LOG", value_name = "FILE|-")]
    pub access_log: Option<String>,

    /// On SIGTERM, how long in-flight requests may take to finish before the process exits.
    #[arg(long, env = "FLYNN_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Start by taking the listening sockets over from the running router (graceful binary
    /// upgrade): start the new binary with this flag, then send SIGQUIT to the old one.
    #[arg(long, env = "FLYNN_UPGRADE")]
    pub upgrade: bool,

    /// File to keep a snapshot of the route table in (routes and instances with the store's id
    /// and revision; no certificates, no keys): a restarting router serves it at once and
    /// watches the store from where it was instead of listing every route again (it lists when
    /// the store was replaced or compacted past it). Written atomically (mode 0600) at most every
    /// 10 s after changes, and at shutdown. [default: none; `flynn server`: <data>/router.snapshot]
    #[arg(long, env = "FLYNN_SNAPSHOT")]
    pub snapshot: Option<PathBuf>,

    /// With no table of its own at start (no --snapshot file, or one it cannot use), take the
    /// table of a live router (registered under <prefix>/routers/, fetched from its admin
    /// listener's /snapshot) instead of listing every route from the store; it is checked
    /// against the store's id and revision, and the changes since are watched. false: always
    /// list the store
    #[arg(long, env = "FLYNN_JOIN_PEERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub join_peers: bool,

    /// Unix socket through which a running router hands its listeners to its successor
    /// [default: /tmp/flynn-router-upgrade.sock; `flynn server`: <data>/upgrade.sock]
    #[arg(long, env = "FLYNN_UPGRADE_SOCK")]
    pub upgrade_sock: Option<String>,
}

impl RouterArgs {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.http_addrs.is_empty() {
            anyhow::bail!("at least one --http-addr is needed");
        }
        if self.threads == Some(0) {
            anyhow::bail!("--threads must be at least 1");
        }
        if self.max_connections == Some(0) {
            anyhow::bail!("--max-connections must be at least 1");
        }
        if self.header_timeout.is_zero() {
            anyhow::bail!("--header-timeout must be more than 0");
        }
        Ok(())
    }

    /// The HTTPS listeners (none with `--no-https`).
    pub fn https(&self) -> &[SocketAddr] {
        if self.no_https {
            &[]
        } else {
            &self.https_addrs
        }
    }

    /// Every address the router listens on itself.
    pub fn own_addrs(&self) -> impl Iterator<Item = &SocketAddr> {
        self.http_addrs
            .iter()
            .chain(self.https())
            .chain([&self.admin_addr])
    }

    /// Fails clearly when a listener address is taken: pingora retries a busy address for a
    /// while and then panics in a service thread while the process lives on. (When upgrading,
    /// the running router holds the addresses and hands them over.)
    pub fn check_free(&self) -> anyhow::Result<()> {
        if self.upgrade {
            return Ok(());
        }
        for addr in self.own_addrs() {
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr}"))?;
        }
        Ok(())
    }

    /// The router's configuration. `reserved` adds ports that TCP routes may not take (besides
    /// the router's own); `upgrade_sock` is the default socket for graceful upgrades.
    pub fn into_config(
        self,
        store: StoreSource,
        keys: Keys,
        reserved: &[u16],
        upgrade_sock: &str,
    ) -> anyhow::Result<RouterConfig> {
        let https_addrs = self.https().to_vec();
        let reserved = self
            .own_addrs()
            .map(|a| a.port())
            .chain(reserved.iter().copied())
            .collect();
        let default_cert = match (&self.default_cert, &self.default_key) {
            _ if self.no_default_cert => None,
            (Some(cert), Some(key)) => Some(
                tls::load_default(cert, key).context("cannot use --default-cert/--default-key")?,
            ),
            _ if https_addrs.is_empty() => None,
            _ => {
                let (certified, _, _) = tls::self_signed()?;
                tracing::warn!(
                    "no --default-cert given: serving a generated self-signed certificate for \
                     localhost to TLS clients whose server name has no route certificate"
                );
                Some(certified)
            }
        };
        if let Some(ca) = &self.backend_ca {
            tls::check_ca_bundle(ca)
                .map_err(|e| anyhow::anyhow!("--backend-ca {}: {e}", ca.display()))?;
        }
        let threads = self
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        // Raised whether or not --max-connections is given: an explicit limit above the soft
        // one would otherwise run into EMFILE after all.
        let open_files = crate::limits::raise_file_limit();
        let max_connections = self
            .max_connections
            .unwrap_or_else(|| (open_files / 2).max(16) as usize);
        if max_connections as u64 >= open_files {
            tracing::warn!(
                max_connections,
                open_files,
                "--max-connections is not below the open-file limit: the router may run out of \
                 descriptors before it stops accepting"
            );
        }
        Ok(RouterConfig {
            store,
            keys,
            http_addrs: self.http_addrs,
            https_addrs,
            default_cert,
            ticket_rotate: self.tls_ticket_rotate,
            h2c: self.h2c,
            h1_fast_path: self.h1_fast_path,
            backend_ca: self.backend_ca,
            proxy_protocol_from: self.proxy_protocol_from,
            cookie_key: self.cookie_key,
            admin_addr: self.admin_addr,
            router_id: self
                .router_id
                .filter(|id| !id.trim().is_empty())
                .unwrap_or_else(crate::registration::new_id),
            tcp: TcpSettings {
                ip: self.tcp_ip,
                ports: self.tcp_ports,
                reserved,
                connect_timeout: self.connect_timeout,
            },
            threads,
            client_timeouts: ClientTimeouts {
                keepalive: self.keepalive_timeout,
                header: self.header_timeout,
            },
            max_connections,
            timeouts: UpstreamTimeouts {
                connect: self.connect_timeout,
                read: self.upstream_timeout,
                ..UpstreamTimeouts::default()
            },
            drain_timeout: self.drain_timeout,
            access_log: match self.access_log.filter(|dest| !dest.is_empty()) {
                Some(dest) => {
                    Some(Arc::new(AccessLog::open(&dest).with_context(|| {
                        format!("--access-log: cannot open {dest}")
                    })?))
                }
                None => None,
            },
            upgrade: self.upgrade,
            upgrade_sock: self.upgrade_sock.unwrap_or_else(|| upgrade_sock.to_owned()),
            snapshot: self.snapshot,
            join_peers: self.join_peers,
        })
    }
}

/// Logs through `tracing` to stderr, filtered by `filter` (env-filter syntax, e.g. `info` or
/// `flynn_router=debug`), in colour on a terminal. For every Flynn binary.
pub fn init_logging(filter: &str) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(filter)?)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

/// A duration in whole seconds, at least one (HTTP/1 keep-alive timeouts are kept in seconds).
fn parse_whole_seconds(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.as_secs() == 0 || d.subsec_nanos() != 0 {
        return Err(format!("{s:?}: give whole seconds, at least 1s"));
    }
    Ok(d)
}

/// `3000-3500` → 3000..=3500.
pub fn parse_port_range(s: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
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

/// `10.0.0.0/8`, or a bare address for just that host.
fn parse_network(s: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Ok(net);
    }
    s.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("{s:?} is not an address or a network like 10.0.0.0/8"))
}

fn parse_cookie_key(s: &str) -> Result<[u8; 32], String> {
    crate::proxy::sticky::parse_key(s).map_err(|e| e.to_string())
}
