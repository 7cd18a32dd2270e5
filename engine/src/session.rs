//! The one place where a DataFusion session and its catalog are built.
//!
//! Every query, from the CLI, the golden tests or (later) Flight SQL, runs in
//! a [`SessionContext`] made by [`SessionFactory::session`]: the store's
//! tables, the views in `sql/views/`, and every Proxima function. Per-role
//! visibility and query auditing hook in here, so nothing can bypass them.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig};
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};

use proxima_udfs::trace::EncounterLookupExtension;

use crate::access::Principal;
use crate::error::Result;
use crate::index::IndexReader;
use crate::memory::{SessionPool, global_pool};
use crate::paths::Table;
use crate::schema::DAY;
use crate::store::Store;
use crate::table::DayPartitionedTable;

/// The views every session gets, in creation order (each file is one `CREATE VIEW`).
const VIEWS: &[(&str, &str)] = &[("encounters", include_str!("../../sql/views/encounters.sql"))];

/// The catalog name Proxima's tables are listed under.
pub const CATALOG: &str = "proxima";
/// The schema name Proxima's tables are listed under.
pub const SCHEMA: &str = "public";

/// Settings shared by every session of a factory.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Threads a query may use (default: the number of cores).
    pub target_partitions: Option<usize>,
    /// Memory all queries together may hold in DataFusion's pool, in bytes (default: unbounded).
    pub memory_limit: Option<usize>,
    /// Memory the queries of one session may hold, in bytes (default: only `memory_limit`).
    /// A query that needs more fails with "resources exhausted" instead of taking the server down.
    pub session_memory_limit: Option<usize>,
    /// The longest trace window a network login may `SET` (the retention period; default:
    /// only the functions' own bound).
    pub max_trace_window: Option<std::time::Duration>,
}

/// A runtime reading `store` whose queries take memory from `pool`.
fn runtime(store: &Store, pool: Arc<dyn MemoryPool>) -> Result<Arc<RuntimeEnv>> {
    // New files must be visible to the next query: no cached listings.
    let caches = CacheManagerConfig::default().with_list_files_cache_limit(0);
    let runtime = RuntimeEnvBuilder::new()
        .with_cache_manager(caches)
        .with_memory_pool(pool)
        .build_arc()?;
    runtime.register_object_store(store.object_store_url().as_ref(), Arc::clone(store.reader()));
    Ok(runtime)
}

/// Builds sessions over one store.
#[derive(Debug, Clone)]
pub struct SessionFactory {
    store: Store,
    runtime: Arc<RuntimeEnv>,
    /// The one pool every session's queries take memory from.
    pool: Arc<dyn MemoryPool>,
    options: SessionOptions,
    /// Shared by every session, so that index footers are read once.
    index: Arc<IndexReader>,
}

impl SessionFactory {
    /// Creates a factory whose sessions read `store`.
    pub fn new(store: Store, options: SessionOptions) -> Result<Self> {
        let pool = global_pool(options.memory_limit);
        let runtime = runtime(&store, Arc::clone(&pool))?;
        Ok(Self {
            index: Arc::new(IndexReader::new(store.clone())),
            store,
            runtime,
            pool,
            options,
        })
    }

    /// The settings sessions are built with.
    pub fn options(&self) -> &SessionOptions {
        &self.options
    }

    /// The store sessions read.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The encounter-index reader every session's `trace_contacts` uses.
    pub fn index(&self) -> &Arc<IndexReader> {
        &self.index
    }

    /// The session of an authenticated user: today every role sees the same catalog;
    /// per-role visibility is decided here.
    pub async fn session_for(&self, principal: &Principal) -> Result<SessionContext> {
        let ctx = self.session().await?;
        tracing::debug!(user = %principal.name, role = %principal.role, "session built");
        Ok(ctx)
    }

    /// A new session with every table, view and function of Proxima.
    pub async fn session(&self) -> Result<SessionContext> {
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema(CATALOG, SCHEMA)
            .with_option_extension(proxima_udfs::ProximaOptions::default())
            .with_extension(Arc::new(EncounterLookupExtension(
                Arc::clone(&self.index) as Arc<dyn proxima_udfs::trace::EncounterLookup>
            )));
        if let Some(partitions) = self.options.target_partitions {
            config = config.with_target_partitions(partitions);
        }
        let parquet = &mut config.options_mut().execution.parquet;
        // PERF: evaluate filters while decoding, so lookups of a few devices skip most pages.
        parquet.pushdown_filters = true;
        parquet.reorder_filters = true;

        let runtime = match self.options.session_memory_limit {
            Some(limit) => runtime(&self.store, Arc::new(SessionPool::new(Arc::clone(&self.pool), limit)))?,
            None => Arc::clone(&self.runtime),
        };
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        for table in Table::ALL.into_iter().filter(|t| t.is_sql_visible()) {
            ctx.register_table(table.name(), self.table_provider(table)?)?;
        }
        proxima_udfs::register_all(&ctx)?;
        for (_name, sql) in VIEWS {
            ctx.sql(sql).await?;
        }
        Ok(ctx)
    }

    fn table_provider(&self, table: Table) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
        let mut options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        if table.is_day_partitioned() {
            options = options.with_table_partition_cols(vec![(DAY.to_string(), DataType::Date32)]);
        }
        let config = ListingTableConfig::new(self.store.table_url(table)?)
            .with_listing_options(options)
            .with_schema(table.file_schema());
        let listing = ListingTable::try_new(config)?;
        Ok(match table.time_column() {
            Some(time_column) => Arc::new(DayPartitionedTable::new(listing, time_column)),
            None => Arc::new(listing),
        })
    }
}
