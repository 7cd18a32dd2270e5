//! Proxima on an Apache DataFusion Ballista cluster.
//!
//! A client plans a query in its own session, checked by its access policy and recorded
//! in its audit log as ever, and sends the logical plan to a scheduler
//! ([`client::Ballista`], the `--ballista` of `proxima serve` and `proxima sql`); the
//! scheduler ([`scheduler`], `proxima scheduler`) plans stages, which executors
//! ([`executor`], `proxima executor`) pull and run. Every node builds what it needs from
//! the same [`SessionFactory`] a serving process builds: its settings ([`cluster_config`]),
//! runtime, functions and codecs ([`codec`]), so no node can lack what another has.

pub mod client;
pub mod codec;
pub mod executor;
pub mod joins;
pub mod node;
pub mod scheduler;

use ballista::prelude::SessionConfigExt;
use datafusion::prelude::SessionConfig;
use proxima_engine::SessionFactory;

/// The settings every task starts from on the scheduler and the executors, before the
/// client's are applied: a session's (`proxima.*` registered, so that the client's values
/// arrive; the encounter lookup) and Ballista's.
pub fn cluster_config(factory: &SessionFactory) -> SessionConfig {
    node::with_node(factory.session_config().upgrade_for_ballista(), factory.node())
}

/// What can go wrong starting a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The work folder cannot be made.
    #[error("cannot make the work folder {}: {source}", path.display())]
    WorkDir {
        /// The folder.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A scheduler URL that is not `df://HOST:PORT`.
    #[error("{url}: {why} (expected df://HOST:PORT)")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// Ballista refused.
    #[error("{0}")]
    Ballista(String),
}
