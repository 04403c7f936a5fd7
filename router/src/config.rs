//! `flynn-router` flags; each is also a `FLYNN_…` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

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

    /// Accept HTTP/2 with prior knowledge (h2c) on the plain HTTP listeners.
    #[arg(long, env = "FLYNN_H2C")]
    pub h2c: bool,

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

    /// Address of the admin listener (/metrics, /health). Keep it on loopback.
    #[arg(long, env = "FLYNN_ADMIN_ADDR", default_value = "127.0.0.1:8082")]
    pub admin_addr: SocketAddr,

    /// Worker threads for the proxy (default: one per CPU).
    #[arg(long, env = "FLYNN_THREADS")]
    pub threads: Option<usize>,

    /// How long one connection attempt to a backend may take before another is tried.
    #[arg(long, env = "FLYNN_CONNECT_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// How long a backend may stay silent while answering before the client gets a 504.
    #[arg(long, env = "FLYNN_UPSTREAM_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,

    /// On SIGTERM, how long in-flight requests may take to finish before the process exits.
    #[arg(long, env = "FLYNN_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Start by taking the listening sockets over from the running router (graceful binary
    /// upgrade): start the new binary with this flag, then send SIGQUIT to the old one.
    #[arg(long, env = "FLYNN_UPGRADE")]
    pub upgrade: bool,

    /// Unix socket through which a running router hands its listeners to its successor.
    #[arg(
        long,
        env = "FLYNN_UPGRADE_SOCK",
        default_value = "/tmp/flynn-router-upgrade.sock"
    )]
    pub upgrade_sock: String,

    /// Log filter (tracing's env-filter syntax), e.g. `info` or `flynn_router=debug`.
    #[arg(long, env = "FLYNN_LOG", default_value = "info")]
    pub log: String,
}

impl Args {
    /// Checks what clap cannot: the store URL's scheme and the listeners.
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
        if self.http_addrs.is_empty() {
            anyhow::bail!("at least one --http-addr is needed");
        }
        if self.threads == Some(0) {
            anyhow::bail!("--threads must be at least 1");
        }
        Ok(())
    }
}

/// `3000-3500` → 3000..=3500.
fn parse_port_range(s: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
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
