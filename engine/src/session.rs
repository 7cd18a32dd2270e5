//! The one place where a DataFusion session and its catalog are built.
//!
//! Every query, from the CLI, the golden tests or (later) Flight SQL, runs in
//! a [`SessionContext`] made by [`SessionFactory::session`]: the store's
//! tables, the views in `sql/views/`, and every Proxima function. Per-role
//! visibility and query auditing hook in here, so nothing can bypass them.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::catalog::view::ViewTable;
use datafusion::common::config::TableParquetOptions;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::execution::SessionState;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::local::LocalFileSystem;

use proxima_udfs::trace::EncounterLookupExtension;

use crate::access::Principal;
use crate::error::Result;
use crate::index::IndexReader;
use crate::memory::{SessionPool, global_pool};
use crate::paths::Table;
use crate::policy::{AccessRule, AggregateView, RoleCatalog};
use crate::purpose::{GuardedTrace, PurposeResolver, ScopeRule, ScopedTable};
use crate::schema::DAY;
use crate::store::Store;
use crate::table::StoreTable;
use crate::trace_case::TraceCase;

/// The views every full session gets, in creation order (each file is one `CREATE VIEW`).
const VIEWS: &[(&str, &str)] = &[("encounters", include_str!("../../sql/views/encounters.sql"))];

/// The aggregates analysts read (each file one `SELECT`, with `${min_cell}` and
/// `${min_count}`): views in a
/// full session, [`AggregateView`]s in an analyst's.
const AGGREGATES: &[(&str, &str)] = &[
    (
        "daily_contacts_by_location",
        include_str!("../../sql/views/daily_contacts_by_location.sql"),
    ),
    ("contact_rollup", include_str!("../../sql/views/contact_rollup.sql")),
    ("case_rollup", include_str!("../../sql/views/case_rollup.sql")),
    ("daily_cell_rates", include_str!("../../sql/views/daily_cell_rates.sql")),
];

/// The smallest number of distinct devices an aggregate cell shows by default.
pub const DEFAULT_MIN_CELL: u32 = 10;

/// The smallest count of cases, readings or alerts an aggregate shows by default (a
/// smaller one, but 0, is NULL): counts of 1 and 2 are suppressed, as public-health
/// statistics commonly are.
pub const DEFAULT_MIN_COUNT: u32 = 3;

/// The catalog name Proxima's tables are listed under.
pub const CATALOG: &str = "proxima";
/// The schema name Proxima's tables are listed under.
pub const SCHEMA: &str = "public";

/// The table auditors query.
pub const AUDIT_TABLE: &str = "audit";

/// The URL sessions know the audit log's segments by (the folder `<audit dir>/log`).
pub(crate) const AUDIT_STORE_URL: &str = "proxima://audit";

/// The `audit` table: every segment of the log (JSON lines, under [`AUDIT_STORE_URL`]),
/// typed. Read at query time, so it shows every record written until then.
fn audit_table() -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
    use arrow::datatypes::{Field, Schema, TimeUnit};
    let text = || DataType::Utf8;
    let list = |item: DataType| DataType::List(Arc::new(Field::new("item", item, true)));
    let schema = Schema::new(vec![
        Field::new("seq", DataType::UInt64, false),
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("phase", text(), false),
        Field::new("intent", DataType::UInt64, true),
        Field::new("principal", text(), false),
        Field::new("issuer", text(), true),
        Field::new("role", text(), false),
        Field::new("client", text(), true),
        Field::new("session", text(), true),
        Field::new("action", text(), false),
        Field::new("sql", text(), true),
        Field::new("params", list(list(text())), true),
        Field::new("objects", list(text()), true),
        Field::new("decision", text(), false),
        Field::new("rule", text(), false),
        Field::new("purpose", text(), true),
        Field::new("rows", DataType::UInt64, true),
        Field::new("bytes", DataType::UInt64, true),
        Field::new("duration_ms", DataType::UInt64, true),
        Field::new("error", text(), true),
    ]);
    let url = ListingTableUrl::parse(format!("{AUDIT_STORE_URL}/"))?;
    let options = ListingOptions::new(Arc::new(JsonFormat::default())).with_file_extension(".jsonl");
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(Arc::new(schema));
    Ok(Arc::new(ListingTable::try_new(config)?))
}

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
    /// The audit log's folder, which the `auditor` role's sessions read as the `audit`
    /// table (a local folder; none: auditors see an empty catalog).
    pub audit_dir: Option<std::path::PathBuf>,
    /// The smallest number of distinct devices an aggregate cell may show (default
    /// [`DEFAULT_MIN_CELL`]); smaller cells are left out of the aggregates.
    pub min_cell: Option<u32>,
    /// The smallest count of cases, readings or alerts an aggregate shows (default
    /// [`DEFAULT_MIN_COUNT`]); a smaller one, but 0, is NULL.
    pub min_count: Option<u32>,
    /// Whether sessions may name the machine's files as `file://` URLs (`COPY … TO`, external
    /// tables): the local CLI's direct access. Off, a session's object stores are the store's
    /// (prefixed with its root) and the audit log's, nothing else.
    pub local_files: bool,
    /// What resolves phones' rotating identifiers (the server's `--id-key`): with none, no
    /// sighting of an identifier is an encounter.
    pub identifiers: Option<Arc<crate::ephemeral::Identifiers>>,
    /// Whether sessions start with `proxima.trace.require_mutual` on: an encounter counts
    /// in traces only when both devices reported each other (`--require-mutual`).
    pub require_mutual: bool,
    /// Where sessions execute their queries: none, in this process; or on a cluster
    /// (`proxima-cluster`'s Ballista client), planned here.
    pub remote: Option<Arc<dyn Remote>>,
}

