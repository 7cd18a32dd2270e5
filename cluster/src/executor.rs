//! `proxima executor`: a Ballista executor that runs Proxima's stages.
//!
//! Everything it needs comes from the [`SessionFactory`] the binary builds from `--data`
//! (and the master and identifier keys), the same one a serving process builds: the
//! session settings and the encounter lookup `trace_contacts` runs with
//! ([`SessionFactory::session_config`]), the runtime with the store's object store and
//! decryption ([`SessionFactory::runtime`]), every function ([`function_registry`]) and
//! the codecs ([`crate::codec`]). One thing DataFusion's plan serialisation loses is put
//! back before a stage runs: a Parquet scan's decryption ([`DecryptingEngine`]).

use std::sync::Arc;

use ballista_core::JobId;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::execution_engine::{DefaultExecutionEngine, ExecutionEngine, QueryStageExecutor};
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::physical_plan::{FileScanConfig, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::parquet_encryption::EncryptionFactory;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use proxima_engine::SessionFactory;

use crate::codec::{LogicalCodec, PhysicalCodec};

/// Where an executor listens and which scheduler it works for.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The address it binds (default loopback).
    pub bind_host: String,
    /// The address the scheduler, other executors and clients reach it at.
    pub advertise_host: String,
    /// Its Arrow Flight port: other executors and clients fetch stage output there.
    pub flight_port: u16,
    /// Its gRPC port.
    pub grpc_port: u16,
    /// The scheduler's host and port.
    pub scheduler_host: String,
    /// The scheduler's port.
    pub scheduler_port: u16,
    /// Tasks it runs at once.
    pub slots: usize,
    /// Where it keeps stage output (shuffle files) until the job's data expires.
    pub work_dir: std::path::PathBuf,
    /// Memory its tasks may hold, in bytes.
    pub memory: u64,
}

/// Every function a full session has, for an executor to decode plans with: DataFusion's
/// (with the array functions Ballista's default registry lacks) and Proxima's.
pub fn function_registry(factory: &SessionFactory) -> BallistaFunctionRegistry {
    let state = SessionStateBuilder::new().with_default_features().build();
    let mut registry = BallistaFunctionRegistry::from(&state);
    for function in factory.scalar_functions() {
        let function = Arc::new(function);
        for alias in function.aliases() {
            registry.scalar_functions.insert(alias.clone(), Arc::clone(&function));
        }
        registry.scalar_functions.insert(function.name().to_string(), function);
    }
    for function in proxima_udfs::aggregate_functions() {
        registry
            .aggregate_functions
            .insert(function.name().to_string(), Arc::new(function));
    }
    registry
}

/// The configuration of one executor process for `factory`'s store.
pub fn config(factory: &SessionFactory, options: &ExecutorOptions) -> ExecutorProcessConfig {
    let config_factory = factory.clone();
    let runtime = Arc::clone(factory.runtime());
    let decryption = factory.store().decryption();
    let node = factory.node();
    ExecutorProcessConfig {
        bind_host: options.bind_host.clone(),
        external_host: Some(options.advertise_host.clone()),
        port: options.flight_port,
        grpc_port: options.grpc_port,
        scheduler_host: options.scheduler_host.clone(),
        scheduler_port: options.scheduler_port,
        vcores: options.slots,
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        work_dir: Some(options.work_dir.display().to_string()),
        memory_pool_size: Some(options.memory),
        executor_heartbeat_interval_seconds: 5,
        override_function_registry: Some(Arc::new(function_registry(factory))),
        override_config_producer: Some(Arc::new(move || crate::cluster_config(&config_factory))),
        override_runtime_producer: Some(Arc::new(move |config: &SessionConfig| {
            crate::node::check(config, &node, "executor")?;
            Ok(Arc::clone(&runtime))
        })),
        override_logical_codec: Some(Arc::new(LogicalCodec::new(None))),
        override_physical_codec: Some(Arc::new(PhysicalCodec::default())),
        override_execution_engine: Some(Arc::new(DecryptingEngine {
            inner: DefaultExecutionEngine::new(),
            decryption,
        })),
        ..ExecutorProcessConfig::default()
    }
}

/// Runs an executor until it is stopped (Ctrl-C, SIGTERM, or the scheduler).
pub async fn run(factory: &SessionFactory, options: &ExecutorOptions) -> Result<(), crate::Error> {
    std::fs::create_dir_all(&options.work_dir).map_err(|source| crate::Error::WorkDir {
        path: options.work_dir.clone(),
        source,
    })?;
    start_executor_process(Arc::new(config(factory, options)))
        .await
        .map_err(|e| crate::Error::Ballista(e.to_string()))
}

/// Ballista's execution engine, with each Parquet scan's decryption put back: the plan
/// came through datafusion-proto, which keeps a scan's files and predicate but not the
/// encryption factory the store's files are read through.
struct DecryptingEngine {
    inner: DefaultExecutionEngine,
    decryption: Arc<dyn EncryptionFactory>,
}

impl DecryptingEngine {
    fn decrypting(&self, plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(exec) = node.downcast_ref::<DataSourceExec>() else {
                return Ok(Transformed::no(node));
            };
            let Some(files) = exec.data_source().downcast_ref::<FileScanConfig>() else {
                return Ok(Transformed::no(node));
            };
            let Some(parquet) = files.file_source().downcast_ref::<ParquetSource>() else {
                return Ok(Transformed::no(node));
            };
            let mut options = parquet.table_parquet_options().clone();
            options.crypto.factory_id = Some(proxima_engine::encryption::FACTORY_ID.to_string());
            let source = parquet
                .clone()
                .with_table_parquet_options(options)
                .with_encryption_factory(Arc::clone(&self.decryption));
            let mut files = files.clone();
            files.file_source = Arc::new(source);
            Ok(Transformed::yes(
                DataSourceExec::from_data_source(files) as Arc<dyn ExecutionPlan>
            ))
        })
        .map(|t| t.data)
    }
}

impl ExecutionEngine for DecryptingEngine {
    fn create_query_stage_exec(
        &self,
        job_id: JobId,
        stage_id: usize,
        task_id: usize,
        global_output_partition_ids: Vec<usize>,
        plan: Arc<dyn ExecutionPlan>,
        work_dir: &str,
        config: &SessionConfig,
    ) -> Result<Arc<dyn QueryStageExecutor>> {
        let plan = self.decrypting(plan)?;
        self.inner.create_query_stage_exec(
            job_id,
            stage_id,
            task_id,
            global_output_partition_ids,
            plan,
            work_dir,
            config,
        )
    }
}
