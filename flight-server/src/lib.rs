//! Proxima's Arrow Flight SQL service: analysts, notebooks and BI tools query the store.
//!
//! Users (a TOML file of argon2 hashes) and roles come from `proxima_engine::users`; [`service`]
//! implements arrow-flight's `FlightSqlService` over the engine's
//! `SessionFactory` (handshake, statements, prepared statements, metadata,
//! streamed results with a timeout); `dispatch` puts it behind arrow-flight's dispatch
//! (a damaged command is the client's mistake); [`server`] binds it to an address with
//! optional TLS and shuts down gracefully; [`client`] is the other end, for
//! `proxima sql --connect`.
#![warn(missing_docs)]

pub mod client;
mod dispatch;
pub mod server;
pub mod service;

pub use proxima_engine::users::{Users, add_user};
pub use server::{ServeError, TlsFiles, serve};
pub use service::{FlightSqlServer, ServiceOptions};
