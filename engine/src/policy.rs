//! What each role's sessions may read, and the analyzer rule that holds every plan to it.
//!
//! Two layers, so that one mistake does not open the data:
//! 1. **The catalog.** [`crate::SessionFactory::session_for`] registers only what the role
//!    may use ([`RoleCatalog`]): a name it may not use is not there, so naming it fails
//!    exactly as a name that does not exist, and `information_schema`, `SHOW TABLES` and
//!    Flight SQL's `GetTables` do not list it.
//! 2. **The rule.** [`AccessRule`] runs on every plan the session executes (it is an
//!    analyzer rule, so it sees the plan of a statement, of `EXPLAIN`, of a prepared
//!    statement once bound) and checks every table scan, inside subqueries, CTEs, unions
//!    and joins too (`apply_with_subqueries`), against the role's list; anything else is
//!    refused as "not found". It fails closed: a scan of a name not on the list is refused
//!    even if some other path put it in the catalog.
//!
//! An analyst's aggregates are [`AggregateView`]s: tables of their own whose rows come from
//! a plan made in a full session, so the analyst's plans name only the aggregate and never
//! the observations under it (a SQL view would be inlined into its tables at planning).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{TableReference, plan_err};
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, SessionState, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, TableType};
use datafusion::optimizer::AnalyzerRule;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::prelude::col;

use crate::access::Role;

/// DataFusion's own table functions, which read no data: every role may call them.
const BUILTIN_TABLE_FUNCTIONS: [&str; 2] = ["generate_series", "range"];

/// What one role's sessions hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleCatalog {
    /// Every table, view and function of Proxima (the local CLI).
    Full,
    /// The rows a declared purpose opens (tracers): see [`crate::purpose`].
    Purpose,
    /// The aggregate views only, with small cells suppressed (analysts).
    Aggregates,
    /// The `audit` table only (auditors).
    Audit,
    /// Nothing: admins run the platform and read no data.
    Empty,
}

impl RoleCatalog {
    /// The catalog of `role`.
    pub fn of(role: Role) -> Self {
        match role {
            Role::Tracer => RoleCatalog::Purpose,
            Role::Analyst => RoleCatalog::Aggregates,
            Role::Auditor => RoleCatalog::Audit,
            // Stations and gateways never get a session (their login is refused).
            Role::Admin | Role::Station | Role::Ingest => RoleCatalog::Empty,
        }
    }
}

/// The analyzer rule that refuses any scan of a table or table function not in `allowed`.
#[derive(Debug, Clone)]
pub struct AccessRule {
    role: Role,
    allowed: BTreeSet<String>,
}

impl AccessRule {
    /// A rule for `role` allowing scans of `allowed` (and `information_schema`, which shows
    /// only the session's own catalog, and DataFusion's data-free table functions).
    pub fn new(role: Role, allowed: impl IntoIterator<Item = String>) -> Self {
        let mut allowed: BTreeSet<String> = allowed.into_iter().collect();
        allowed.extend(BUILTIN_TABLE_FUNCTIONS.map(String::from));
        Self { role, allowed }
    }

    fn allows(&self, name: &TableReference) -> bool {
        match name.schema() {
            Some("information_schema") => true,
            Some(schema) if schema != crate::session::SCHEMA => false,
            _ => match name.catalog() {
                Some(catalog) if catalog != crate::session::CATALOG => false,
                // A table function's scan is named `name()`.
                _ => {
                    let table = name.table();
                    self.allowed.contains(table.strip_suffix("()").unwrap_or(table))
                }
            },
        }
    }
}

impl AnalyzerRule for AccessRule {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        let mut refused = None;
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node
                && !self.allows(&scan.table_name)
            {
                refused = Some(scan.table_name.clone());
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        match refused {
            // The words of DataFusion's own error for a missing table: no oracle.
            Some(name) => {
                tracing::warn!(target: "proxima::policy", role = %self.role, table = %name, "scan refused by the access rule");
                plan_err!("table '{name}' not found")
            }
            None => Ok(plan),
        }
    }

    fn name(&self) -> &str {
        "proxima_access"
    }
}

/// Checks `plan` against the access rule of the session `state` belongs to, before
/// anything runs: what a network service does with every statement, so that even
/// `EXPLAIN` (whose analysis DataFusion reports as text rather than as an error) and a
/// `PREPARE` are refused. A session without the rule is refused outright (fail closed).
pub fn check_plan(state: &SessionState, plan: &LogicalPlan) -> Result<()> {
    let rule = state
        .analyzer()
        .rules
        .iter()
        .find(|rule| rule.name() == "proxima_access")
        .ok_or_else(|| datafusion::error::DataFusionError::Plan("no access policy in this session: refused".into()))?;
    rule.analyze(plan.clone(), state.config_options()).map(|_| ())
}

/// An aggregate an analyst may read: its rows come from `plan`, planned and executed with
/// a full session's catalog, while the analyst's own plan names only this table.
pub struct AggregateView {
    plan: LogicalPlan,
    schema: SchemaRef,
    /// A full session, used only to turn `plan` into an execution plan (the analyst's own
    /// state would refuse the tables under it). The rows are computed with the analyst's
    /// task context, so the analyst's memory limits apply.
    planner: SessionState,
}

