//! TLS termination with rustls: certificates from PEM files, chosen by the SNI
//! name the client sends (exact names, then `*.example.com` wildcards, then the
//! first certificate as the default), with ALPN offering the listener's HTTP
//! versions.

use crate::config::{Protocol, TlsConfig};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Why TLS could not be set up; names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading certificates from {path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("reading private key from {path}: {reason}")]
    Key { path: String, reason: String },
}

#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// (".example.com", key), longest suffix first.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        for (suffix, k) in &self.wildcard {
            if name.len() > suffix.len() && name.ends_with(suffix.as_str()) {
                return Some(k.clone());
            }
        }
        Some(self.default.clone())
    }
}

fn load_key(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_err = |reason: String| TlsError::Certificate {
        path: cert_file.display().to_string(),
        reason,
    };
    let key_err = |reason: String| TlsError::Key {
        path: key_file.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no PEM certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| key_err(e.to_string()))?;
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| key_err(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(certs, signer)))
}

/// A TLS acceptor for a listener's `tls` section.
pub(crate) fn acceptor(
    config: &TlsConfig,
    protocols: &[Protocol],
) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let mut exact = HashMap::new();
    let mut wildcard = Vec::new();
    let mut default = None;
    for c in &config.certificates {
        let key = load_key(&c.cert_file, &c.key_file)?;
        default.get_or_insert_with(|| key.clone());
        for name in &c.server_names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix('*') {
                Some(suffix) => wildcard.push((suffix.to_owned(), key.clone())),
                None => {
                    exact.insert(name, key.clone());
                }
            }
        }
    }
    wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    let Some(default) = default else {
        return Err(TlsError::Certificate {
            path: String::new(),
            reason: "no certificate configured".into(),
        });
    };
    let resolver = SniResolver {
        exact,
        wildcard,
        default,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Certificate {
            path: String::new(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    if protocols.contains(&Protocol::Http2) {
        server.alpn_protocols.push(b"h2".to_vec());
    }
    if protocols.contains(&Protocol::Http1) {
        server.alpn_protocols.push(b"http/1.1".to_vec());
    }
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}
