//! Certificates: PEM chain + key parsed and checked to belong together, and the default keypair.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Why a certificate was not taken.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("no certificate in the PEM chain")]
    NoCertificate,
    #[error("certificate PEM does not parse: {0}")]
    BadCertificate(String),
    #[error("private key PEM does not parse: {0}")]
    BadKey(String),
    #[error("the private key does not match the certificate, or is of an unsupported kind: {0}")]
    Mismatch(String),
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
}

/// Parses a PEM chain (leaf first) and its PEM private key, and checks that they match.
pub fn parse(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadCertificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate);
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::BadKey(e.to_string()))?;
    let provider = super::provider();
    let certified = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| CertError::Mismatch(e.to_string()))?;
    // `from_der` lets an undecidable check pass; the router insists on a decided match.
    certified
        .keys_match()
        .map_err(|e| CertError::Mismatch(e.to_string()))?;
    Ok(certified)
}

/// Reads and parses the default keypair from files.
pub fn load_default(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, CertError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|error| CertError::Read {
            path: p.display().to_string(),
            error,
        })
    };
    Ok(Arc::new(parse(&read(cert)?, &read(key)?)?))
}

/// Checks a CA bundle file (PEM, one or more certificates) for trusting backends' certificates.
pub fn check_ca_bundle(path: &Path) -> Result<(), CertError> {
    let pem = std::fs::read(path).map_err(|error| CertError::Read {
        path: path.display().to_string(),
        error,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadCertificate(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(CertError::NoCertificate);
    }
    Ok(())
}

/// A fresh self-signed certificate for `localhost` and `*.localhost`, with its PEM parts.
pub fn self_signed() -> Result<(Arc<CertifiedKey>, String, String), CertError> {
    let names = vec!["localhost".to_owned(), "*.localhost".to_owned()];
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| CertError::Generate(e.to_string()))?;
    let cert_pem = generated.cert.pem();
    let key_pem = generated.key_pair.serialize_pem();
    let certified = parse(cert_pem.as_bytes(), key_pem.as_bytes())?;
    Ok((Arc::new(certified), cert_pem, key_pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("generate");
        (c.cert.pem(), c.key_pair.serialize_pem())
    }

    #[test]
    fn a_matching_pair_parses() {
        let (cert, key) = pair("example.com");
        assert!(parse(cert.as_bytes(), key.as_bytes()).is_ok());
    }

    #[test]
    fn bad_input_is_refused_with_the_reason() {
        let (cert, key) = pair("example.com");
        let (_, other_key) = pair("other.com");
        assert!(matches!(
            parse(cert.as_bytes(), other_key.as_bytes()),
            Err(CertError::Mismatch(_))
        ));
        assert!(matches!(
            parse(b"", key.as_bytes()),
            Err(CertError::NoCertificate)
        ));
        assert!(matches!(
            parse(
                b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
                key.as_bytes()
            ),
            Err(CertError::BadCertificate(_))
        ));
        assert!(matches!(
            parse(cert.as_bytes(), b"nope"),
            Err(CertError::BadKey(_))
        ));
    }

    #[test]
    fn self_signed_covers_localhost() {
        let (certified, cert_pem, _) = self_signed().expect("generate");
        assert!(cert_pem.contains("BEGIN CERTIFICATE"));
        assert_eq!(certified.cert.len(), 1);
    }
}
