//! A Flight SQL client for `proxima sql --connect`: tracer jobs and analysts' scripts run
//! as a real user through the server, so they are checked and audited like people.
//!
//! [`Client::connect`] logs in with Basic credentials (the server answers with a bearer
//! token the client sends from then on); [`Client::run`] sends one statement and streams
//! its result batches as they arrive. `SET` lasts for the login, as with any client.

use std::path::Path;
use std::pin::Pin;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::{Stream, StreamExt, TryStreamExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// What can go wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not `grpc://HOST:PORT` or `grpc+tls://HOST:PORT`.
    #[error("'{0}' is not a Flight SQL address: use grpc://HOST:PORT or grpc+tls://HOST:PORT")]
    Address(String),
    /// A CA file could not be read.
    #[error("{path}: {source}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// No connection.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// Where.
        address: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The server refused or failed the call; its message says why.
    #[error("{}", .0.message())]
    Server(Box<tonic::Status>),
    /// Anything else of the Flight protocol.
    #[error("{0}")]
    Flight(String),
}

impl From<FlightError> for ClientError {
    fn from(e: FlightError) -> Self {
        match e {
            FlightError::Tonic(status) => Self::Server(status),
            other => Self::Flight(other.to_string()),
        }
    }
}

impl From<arrow::error::ArrowError> for ClientError {
    fn from(e: arrow::error::ArrowError) -> Self {
        match e {
            arrow::error::ArrowError::ExternalError(e) => match e.downcast::<FlightError>() {
                Ok(e) => (*e).into(),
                Err(e) => Self::Flight(e.to_string()),
            },
            other => Self::Flight(other.to_string()),
        }
    }
}

/// The batches of one result, as they arrive.
pub type ResultStream = Pin<Box<dyn Stream<Item = Result<RecordBatch, ClientError>> + Send>>;

/// A logged-in connection to a Proxima Flight SQL server.
#[derive(Debug)]
pub struct Client {
    inner: FlightSqlServiceClient<Channel>,
}

impl Client {
    /// Connects to `address` (`grpc://…` or `grpc+tls://…`, trusting `ca` as well as the
    /// system's roots for TLS) and logs in as `user`.
    pub async fn connect(address: &str, ca: Option<&Path>, user: &str, password: &str) -> Result<Self, ClientError> {
        let (tls, host) = if let Some(host) = address.strip_prefix("grpc+tls://") {
            (true, host)
        } else if let Some(host) = address.strip_prefix("grpc://") {
            (false, host)
        } else {
            return Err(ClientError::Address(address.to_string()));
        };
        let scheme = if tls { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", host.trim_end_matches('/')))
            .map_err(|_| ClientError::Address(address.to_string()))?;
        if tls {
            let mut config = ClientTlsConfig::new().with_enabled_roots();
            if let Some(ca) = ca {
                let pem = std::fs::read(ca).map_err(|source| ClientError::CaFile {
                    path: ca.display().to_string(),
                    source,
                })?;
                config = config.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint.tls_config(config).map_err(|source| ClientError::Connect {
                address: address.to_string(),
                source,
            })?;
        }
        let channel = endpoint.connect().await.map_err(|source| ClientError::Connect {
            address: address.to_string(),
            source,
        })?;
        let mut inner = FlightSqlServiceClient::new(channel);
        inner.handshake(user, password).await?;
        Ok(Self { inner })
    }

    /// Declares what the following calls are for (`case:<case_id>`), as the header
    /// `x-proxima-purpose` on each of them.
    pub fn set_purpose(&mut self, purpose: &str) {
        self.inner.set_header("x-proxima-purpose", purpose);
    }

    /// Sends `sql` and returns its schema and its batches as they arrive.
    pub async fn run(&mut self, sql: &str) -> Result<(SchemaRef, ResultStream), ClientError> {
        let info = self.inner.execute(sql.to_string(), None).await?;
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::try_from(info.clone())?);
        let mut streams = Vec::new();
        for endpoint in info.endpoint {
            let ticket = endpoint
                .ticket
                .ok_or_else(|| ClientError::Flight("the server sent an endpoint without a ticket".into()))?;
            let stream = self.inner.do_get(ticket).await?.map_err(ClientError::from);
            streams.push(stream);
        }
        Ok((schema, Box::pin(futures::stream::iter(streams).flatten())))
    }
}