impl fmt::Debug for AggregateView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateView")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl AggregateView {
    /// The aggregate of `plan`, planned in `planner` (a full session's state).
    pub fn new(plan: LogicalPlan, planner: SessionState) -> Self {
        let schema = Arc::new(plan.schema().as_arrow().clone());
        Self { plan, schema, planner }
    }

    /// Its plan, narrowed as `scan` asks: what stands for it in a plan sent elsewhere.
    pub(crate) fn inline(&self, scan: &datafusion::logical_expr::TableScan) -> Result<LogicalPlan> {
        crate::remote_plan::inline(LogicalPlanBuilder::from(self.plan.clone()), &self.schema, scan)
    }
}

#[async_trait]
impl TableProvider for AggregateView {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // Filters are applied above the scan (none is pushed down), so only the projection
        // and the limit narrow what is computed.
        debug_assert!(filters.is_empty());
        let builder = LogicalPlanBuilder::from(self.plan.clone());
        execute_narrowed(builder, &self.schema, projection, limit, &self.planner).await
    }
}

/// The execution plan of `builder` (a plan over a table of `schema`) narrowed to a scan's
/// `projection` and `limit`, planned in `planner`: how the opaque tables of the policy
/// ([`AggregateView`], [`crate::purpose::ScopedTable`]) answer a scan.
pub(crate) async fn execute_narrowed(
    mut builder: LogicalPlanBuilder,
    schema: &SchemaRef,
    projection: Option<&Vec<usize>>,
    limit: Option<usize>,
    planner: &SessionState,
) -> Result<Arc<dyn ExecutionPlan>> {
    if let Some(projection) = projection {
        let columns: Vec<Expr> = projection.iter().map(|&i| col(schema.field(i).name())).collect();
        builder = builder.project(columns)?;
    }
    if let Some(limit) = limit {
        builder = builder.limit(0, Some(limit))?;
    }
    let plan = planner.create_physical_plan(&builder.build()?).await?;
    Ok(Arc::new(Sealed(plan)))
}

/// A plan that `planner` has already optimised, shown to the session that scans the opaque
/// table as one leaf: that session's physical optimiser must not rework it (optimising a
/// plan twice breaks it: a hash join whose dynamic filter is built cannot be swapped), and
/// its EXPLAIN shows the table, not what the table reads.
#[derive(Debug)]
struct Sealed(Arc<dyn ExecutionPlan>);

impl DisplayAs for Sealed {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "SealedExec: a policy table's own plan")
    }
}

impl ExecutionPlan for Sealed {
    fn name(&self) -> &str {
        "SealedExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.0.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            datafusion::common::internal_err!("SealedExec has no children")
        }
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        self.0.execute(partition, context)
    }

    fn metrics(&self) -> Option<datafusion::physical_plan::metrics::MetricsSet> {
        self.0.metrics()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn scans_off_the_list_fail_as_missing_tables_wherever_they_hide() {
        let ctx =
            SessionContext::new_with_config(datafusion::prelude::SessionConfig::new().with_information_schema(true));
        ctx.sql("CREATE TABLE secret AS SELECT 1 AS x").await.unwrap();
        ctx.sql("CREATE TABLE open AS SELECT 2 AS y").await.unwrap();
        let rule = AccessRule::new(Role::Analyst, ["open".to_string()]);
        let check = async |sql: &str| {
            let plan = ctx.state().create_logical_plan(sql).await.unwrap();
            rule.analyze(plan, &ConfigOptions::default()).map(|_| ())
        };
        for sql in [
            "SELECT * FROM secret",
            "SELECT * FROM open WHERE y IN (SELECT x FROM secret)",
            "SELECT * FROM open WHERE EXISTS (SELECT 1 FROM secret)",
            "SELECT (SELECT max(x) FROM secret) FROM open",
            "WITH s AS (SELECT x FROM secret) SELECT * FROM s",
            "SELECT y FROM open UNION ALL SELECT x FROM secret",
            "SELECT * FROM open JOIN secret ON y = x",
            "EXPLAIN SELECT * FROM secret",
            "PREPARE p(INT) AS SELECT * FROM secret WHERE x = $1",
            "CREATE VIEW v AS SELECT * FROM secret",
        ] {
            let err = check(sql).await.unwrap_err().to_string();
            assert!(err.contains("table 'secret' not found"), "{sql}: {err}");
        }
        // Another catalog's table of an allowed name is not the allowed table.
        let err = check("SELECT * FROM datafusion.public.open")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not found"), "{err}");
        check("SELECT count(*) FROM open, generate_series(1, 3)").await.unwrap();
        check("SELECT * FROM information_schema.tables").await.unwrap();
        // Installed on a session, it holds every plan the session runs.
        ctx.add_analyzer_rule(Arc::new(rule.clone()));
        let err = ctx
            .sql("SELECT * FROM secret")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("table 'secret' not found"), "{err}");
        assert!(
            check_plan(
                &ctx.state(),
                &ctx.state().create_logical_plan("SELECT * FROM secret").await.unwrap()
            )
            .is_err()
        );
        let bare = SessionContext::new();
        let err = check_plan(
            &bare.state(),
            &bare.state().create_logical_plan("SELECT 1").await.unwrap(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no access policy"), "{err}");
    }
}
