//! `drover-tls`: TLS for the master's REST API, the agents' log servers and
//! their clients (DESIGN §12), on rustls with the ring provider.
//!
//! PEM files become rustls configs here, with errors that name the file and
//! say what is wrong with it. With the `server` feature, [`serve`] runs a
//! warp filter over TLS: warp 0.4 has no TLS of its own.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

#[cfg(feature = "server")]
mod serve;
#[cfg(feature = "server")]
pub use serve::serve;

use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The server side of TLS: what `serve` (feature `server`) accepts
/// connections with.
#[derive(Clone)]
#[cfg_attr(not(feature = "server"), allow(dead_code))]
pub struct ServerTls(pub(crate) TlsAcceptor);

/// The client side of TLS: a connector with its trust (and identity).
#[derive(Clone)]
pub struct ClientTls(TlsConnector);

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerTls")
    }
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// A TLS session to `addr` (`host:port`) over `tcp`, the server's
    /// certificate checked against the CA and `addr`'s host.
    pub async fn connect(
        &self,
        addr: &str,
        tcp: tokio::net::TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let name = server_name(addr).map_err(|e| e.to_string())?;
        self.0.connect(name, tcp).await.map_err(|e| explain(&e))
    }
}

/// Why a TLS config could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("TLS config: {0}")]
    Config(String),
}

fn file_error(path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file (a chain: leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| file_error(path, format!("no PEM private key in it: {e}")))
}

/// The CA certificates of a PEM file, as trust roots.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// A server's certificate and key files, and optionally the CA that its
/// clients' certificates must chain to (mutual TLS: then every client
/// must present one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
}

/// The acceptor for a server with `files`.
pub fn acceptor(files: &ServerFiles) -> Result<ServerTls, TlsError> {
    let certs = load_certs(&files.cert_file)?;
    let key = load_key(&files.key_file)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider())
                    .build()
                    .map_err(|e| file_error(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        file_error(
            &files.key_file,
            format!("does not go with the certificate: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServerTls(TlsAcceptor::from(Arc::new(config))))
}

/// A client's trust and, for mutual TLS, its own certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientFiles {
    /// The CA the server's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// The client's certificate and key, for servers that ask for one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// The connector for a client with `files`. Without a CA file it trusts
/// nothing: Drover's clusters use their own CA, not the web's.
pub fn connector(files: &ClientFiles) -> Result<ClientTls, TlsError> {
    let roots = match &files.ca_file {
        Some(ca) => load_roots(ca)?,
        None => {
            return Err(TlsError::Config(
                "a TLS client needs a CA file (ca_file, --cacert or DROVER_CACERT)".to_string(),
            ))
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let config = match &files.identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| file_error(key, format!("does not go with {}: {e}", cert.display())))?,
    };
    Ok(ClientTls(TlsConnector::from(Arc::new(config))))
}

/// The name to verify a server's certificate against: the host part of
/// `host:port` (an IP address or a DNS name).
pub fn server_name(addr: &str) -> Result<rustls::pki_types::ServerName<'static>, TlsError> {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| TlsError::Config(format!("{host:?} is not a server name: {e}")))
}

/// A TLS error in words a person can act on: which check failed.
pub fn explain(err: &std::io::Error) -> String {
    let text = err.to_string();
    let hint = if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        "the server's certificate is not signed by the CA in the CA file"
    } else if text.contains("Expired") {
        "the server's certificate has expired"
    } else if text.contains("NotValidForName") {
        "the server's certificate is not for this address"
    } else if text.contains("CorruptMessage") || text.contains("InvalidContentType") {
        "the server did not answer in TLS (is it serving plain HTTP?)"
    } else if text.contains("CertificateRequired") || text.contains("certificate required") {
        "the server wants a client certificate"
    } else {
        return format!("TLS: {text}");
    };
    format!("TLS: {hint} ({text})")
}
