//! Serving the REST router on a listener, with optional TLS and a graceful stop.
//!
//! TLS handshakes run on their own tasks (a slow client cannot hold up the
//! accept loop); connections that complete one are handed to axum.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;

use crate::error::{Error, Result};

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Loads a PEM certificate chain and private key into a TLS acceptor (HTTP/1.1).
pub fn tls_acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect())
        .map_err(|e| Error::InvalidArgument(format!("{}: not a PEM certificate chain: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{}: no certificate in the file",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::InvalidArgument(format!("{}: not a PEM private key: {e}", key.display())))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidArgument(format!("TLS setup: {e}")))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            // Phones have no certificate: one is asked for, checked if sent, not required
            // here (the staff routes require it).
            let mut roots = tokio_rustls::rustls::RootCertStore::empty();
            for certificate in CertificateDer::pem_file_iter(ca)
                .and_then(|iter| iter.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| Error::InvalidArgument(format!("{}: not a PEM certificate: {e}", ca.display())))?
            {
                roots
                    .add(certificate)
                    .map_err(|e| Error::InvalidArgument(format!("{}: not a CA certificate: {e}", ca.display())))?;
            }
            if roots.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "{}: no certificate in the file",
                    ca.display()
                )));
            }
            let verifier =
                tokio_rustls::rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| Error::InvalidArgument(format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| Error::InvalidArgument(format!("TLS certificate and key do not match: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The certificate and key files of `--tls-cert/--tls-key`.
#[derive(Debug, Clone)]
pub struct TlsPaths {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Connections that finished their TLS handshake.
struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(connection) => connection,
            // The accept loop ended (listener failed); never hand out another connection.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The client's address, as handlers and the audit see it (`ConnectInfo<ClientAddr>`),
/// over plain TCP and TLS alike.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr, pub Certified);

/// Whether the client presented a TLS certificate the server's client CA signed (rustls
/// refuses the handshake of one that presents any other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Certified(pub bool);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpListener>> for ClientAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TcpListener>) -> Self {
        Self(*stream.remote_addr(), Certified(false))
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for ClientAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        let certified = stream
            .io()
            .get_ref()
            .1
            .peer_certificates()
            .is_some_and(|c| !c.is_empty());
        Self(*stream.remote_addr(), Certified(certified))
    }
}

/// Serves `router` on `listener` until `shutdown` resolves; running requests finish first.
pub async fn serve(
    router: Router,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    match tls {
        // The client's address reaches handlers (and the audit) as `ConnectInfo`.
        None => {
            axum::serve(listener, router.into_make_service_with_connect_info::<ClientAddr>())
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(acceptor) => {
            let local = listener.local_addr()?;
            let (sender, accepted) = mpsc::channel(1024);
            tokio::spawn(async move {
                loop {
                    let (stream, peer) = match listener.accept().await {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            tracing::warn!(target: "proxima::http", error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let acceptor = acceptor.clone();
                    let sender = sender.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => {
                                let _ = sender.send((tls, peer)).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(target: "proxima::http", %peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(target: "proxima::http", %peer, "TLS handshake timed out"),
                        }
                    });
                }
            });
            axum::serve(
                TlsListener { accepted, local },
                router.into_make_service_with_connect_info::<ClientAddr>(),
            )
            .with_graceful_shutdown(shutdown)
            .await
        }
    }
}
