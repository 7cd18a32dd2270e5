//! `proxima scheduler`: a Ballista scheduler that plans Proxima's queries.
//!
//! A client (`proxima serve --ballista`, `proxima sql --ballista`) plans a query and sends
//! its logical plan; the scheduler rebuilds Proxima's relations with its own
//! [`SessionFactory`] (the store's tables, with their decryption), plans the stages and
//! hands them to the executors, which pull them (Ballista's pull-staged scheduling: the
//! scheduler needs no route to the executors, and a stage an executor cannot decode fails
//! with the executor's own error).

use std::net::SocketAddr;
use std::sync::Arc;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use proxima_engine::SessionFactory;

use crate::Error;
use crate::codec::{LogicalCodec, PhysicalCodec};

/// The configuration of a scheduler listening on `address` for `factory`'s store.
pub fn config(factory: &SessionFactory, address: SocketAddr, advertise_host: &str) -> SchedulerConfig {
    let producer_factory = factory.clone();
    let builder_factory = factory.clone();
    SchedulerConfig {
        bind_host: address.ip().to_string(),
        bind_port: address.port(),
        external_host: advertise_host.to_string(),
        scheduling_policy: TaskSchedulingPolicy::PullStaged,
        override_config_producer: Some(Arc::new(move || crate::cluster_config(&producer_factory))),
        override_session_builder: Some(Arc::new(move |config: SessionConfig| {
            crate::node::check(&config, &builder_factory.node(), "scheduler")?;
            let mut state = SessionStateBuilder::new()
                .with_default_features()
                .with_config(config)
                .with_runtime_env(Arc::clone(builder_factory.runtime()))
                .with_physical_optimizer_rule(Arc::new(crate::joins::OneTaskForGlobalJoins))
                .build();
            for function in builder_factory.scalar_functions() {
                datafusion::execution::FunctionRegistry::register_udf(&mut state, Arc::new(function))?;
            }
            for function in proxima_udfs::aggregate_functions() {
                datafusion::execution::FunctionRegistry::register_udaf(&mut state, Arc::new(function))?;
            }
            Ok(state)
        })),
        override_logical_codec: Some(Arc::new(LogicalCodec::new(Some(factory.clone())))),
        override_physical_codec: Some(Arc::new(PhysicalCodec::default())),
        ..SchedulerConfig::default()
    }
}

/// A scheduler bound to its port and ready to serve.
pub struct Scheduler {
    listener: tokio::net::TcpListener,
    config: SchedulerConfig,
}

impl Scheduler {
    /// Binds `address` (port 0 picks a free one) for `factory`'s store; executors and
    /// clients reach it at `advertise_host`.
    pub async fn bind(factory: &SessionFactory, address: SocketAddr, advertise_host: &str) -> Result<Self, Error> {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| Error::Bind { address, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| Error::Bind { address, source })?;
        Ok(Self {
            listener,
            config: config(factory, bound, advertise_host),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        SocketAddr::new(
            self.config.bind_host.parse().expect("an address it bound"),
            self.config.bind_port,
        )
    }

    /// Serves until the process ends.
    pub async fn serve(self) -> Result<(), Error> {
        self.config.validate().map_err(|e| Error::Ballista(e.to_string()))?;
        let cluster = BallistaCluster::new_from_config(&self.config)
            .await
            .map_err(|e| Error::Ballista(e.to_string()))?;
        let scheduler = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::new(self.config))
            .await
            .map_err(|e| Error::Ballista(e.to_string()))?;
        start_grpc_service_with_listener(self.listener, scheduler)
            .await
            .map_err(|e| Error::Ballista(e.to_string()))
    }
}
