//! TCP routes: a listener for each route's port, every connection spliced to an instance of the
//! route's service (the less busy of two, or the leader), with the PROXY header first when the
//! route asks for it. Listeners open and close as routes come and go; instance changes apply to
//! new connections. The bytes move with splice(2) through pipes lent per direction while they
//! move ([`pipe`], [`relay`]), copied only where splice cannot be used.

mod pipe;
mod relay;
#[cfg(test)]
mod tests;

pub use pipe::{Pipes, PIPE_SIZE};
pub use relay::{relay, Mode, Moved};

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use flynn_store::types::{ProxyProtocol, TcpRoute};
use pingora::services::listening::ConnectionLimit;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend::{Attempts, InFlight};
use crate::drain;
use crate::metrics::Metrics;
use crate::proxy_protocol;
use crate::table::Table;

/// Where TCP route listeners may open.
#[derive(Clone, Debug)]
pub struct TcpSettings {
    /// The address every TCP route listens on.
    pub ip: IpAddr,
    /// Ports a route may use.
    pub ports: RangeInclusive<u16>,
    /// Ports taken by the router's own listeners (HTTP, HTTPS, admin): refused for routes.
    pub reserved: Vec<u16>,
    /// How long one connect to an instance may take before another is tried.
    pub connect_timeout: Duration,
}

/// What every TCP route listener shares with the rest of the router.
#[derive(Clone)]
pub struct Shared {
    pub table: Arc<ArcSwap<Table>>,
    pub metrics: Arc<Metrics>,
    pub in_flight: Arc<drain::InFlight>,
    /// Client connections open at once, with the HTTP listeners'.
    pub limit: Arc<ConnectionLimit>,
}

/// One open listener: the route it serves and its accept loop.
struct Open {
    route_id: String,
    accept: JoinHandle<()>,
}

impl Drop for Open {
    fn drop(&mut self) {
        // Closing the listener; connections already spliced carry on.
        self.accept.abort();
    }
}

/// Keeps the open listeners equal to the TCP routes of the table until `stop` fires.
pub async fn run(
    shared: Shared,
    mut changes: watch::Receiver<u64>,
    settings: TcpSettings,
    mut stop: watch::Receiver<bool>,
) {
    let mut open: HashMap<u16, Open> = HashMap::new();
    let mut refused: HashSet<String> = HashSet::new();
    let pipes = Arc::new(Pipes::default());
    loop {
        reconcile(&shared, &settings, &pipes, &mut open, &mut refused);
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
            // Retry ports that failed to bind (taken by another process) now and then.
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

fn reconcile(
    shared: &Shared,
    settings: &TcpSettings,
    pipes: &Arc<Pipes>,
    open: &mut HashMap<u16, Open>,
    refused: &mut HashSet<String>,
) {
    let metrics = &shared.metrics;
    let snapshot = shared.table.load();
    // The wanted port → route; a port claimed twice goes to the lowest id.
    let mut wanted: HashMap<u16, &TcpRoute> = HashMap::new();
    for route in snapshot.tcp_routes() {
        if let Err(why) = check_port(route.port, settings) {
            if refused.insert(route.id.clone()) {
                metrics.store_invalid_entries.inc();
                tracing::warn!(route = %route.id, port = route.port, why, "TCP route refused");
            }
            continue;
        }
        let slot = wanted.entry(route.port).or_insert(route);
        if route.id < slot.id {
            *slot = route;
        }
    }
    open.retain(|port, o| wanted.get(port).is_some_and(|r| r.id == o.route_id));
    for (port, route) in wanted {
        if open.contains_key(&port) {
            continue;
        }
        let addr = SocketAddr::new(settings.ip, port);
        match bind(addr) {
            Ok(listener) => {
                tracing::info!(route = %route.id, %addr, "TCP route listening");
                let accept = tokio::spawn(accept_loop(
                    listener,
                    route.id.clone(),
                    shared.clone(),
                    pipes.clone(),
                    settings.connect_timeout,
                ));
                let route_id = route.id.clone();
                open.insert(port, Open { route_id, accept });
            }
            Err(error) => {
                tracing::warn!(route = %route.id, %addr, %error, "cannot listen for a TCP route");
            }
        }
    }
    metrics.tcp_listeners.set(open.len() as i64);
}

fn check_port(port: u16, settings: &TcpSettings) -> Result<(), &'static str> {
    if settings.reserved.contains(&port) {
        return Err("the port is one of the router's own listeners");
    }
    if !settings.ports.contains(&port) {
        return Err("the port is outside --tcp-ports");
    }
    Ok(())
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    // A new binary taking over (graceful upgrade) binds while the old one still listens.
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(
    listener: TcpListener,
    route_id: String,
    shared: Shared,
    pipes: Arc<Pipes>,
    connect_timeout: Duration,
) {
    loop {
        shared.limit.wait_for_room().await;
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let permit = shared.limit.acquire().await;
        shared.metrics.tcp_connections.inc();
        let guard = shared.in_flight.enter();
        let table = shared.table.clone();
        let route_id = route_id.clone();
        let pipes = pipes.clone();
        tokio::spawn(async move {
            match serve(client, peer, &route_id, &table, &pipes, connect_timeout).await {
                Ok(moved) => {
                    tracing::debug!(route = %route_id, %peer, ?moved, "TCP connection done")
                }
                Err(why) => {
                    tracing::debug!(route = %route_id, %peer, why, "TCP connection ended early")
                }
            }
            drop((guard, permit));
        });
    }
}

/// Connects `client` to an instance, sends the PROXY header if the route asks for it, then
/// relays bytes both ways until both sides have finished.
async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    route_id: &str,
    table: &ArcSwap<Table>,
    pipes: &Pipes,
    connect_timeout: Duration,
) -> Result<Moved, &'static str> {
    let _ = client.set_nodelay(true);
    let (route, service) = {
        let snapshot = table.load();
        let route = snapshot
            .tcp_routes()
            .find(|r| r.id == route_id)
            .cloned()
            .ok_or("route removed")?;
        let service = snapshot
            .service(&route.service)
            .cloned()
            .ok_or("no instance")?;
        (route, service)
    };
    // The connect-retry rule of every engine (crate::backend::Attempts).
    let mut attempts = Attempts::new(service, route.leader, None);
    let (mut upstream, _in_flight) = loop {
        let Some(backend) = attempts.next() else {
            return Err("every connect failed");
        };
        let in_flight = InFlight::new(backend.clone());
        match tokio::time::timeout(connect_timeout, TcpStream::connect(backend.addr)).await {
            Ok(Ok(stream)) => {
                backend.succeeded();
                break (stream, in_flight);
            }
            _ => backend.failed(),
        }
    };
    let _ = upstream.set_nodelay(true);
    if let Some(version) = route.proxy_protocol {
        let local = client.local_addr().map_err(|_| "no local address")?;
        let header = match version {
            ProxyProtocol::V1 => proxy_protocol::encode_v1(peer, local),
            ProxyProtocol::V2 => proxy_protocol::encode_v2(peer, local),
        };
        upstream
            .write_all(&header)
            .await
            .map_err(|_| "writing the PROXY header")?;
    }
    relay(&mut client, &mut upstream, pipes, Mode::Splice)
        .await
        .map_err(|_| "connection reset")
}
