//! Starting the service: address, TLS, graceful shutdown, and the layer that gives every
//! call a request id (a tracing span around everything logged for it) and times it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use proxima_engine::telemetry::{RpcLabels, ServiceMetrics, flight_method, grpc_code};
use tracing::Instrument;

use arrow_flight::flight_service_server::FlightServiceServer;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::dispatch::Dispatch;
use crate::service::FlightSqlServer;

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A TLS file could not be read.
    #[error("{path}: {source}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The transport failed (address in use, bad certificate…).
    #[error("Flight SQL server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A PEM certificate chain and private key, and the CA whose certificates clients must
/// present, if any.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// CA certificates (PEM): every client must present a certificate one of them signed
    /// (mutual TLS; Flight SQL has staff clients only).
    pub client_ca: Option<PathBuf>,
}

/// Largest message a client may send or receive (bound parameters, result batches).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Serves `service` on `listener` (already bound) until `shutdown` completes, then lets
/// running calls finish.
pub async fn serve(
    service: FlightSqlServer,
    listener: tokio::net::TcpListener,
    tls: Option<TlsFiles>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| ServeError::TlsFile {
                path: path.clone(),
                source,
            })
        };
        let identity = Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &tls.client_ca {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        builder = builder.tls_config(config)?;
    }
    let metrics = service.metrics().clone();
    let flight = FlightServiceServer::new(Dispatch(service))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let incoming = tokio_stream_listener(listener);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = builder
        .layer(TimedLayer(metrics))
        .add_service(flight)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result?,
        () = shutdown => {
            // Stop accepting, let running calls finish; clients that keep idle connections
            // open (most do) must not hold the process forever.
            let _ = stop.send(());
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(result) => result?,
                Err(_) => tracing::warn!(
                    target: "proxima::serve",
                    "connections still open {} s after the stop signal: closing them",
                    SHUTDOWN_GRACE.as_secs()
                ),
            }
        }
    }
    Ok(())
}

/// How long running calls may take to finish after SIGINT or SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The accepted connections of a listener, as tonic wants them.
fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            stream
        });
        Some((accepted, listener))
    })
}

/// Whether an address is on the loopback interface only.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Times each call and runs it inside a span that carries its request id: the client's
/// `x-request-id` if it sent a plausible one, else a new one.
#[derive(Debug, Clone)]
struct Timed<S> {
    inner: S,
    metrics: ServiceMetrics,
}

/// The layer that wraps the service in [`Timed`].
#[derive(Debug, Clone)]
struct TimedLayer(ServiceMetrics);

impl<S> tower_layer::Layer<S> for TimedLayer {
    type Service = Timed<S>;

    fn layer(&self, inner: S) -> Timed<S> {
        Timed {
            inner,
            metrics: self.0.clone(),
        }
    }
}

impl<S, B, R> tower_service::Service<http::Request<B>> for Timed<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Response: Send,
    S::Error: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = flight_method(request.uri().path());
        let id =
            proxima_engine::telemetry::request_id(request.headers().get("x-request-id").and_then(|v| v.to_str().ok()));
        let span = tracing::info_span!(target: "proxima::request", "rpc", request_id = %id, method);
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let future = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let mut response = future.await;
                if let (Ok(response), Ok(value)) = (&mut response, http::HeaderValue::from_str(&id)) {
                    response.headers_mut().insert("x-request-id", value);
                }
                // An error answered at once is a "trailers-only" response: its status is in
                // the headers. A stream's status comes at its end; counted as ok here.
                let code = match &response {
                    Ok(response) => response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok()),
                    Err(_) => Some(2),
                };
                metrics
                    .flight_seconds
                    .get_or_create(&RpcLabels {
                        method,
                        code: grpc_code(code),
                    })
                    .observe(started.elapsed().as_secs_f64());
                response
            }
            .instrument(span),
        )
    }
}
