//! Certificate checks: the chain must parse, the key must parse, and the key must be the one
//! of the leaf certificate. Pure functions, no I/O.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

use super::error::ApiError;

/// A certificate and key that passed every check.
#[derive(Clone)]
pub struct CheckedCert {
    /// Derived from the chain's bytes: the same chain always gets the same id.
    pub id: String,
    pub cert: String,
    pub key: String,
    /// DNS names of the leaf (subject alternative names, else the common name).
    pub domains: Vec<String>,
    /// The leaf's expiry, RFC 3339.
    pub not_after: Option<String>,
}

impl std::fmt::Debug for CheckedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedCert")
            .field("id", &self.id)
            .field("domains", &self.domains)
            .finish_non_exhaustive()
    }
}

/// What the API shows of a leaf certificate.
#[derive(Clone, Debug, Default)]
pub struct CertInfo {
    pub domains: Vec<String>,
    pub not_after: Option<String>,
}

/// Checks a PEM chain (leaf first) and its PEM private key.
pub fn check(cert_pem: &str, key_pem: &str) -> Result<CheckedCert, ApiError> {
    let chain = parse_chain(cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
        ApiError::invalid(
            "key",
            format!("the key is not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain.clone(), key, &provider).map_err(|e| {
        ApiError::invalid(
            "key",
            format!("the key does not match the certificate (or is not a supported key type): {e}"),
        )
    })?;
    certified.keys_match().map_err(|e| {
        ApiError::invalid(
            "key",
            format!("the key does not match the certificate: {e}"),
        )
    })?;
    let info = info_of(&chain[0]);
    Ok(CheckedCert {
        id: id_of(&chain),
        cert: cert_pem.trim().to_owned() + "\n",
        key: key_pem.trim().to_owned() + "\n",
        domains: info.domains,
        not_after: info.not_after,
    })
}

fn parse_chain(cert_pem: &str) -> Result<Vec<CertificateDer<'static>>, ApiError> {
    let bad = |why: String| ApiError::invalid("cert", why);
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("the certificate is not a PEM chain: {e}")))?;
    if chain.is_empty() {
        return Err(bad(
            "no certificate found: expected PEM blocks (-----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    }
    for (i, der) in chain.iter().enumerate() {
        x509_parser::parse_x509_certificate(der).map_err(|e| {
            bad(format!(
                "certificate {} of the chain does not parse: {e}",
                i + 1
            ))
        })?;
    }
    Ok(chain)
}

/// The names and expiry of a stored PEM chain's leaf (empty if it does not parse).
pub fn info(cert_pem: &str) -> CertInfo {
    match CertificateDer::pem_slice_iter(cert_pem.as_bytes()).next() {
        Some(Ok(der)) => info_of(&der),
        _ => CertInfo::default(),
    }
}

fn info_of(der: &CertificateDer<'_>) -> CertInfo {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return CertInfo::default();
    };
    let mut domains: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(name) => Some((*name).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if domains.is_empty() {
        domains = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
            .collect();
    }
    let expiry = cert.validity().not_after.timestamp();
    let not_after = u64::try_from(expiry).ok().map(|secs| {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        humantime::format_rfc3339_seconds(at).to_string()
    });
    CertInfo { domains, not_after }
}

/// A UUID-shaped digest of the chain.
fn id_of(chain: &[CertificateDer<'_>]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for der in chain {
        ctx.update(&(der.len() as u64).to_be_bytes());
        ctx.update(der);
    }
    let digest = ctx.finish();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    uuid::Uuid::from_bytes(bytes).to_string()
}