/// What a session's process runs ([`SessionFactory::node`]), kept in its config for a
/// cluster client to send along.
#[derive(Debug, Clone)]
pub struct Node(pub String);

/// Execution elsewhere: turns a session's state, before anything is registered on it,
/// into one that plans here and executes there. Everything a session gets afterwards
/// (tables, views, functions, the access rule) is registered on the state it returns.
pub trait Remote: std::fmt::Debug + Send + Sync {
    /// The state that executes remotely.
    fn upgrade(&self, state: SessionState) -> Result<SessionState>;
}

/// A runtime reading `store` whose queries take memory from `pool`. It knows the store,
/// the audit log's folder ([`AUDIT_STORE_URL`], when there is one) and, only with
/// [`SessionOptions::local_files`], the machine's files.
fn runtime(store: &Store, pool: Arc<dyn MemoryPool>, options: &SessionOptions) -> Result<Arc<RuntimeEnv>> {
    // New files must be visible to the next query: no cached listings.
    let caches = CacheManagerConfig::default().with_list_files_cache_limit(0);
    let runtime = RuntimeEnvBuilder::new()
        .with_cache_manager(caches)
        .with_memory_pool(pool)
        .build_arc()?;
    if !options.local_files {
        // DataFusion registers the whole file system as `file://` by default.
        runtime.deregister_object_store(ObjectStoreUrl::local_filesystem().as_ref())?;
    }
    runtime.register_object_store(store.object_store_url().as_ref(), Arc::clone(store.reader()));
    runtime.register_parquet_encryption_factory(crate::encryption::FACTORY_ID, store.decryption());
    if let Some(dir) = &options.audit_dir {
        let log = dir.join("log");
        let local_error = |source| crate::Error::LocalStore {
            path: log.clone(),
            source,
        };
        std::fs::create_dir_all(&log).map_err(local_error)?;
        let prefixed =
            LocalFileSystem::new_with_prefix(&log).map_err(|e| local_error(std::io::Error::other(e.to_string())))?;
        runtime.register_object_store(ObjectStoreUrl::parse(AUDIT_STORE_URL)?.as_ref(), Arc::new(prefixed));
    }
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
        let runtime = runtime(&store, Arc::clone(&pool), &options)?;
        Ok(Self {
            index: Arc::new(IndexReader::new(store.clone(), options.identifiers.clone())),
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

    /// What this process runs, as far as a query's rows depend on it: Proxima's version and
    /// the identifier keys' fingerprint. A cluster's nodes must all say the same (a node
    /// with other keys would resolve other encounters, silently).
    pub fn node(&self) -> String {
        let identifiers = match &self.options.identifiers {
            Some(identifiers) => format!("identifier keys {}", identifiers.fingerprint()),
            None => "no identifier keys".to_string(),
        };
        format!("Proxima {} with {identifiers}", env!("CARGO_PKG_VERSION"))
    }

    /// The runtime every session shares (without a per-session memory limit): the store's
    /// object store and decryption, the audit log's folder.
    pub fn runtime(&self) -> &Arc<RuntimeEnv> {
        &self.runtime
    }

    /// Every scalar function of a full session: Proxima's (`proxima_udfs`) and the ones that
    /// resolve sightings with this factory's identifier keys.
    pub fn scalar_functions(&self) -> Vec<ScalarUDF> {
        let mut functions = proxima_udfs::scalar_functions();
        functions.extend(crate::sighting::functions(self.options.identifiers.clone()));
        // What ends a policy relation's plan sent to a cluster (`remote_plan`).
        functions.push(ScalarUDF::from(crate::remote_plan::PolicyBarrier::default()));
        functions
    }

    /// The session of an authenticated user: the role's catalog only
    /// ([`RoleCatalog::of`]), held to it by the [`AccessRule`] on every plan.
    pub async fn session_for(&self, principal: &Principal) -> Result<SessionContext> {
        let catalog = RoleCatalog::of(principal.role);
        let ctx = match catalog {
            RoleCatalog::Full => self.session().await?,
            RoleCatalog::Purpose => self.tracer_session().await?,
            RoleCatalog::Aggregates => self.aggregate_session().await?,
            RoleCatalog::Audit => self.audit_session()?,
            RoleCatalog::Empty => self.empty_session()?,
        };
        let state = ctx.state();
        let mut allowed: Vec<String> = match state.catalog_list().catalog(CATALOG).and_then(|c| c.schema(SCHEMA)) {
            Some(schema) => schema.table_names(),
            None => Vec::new(),
        };
        allowed.extend(state.table_functions().keys().cloned());
        ctx.add_analyzer_rule(Arc::new(AccessRule::new(principal.role, allowed)));
        tracing::debug!(user = %principal.name, role = %principal.role, ?catalog, "session built");
        Ok(ctx)
    }

    /// A tracer's session: observations, encounters, alerts and cases as [`ScopedTable`]s
    /// (the rows of the declared purpose's case, none without one), `trace_contacts` of that
    /// case's device only, `trace_case` of that case only, the GAEN and risk functions.
    async fn tracer_session(&self) -> Result<SessionContext> {
        let full = self.session().await?;
        // The same full session plans the scoped tables and resolves purposes.
        let resolver = Arc::new(PurposeResolver::new(full.clone()));
        let ctx = self.empty_session()?;
        for (name, rule) in [
            ("observations", ScopeRule::Observations),
            ("encounters", ScopeRule::Encounters),
            ("alerts", ScopeRule::Alerts),
            ("cases", ScopeRule::Cases),
        ] {
            let plan = full.table(name).await?.into_unoptimized_plan();
            let table = ScopedTable::new(plan, full.state(), rule, Arc::clone(&resolver));
            ctx.register_table(name, Arc::new(table))?;
        }
        for function in proxima_udfs::scalar_functions() {
            ctx.register_udf(function);
        }
        ctx.register_udtf("en_rpis", Arc::new(proxima_udfs::gaen::EnRpis));
        ctx.register_udtf("trace_contacts", Arc::new(GuardedTrace::new(resolver)));
        ctx.register_udtf("trace_case", Arc::new(TraceCase));
        Ok(ctx)
    }

    /// A session over the audit log only.
    fn audit_session(&self) -> Result<SessionContext> {
        let ctx = self.empty_session()?;
        if self.options.audit_dir.is_some() {
            ctx.register_table(AUDIT_TABLE, audit_table()?)?;
        }
        Ok(ctx)
    }

    /// A session of the aggregates only, computed from a full session that the analyst's
    /// plans never reach.
    async fn aggregate_session(&self) -> Result<SessionContext> {
        let full = self.session().await?;
        let ctx = self.empty_session()?;
        for (name, _) in AGGREGATES {
            let plan = full.table(*name).await?.into_unoptimized_plan();
            ctx.register_table(*name, Arc::new(AggregateView::new(plan, full.state())))?;
        }
        Ok(ctx)
    }

    /// A new session with every table, view and function of Proxima (the local CLI's).
    pub async fn session(&self) -> Result<SessionContext> {
        let ctx = self.empty_session()?;
        for table in Table::ALL.into_iter().filter(|t| t.is_sql_visible()) {
            ctx.register_table(table.name(), self.table_provider(table)?)?;
        }
        for function in self.scalar_functions() {
            ctx.register_udf(function);
        }
        for function in proxima_udfs::aggregate_functions() {
            ctx.register_udaf(function);
        }
        for (name, function) in proxima_udfs::table_functions() {
            ctx.register_udtf(name, function);
        }
        ctx.register_udtf("trace_case", Arc::new(TraceCase));
        for (_name, sql) in VIEWS {
            ctx.sql(sql).await?;
        }
        let min_cell = self.options.min_cell.unwrap_or(DEFAULT_MIN_CELL).to_string();
        let min_count = self.options.min_count.unwrap_or(DEFAULT_MIN_COUNT).to_string();
        for (name, sql) in AGGREGATES {
            let sql_text = sql
                .replace("${min_cell}", &min_cell)
                .replace("${min_count}", &min_count);
            let plan = ctx.state().create_logical_plan(&sql_text).await?;
            ctx.register_table(*name, Arc::new(ViewTable::new(plan, Some(sql.to_string()))))?;
        }
        Ok(ctx)
    }

    /// The settings every session starts with: Proxima's (`proxima.*`), the encounter
    /// lookup `trace_contacts` runs with, Parquet filter pushdown.
    pub fn session_config(&self) -> SessionConfig {
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema(CATALOG, SCHEMA)
            .with_option_extension(proxima_udfs::ProximaOptions {
                require_mutual: self.options.require_mutual,
                ..proxima_udfs::ProximaOptions::default()
            })
            .with_extension(Arc::new(EncounterLookupExtension(
                Arc::clone(&self.index) as Arc<dyn proxima_udfs::trace::EncounterLookup>
            )))
            .with_extension(Arc::new(Node(self.node())));
        if let Some(partitions) = self.options.target_partitions {
            config = config.with_target_partitions(partitions);
        }
        let parquet = &mut config.options_mut().execution.parquet;
        // PERF: evaluate filters while decoding, so lookups of a few devices skip most pages.
        parquet.pushdown_filters = true;
        parquet.reorder_filters = true;
        config
    }

    /// A session with Proxima's settings and memory limits and nothing in its catalog
    /// (executing remotely if the options say so).
    fn empty_session(&self) -> Result<SessionContext> {
        let config = self.session_config();
        let runtime = match self.options.session_memory_limit {
            Some(limit) => runtime(
                &self.store,
                Arc::new(SessionPool::new(Arc::clone(&self.pool), limit)),
                &self.options,
            )?,
            None => Arc::clone(&self.runtime),
        };
        let mut ctx = SessionContext::new_with_config_rt(config, runtime);
        if let Some(remote) = &self.options.remote {
            ctx = SessionContext::new_with_state(remote.upgrade(ctx.state())?);
        }
        // Every Parquet file a session reads by URL (`read_parquet`, compaction) decrypts
        // through the store's keys, as the tables below do.
        ctx.state_ref().write().table_options_mut().parquet.crypto.factory_id =
            Some(crate::encryption::FACTORY_ID.to_string());
        Ok(ctx)
    }

    /// The provider of one of the store's tables, as every session registers it.
    pub fn table_provider(&self, table: Table) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
        let mut parquet = TableParquetOptions::default();
        parquet.crypto.factory_id = Some(crate::encryption::FACTORY_ID.to_string());
        let format = ParquetFormat::default().with_options(parquet);
        let mut options = ListingOptions::new(Arc::new(format)).with_file_extension(".parquet");
        if table.is_day_partitioned() {
            options = options.with_table_partition_cols(vec![(DAY.to_string(), DataType::Date32)]);
        }
        let config = ListingTableConfig::new(self.store.table_url(table)?)
            .with_listing_options(options)
            .with_schema(table.file_schema());
        Ok(Arc::new(StoreTable::new(table, ListingTable::try_new(config)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files sessions can name: the store's (from its root), and the machine's only for
    /// the local CLI.
    #[tokio::test]
    async fn only_the_local_cli_names_the_machines_files() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside.csv");
        std::fs::write(&outside, "secret\nvalue\n").unwrap();
        let store = Store::local(&dir.path().join("store")).unwrap();
        let read = |local_files: bool, location: String| {
            let store = store.clone();
            async move {
                let options = SessionOptions {
                    local_files,
                    ..SessionOptions::default()
                };
                let ctx = SessionFactory::new(store, options).unwrap().session().await.unwrap();
                let ddl = format!("CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{location}'");
                ctx.sql(&ddl).await?;
                ctx.sql("SELECT * FROM t").await?.collect().await
            }
        };
        let path = outside.display().to_string();
        let rows = read(true, path.clone()).await.unwrap();
        assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 1);

        for location in [
            path,
            format!("file://{}", outside.display()),
            format!("{}/../outside.csv", crate::store::LOCAL_STORE_URL),
        ] {
            let err = read(false, location.clone()).await.unwrap_err().to_string();
            assert!(
                // The URL `..` resolves within the store, where there is no such file.
                err.contains("No suitable object store")
                    || err.contains("No files found at proxima://store/outside.csv"),
                "{location}: {err}"
            );
        }
    }
}
