//! TLS: certificates from the store checked and parsed (`certs`), the certificate chosen per
//! handshake by SNI from the current table (`SniResolver`), else the default keypair, and
//! session tickets sealed with keys shared through the store (`tickets`).

mod certs;
pub mod tickets;

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub use certs::{check_ca_bundle, load_default, parse, self_signed, CertError};

use crate::metrics::Metrics;
use crate::table::Table;

/// The rustls crypto of the whole router (handshakes, and the keys of every certificate):
/// aws-lc-rs, whose RSA signatures and X25519 cost about half of ring's (benches/README.md).
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// Makes [`provider`] the process's default. pingora installs ring as the default when it
/// builds a listener's or a connector's TLS config and none is installed yet: this must come
/// first (the router's `server::build` calls it before anything else).
pub fn install_provider() {
    // An error means a default is installed already: the caller's choice (as in tests).
    let _ = provider().install_default();
}

/// Picks the certificate for each TLS handshake without locks: the current table's certificate
/// for the SNI name, else the default one; with neither, the handshake fails.
pub struct SniResolver {
    table: Arc<ArcSwap<Table>>,
    default: Option<Arc<CertifiedKey>>,
    metrics: Arc<Metrics>,
}

impl SniResolver {
    pub fn new(
        table: Arc<ArcSwap<Table>>,
        default: Option<Arc<CertifiedKey>>,
        metrics: Arc<Metrics>,
    ) -> SniResolver {
        SniResolver {
            table,
            default,
            metrics,
        }
    }
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver")
            .field("default", &self.default.is_some())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let found = hello
            .server_name()
            .and_then(|name| self.table.load().certificate_for(name).cloned());
        let chosen = found.or_else(|| self.default.clone());
        if chosen.is_none() {
            self.metrics.tls_no_certificate.inc();
        }
        chosen
    }
}
