//! TLS for `https` URLs (the agent's metadata, the relay's alert webhooks): the system's
//! certificate authorities plus an optional CA file, through rustls on the ring provider that
//! burrow-ssh already uses.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A TLS client configuration.
pub struct Tls {
    connector: TlsConnector,
}

impl Tls {
    /// Trusts the system's roots (`/etc/ssl/certs` on Debian) and the certificates in `ca_file`;
    /// `setting` names where `ca_file` was set, for messages (`[metadata] ca_file`).
    pub fn new(ca_file: Option<&Path>, setting: &str) -> Result<Tls, String> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            // A system bundle may hold certificates rustls cannot use; the rest still count.
            let _ = roots.add(cert);
        }
        if let Some(path) = ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect())
                .map_err(|e| format!("{setting} {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "{setting} {}: no PEM certificates in it",
                    path.display()
                ));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    format!("{setting} {}: unusable certificate: {e}", path.display())
                })?;
            }
        }
        if roots.is_empty() {
            return Err(format!(
                "no trusted certificate authorities for https: install ca-certificates or set {setting}"
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Runs the TLS handshake, checking the certificate against `host`.
    pub async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>, String> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host:?} is not a TLS server name: {e}"))?;
        self.connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))
    }
}
