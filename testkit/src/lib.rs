//! Helpers for integration tests: real processes on free ports, never mocks.
//!
//! - [`Etcd`]: a real `etcd` server (Debian's `etcd-server`) in a temporary data dir.
//! - [`EtcdCluster`]: several of them forming one cluster, members SIGKILLed one by one.
//! - [`backend`]: a real HTTP/1.1 backend that echoes what it received.
//! - [`client`]: a raw HTTP/1.1 client that sends exactly the bytes a test gives it.
//! - [`tls`]: self-signed test certificates, and an h2 TLS server configuration for backends.
//! - [`process`]: a process with its own log, SIGKILLed when dropped.
//! - [`wrk`]: wrk through a router, and its report.
//! - [`docker`]: the Docker Engine: static binaries alone in images, a host agent's containers.

pub mod backend;
pub mod client;
pub mod docker;
mod etcd;
mod etcd_cluster;
pub mod process;
pub mod tls;
pub mod wrk;

pub use etcd::Etcd;
pub use etcd_cluster::EtcdCluster;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// A TCP port that was free a moment ago on 127.0.0.1, and that this process has not handed out
/// before. Tests of one binary run side by side: without the second rule two of them can get the
/// same port, and two routers listening on it with SO_REUSEPORT (as the router's TCP routes do,
/// for graceful upgrades) would share its connections.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port on 127.0.0.1");
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// 16 hex digits that differ from call to call and from process to process (the clock, the pid
/// and a counter), for names in shared places: image tags, container labels.
pub fn unique() -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = (nanos & 0xffff_ffff_ffff) ^ (u64::from(std::process::id()) << 24);
    format!("{:012x}{:04x}", mixed & 0xffff_ffff_ffff, count & 0xffff)
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_for_port(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("nothing listens on {addr} after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` until it returns true, or fails after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
