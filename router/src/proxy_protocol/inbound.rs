//! The PROXY header on the router's own HTTP and HTTPS listeners: connections from trusted
//! addresses (`--proxy-protocol-from`) must start with one, and the client address it carries
//! becomes the connection's peer for X-Forwarded-For and logs. Anything wrong closes that one
//! connection. Others connect as usual.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use pingora::apps::ServerApp;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{SocketDigest, Stream, IO};
use pingora::server::ShutdownWatch;
use prometheus::IntCounter;

use super::{read_header, Header};

/// How long a trusted peer may take to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The addresses whose connections carry a PROXY header.
#[derive(Clone, Debug)]
pub struct Trusted {
    nets: Arc<Vec<IpNet>>,
    refused: IntCounter,
}

impl Trusted {
    pub fn new(nets: Vec<IpNet>, refused: IntCounter) -> Trusted {
        Trusted {
            nets: Arc::new(nets),
            refused,
        }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// Reads the header when the peer is trusted and records the client it names. An error
    /// means the connection must be closed.
    async fn accept<S: IO + ?Sized>(&self, stream: &mut S) -> Result<(), String> {
        let Some(peer) = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied())
        else {
            return Ok(());
        };
        if !self.trusts(peer.ip()) {
            return Ok(());
        }
        let header = tokio::time::timeout(HEADER_TIMEOUT, read_header(stream))
            .await
            .map_err(|_| "no PROXY header in time".to_owned())
            .and_then(|h| h.map_err(|e| e.to_string()));
        match header {
            Ok(Header::Proxied {
                source,
                destination,
            }) => {
                let digest = SocketDigest::from_raw_fd(stream.id());
                let _ = digest.peer_addr.set(Some(PeerAddr::Inet(source)));
                let _ = digest.local_addr.set(Some(PeerAddr::Inet(destination)));
                stream.set_socket_digest(digest);
                Ok(())
            }
            Ok(Header::Local) => Ok(()),
            Err(why) => {
                self.refused.inc();
                tracing::info!(%peer, why, "closed a connection with a bad PROXY header");
                Err(why)
            }
        }
    }
}

/// Before the TLS handshake on HTTPS listeners.
#[async_trait]
impl PreTlsProcess for Trusted {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        self.accept(stream)
            .await
            .map_err(|why| pingora::Error::explain(pingora::ErrorType::AcceptError, why))
    }
}

/// Wraps the HTTP app of the plain listeners: reads the header, then hands the connection on.
pub struct WithProxyHeader<A> {
    pub inner: Arc<A>,
    pub trusted: Trusted,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for WithProxyHeader<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // TLS connections had theirs read before the handshake.
        if stream.get_ssl_digest().is_none() && self.trusted.accept(&mut *stream).await.is_err() {
            return None;
        }
        // Kept-alive connections come back here; the header is read only once per connection.
        let mut stream = stream;
        loop {
            stream = self.inner.process_new(stream, shutdown).await?;
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
