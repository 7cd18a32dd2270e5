//! A tracer's declared purpose, and the rows it opens.
//!
//! A tracer reads nothing until they declare what for: `SET proxima.purpose =
//! 'case:<case_id>'`. The case must exist and be open (reported within
//! `proxima.trace.lookback`). The purpose's **scope** is the case's device and every contact
//! its trace finds (at the time of the report), with their MACs. A tracer's session holds
//! [`ScopedTable`]s: opaque tables whose rows come from a full session's plan filtered to
//! the scope (observations the scope's devices made or that heard their MACs, encounters
//! with one of them on either side, their alerts, the case itself), and
//! `trace_contacts` only of the case's device ([`GuardedTrace`]). The scope is resolved at
//! the first read under a purpose and kept for the session ([`PurposeResolver`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionImpl, TableProvider};
use datafusion::common::plan_err;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SessionState;
use datafusion::logical_expr::expr_rewriter::unnormalize_col;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, TableProviderFilterPushDown, TableType, lit};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionContext, col};
use proxima_udfs::ProximaOptions;

/// Purposes a session keeps resolved before it forgets them.
const MAX_RESOLVED: usize = 16;

/// What a refused read says when no purpose is declared.
const NO_PURPOSE: &str = "a tracer reads only for a declared purpose: SET proxima.purpose = 'case:<case_id>'";

/// The rows a purpose opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The case.
    pub case_id: String,
    /// The case's device.
    pub device: String,
    /// The case's device and every contact its trace found.
    pub devices: Vec<String>,
    /// Their MACs.
    pub macs: Vec<String>,
    /// When the case was reported, microseconds since the epoch (UTC).
    pub reported_at: i64,
}

/// Resolves purposes against the store (through a full session no user plan reaches), and
/// keeps what it resolved for the session.
pub struct PurposeResolver {
    full: SessionContext,
    resolved: Mutex<HashMap<String, Arc<Scope>>>,
}

impl fmt::Debug for PurposeResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PurposeResolver").finish_non_exhaustive()
    }
}

/// The non-null values of a text column (whatever its string type).
fn texts(batches: &[arrow::array::RecordBatch], column: usize) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for batch in batches {
        let values = arrow::compute::cast(batch.column(column), &arrow::datatypes::DataType::Utf8)?;
        let values = values.as_string::<i32>();
        out.extend(
            (0..values.len())
                .filter(|&i| values.is_valid(i))
                .map(|i| values.value(i).to_string()),
        );
    }
    Ok(out)
}

fn in_list(values: &[String]) -> Vec<Expr> {
    values.iter().map(|v| lit(v.clone())).collect()
}

impl PurposeResolver {
    /// A resolver reading through `full`, a session with every table.
    pub fn new(full: SessionContext) -> Self {
        Self {
            full,
            resolved: Mutex::new(HashMap::new()),
        }
    }

    /// The scope of the purpose declared in `session` (an error if none is, or if its case
    /// does not exist or is closed).
    pub async fn scope(&self, session: &dyn Session) -> Result<Arc<Scope>> {
        let options = session
            .config_options()
            .extensions
            .get::<ProximaOptions>()
            .cloned()
            .unwrap_or_default();
        let Some(case_id) = options.purpose.strip_prefix("case:") else {
            return plan_err!("{NO_PURPOSE}");
        };
        if let Some(scope) = self.resolved.lock().map_err(|_| poisoned())?.get(&options.purpose) {
            return Ok(Arc::clone(scope));
        }
        let lookback =
            chrono::Duration::from_std(options.lookback).map_err(|e| DataFusionError::External(Box::new(e)))?;
        // The id was checked to be a UUID when it was set.
        let Some((device, reported_micros)) = find_case(&self.full, case_id).await? else {
            return plan_err!("purpose case:{case_id}: there is no such case");
        };
        let reported = chrono::DateTime::from_timestamp_micros(reported_micros)
            .ok_or_else(|| DataFusionError::Plan(format!("purpose case:{case_id}: its report time is out of range")))?;
        let reported_at = reported.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        if chrono::Utc::now() - reported > lookback {
            return plan_err!(
                "purpose case:{case_id}: the case was reported at {reported_at}, longer ago than proxima.trace.lookback: it is closed"
            );
        }
        let contacts = self
            .full
            .sql(&format!(
                "SELECT contact FROM trace_contacts('{device}', TIMESTAMP '{reported_at}')"
            ))
            .await?
            .collect()
            .await?;
        let mut devices = vec![device.clone()];
        devices.extend(texts(&contacts, 0)?);
        devices.sort();
        devices.dedup();
        let listed: Vec<String> = devices.iter().map(|d| format!("'{d}'")).collect();
        let macs = self
            .full
            .sql(&format!(
                "SELECT mac FROM devices WHERE device_uuid IN ({})",
                listed.join(", ")
            ))
            .await?
            .collect()
            .await?;
        let scope = Arc::new(Scope {
            case_id: case_id.to_string(),
            device,
            devices,
            macs: texts(&macs, 0)?,
            reported_at: reported.timestamp_micros(),
        });
        let mut resolved = self.resolved.lock().map_err(|_| poisoned())?;
        // A login works a few cases at a time; one that tries many keeps the latest.
        if resolved.len() >= MAX_RESOLVED {
            resolved.clear();
        }
        resolved.insert(options.purpose.clone(), Arc::clone(&scope));
        Ok(scope)
    }
}

/// Checks, before a tracer's `SET proxima.purpose = 'case:…'` takes effect, that the
/// purpose resolves (the case exists and is open), so that a wrong id fails at the `SET`
/// rather than at the next read. The check reads the session's `cases` in a copy of its
/// state with the purpose set; the copy shares the session's tables, so the scope it
/// resolves is kept for the reads that follow.
pub async fn check_declared(state: &SessionState, purpose: &str) -> Result<()> {
    let mut probe = state.clone();
    probe.config_mut().options_mut().set("proxima.purpose", purpose)?;
    SessionContext::new_with_state(probe)
        .sql("SELECT count(*) FROM cases")
        .await?
        .collect()
        .await?;
    Ok(())
}

/// The device and report time (microseconds since the epoch, UTC) of the case `case_id`
/// (a UUID, checked by the caller), read through `ctx`, so with that session's rights: a
/// tracer's sees only their purpose's case. `None` if there is no such case.
pub(crate) async fn find_case(ctx: &SessionContext, case_id: &str) -> Result<Option<(String, i64)>> {
    use arrow::datatypes::{DataType, TimestampMicrosecondType};
    let case = ctx
        .sql(&format!(
            "SELECT device_uuid, reported_at FROM cases WHERE case_id = '{case_id}'"
        ))
        .await?
        .collect()
        .await?;
    let Some(batch) = case.iter().find(|b| b.num_rows() > 0) else {
        return Ok(None);
    };
    // Whatever string and time types the table gives (a view or cast may change them).
    let devices = arrow::compute::cast(batch.column(0), &DataType::Utf8)?;
    let times = arrow::compute::cast(batch.column(1), &crate::schema::timestamp_type())?;
    let (devices, times) = (
        devices.as_string::<i32>(),
        times.as_primitive::<TimestampMicrosecondType>(),
    );
    if devices.is_null(0) || times.is_null(0) {
        return Ok(None);
    }
    Ok(Some((devices.value(0).to_string(), times.value(0))))
}

fn poisoned() -> DataFusionError {
    DataFusionError::Internal("the purpose cache lock is poisoned".into())
}

/// Which rows of a table a scope opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeRule {
    /// Observations a scope device made, or that heard a scope device's MAC.
    Observations,
    /// Encounters with a scope device on either side.
    Encounters,
    /// Alerts of the case, or to a scope device.
    Alerts,
    /// The case itself.
    Cases,
}

impl ScopeRule {
    fn filter(self, scope: &Scope) -> Expr {
        let devices = in_list(&scope.devices);
        match self {
            ScopeRule::Observations => col("observer")
                .in_list(devices, false)
                .or(col("observed").in_list(in_list(&scope.macs), false)),
            ScopeRule::Encounters => col("a")
                .in_list(devices.clone(), false)
                .or(col("b").in_list(devices, false)),
            ScopeRule::Alerts => col("case_id")
                .eq(lit(scope.case_id.clone()))
                .or(col("device_uuid").in_list(devices, false)),
            ScopeRule::Cases => col("case_id").eq(lit(scope.case_id.clone())),
        }
    }
}

/// A table a tracer reads: the full session's plan of it, filtered to the purpose's scope.
pub struct ScopedTable {
    plan: LogicalPlan,
    schema: SchemaRef,
    rule: ScopeRule,
    planner: SessionState,
    resolver: Arc<PurposeResolver>,
}

impl fmt::Debug for ScopedTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopedTable")
            .field("rule", &self.rule)
            .finish_non_exhaustive()
    }
}

impl ScopedTable {
    /// The table of `plan` (made in the full session `planner`), scoped by `rule`.
    pub fn new(plan: LogicalPlan, planner: SessionState, rule: ScopeRule, resolver: Arc<PurposeResolver>) -> Self {
        let schema = Arc::new(plan.schema().as_arrow().clone());
        Self {
            plan,
            schema,
            rule,
            planner,
            resolver,
        }
    }
}

impl ScopedTable {
    /// Its plan in the purpose's scope, narrowed as `scan` asks: what stands for it in a
    /// plan sent elsewhere.
    pub(crate) async fn inline(
        &self,
        scan: &datafusion::logical_expr::TableScan,
        state: &dyn Session,
    ) -> Result<LogicalPlan> {
        let scope = self.resolver.scope(state).await?;
        let builder = LogicalPlanBuilder::from(self.plan.clone()).filter(self.rule.filter(&scope))?;
        crate::remote_plan::inline(builder, &self.schema, scan)
    }
}

#[async_trait]
impl TableProvider for ScopedTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        // A filter that cannot fail is applied inside too (so a time window still prunes
        // day folders) and again above. Any other runs above only, on the scope's rows:
        // inside, it would also meet rows outside the scope, and its error on one of them
        // (a division by zero for one device) would tell that they exist.
        Ok(filters
            .iter()
            .map(|filter| match cannot_fail(filter) {
                true => TableProviderFilterPushDown::Inexact,
                false => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let scope = self.resolver.scope(state).await?;
        let mut builder = LogicalPlanBuilder::from(self.plan.clone()).filter(self.rule.filter(&scope))?;
        let safe = filters.iter().filter(|filter| cannot_fail(filter)).cloned();
        if let Some(filter) = conjunction(safe.map(unnormalize_col)) {
            builder = builder.filter(filter)?;
        }
        crate::policy::execute_narrowed(builder, &self.schema, projection, limit, &self.planner).await
    }
}

/// Whether evaluating `expr` on a row can never fail, whatever the row holds: column
/// references, literals (and casts of literals, folded while planning), comparisons,
/// boolean logic, null tests, `BETWEEN` and `IN` lists of those. Arithmetic, casts of
/// columns and functions can fail, so they are not.
fn cannot_fail(expr: &Expr) -> bool {
    use datafusion::logical_expr::Operator;
    match expr {
        Expr::Column(_) | Expr::Literal(..) => true,
        Expr::Alias(alias) => cannot_fail(&alias.expr),
        Expr::BinaryExpr(binary) => {
            matches!(
                binary.op,
                Operator::Eq
                    | Operator::NotEq
                    | Operator::Lt
                    | Operator::LtEq
                    | Operator::Gt
                    | Operator::GtEq
                    | Operator::And
                    | Operator::Or
                    | Operator::IsDistinctFrom
                    | Operator::IsNotDistinctFrom
            ) && cannot_fail(&binary.left)
                && cannot_fail(&binary.right)
        }
        Expr::Not(inner)
        | Expr::IsNull(inner)
        | Expr::IsNotNull(inner)
        | Expr::IsTrue(inner)
        | Expr::IsFalse(inner)
        | Expr::IsNotTrue(inner)
        | Expr::IsNotFalse(inner)
        | Expr::IsUnknown(inner)
        | Expr::IsNotUnknown(inner) => cannot_fail(inner),
        Expr::Between(between) => cannot_fail(&between.expr) && cannot_fail(&between.low) && cannot_fail(&between.high),
        Expr::InList(in_list) => cannot_fail(&in_list.expr) && in_list.list.iter().all(cannot_fail),
        Expr::Cast(cast) => matches!(*cast.expr, Expr::Literal(..)),
        Expr::TryCast(cast) => cannot_fail(&cast.expr),
        _ => false,
    }
}

/// `trace_contacts` for a tracer: only the device of their purpose's case.
#[derive(Debug)]
pub struct GuardedTrace {
    resolver: Arc<PurposeResolver>,
}

impl GuardedTrace {
    /// The guard, resolving purposes with `resolver`.
    pub fn new(resolver: Arc<PurposeResolver>) -> Self {
        Self { resolver }
    }
}

impl TableFunctionImpl for GuardedTrace {
    fn call_with_args(&self, args: datafusion::catalog::TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let call = proxima_udfs::trace::TraceCall::parse(&args)?;
        Ok(Arc::new(GuardedTraceTable {
            inner: call.clone().into_table(),
            call,
            resolver: Arc::clone(&self.resolver),
        }))
    }
}

#[derive(Debug)]
pub(crate) struct GuardedTraceTable {
    inner: Arc<dyn TableProvider>,
    call: proxima_udfs::trace::TraceCall,
    resolver: Arc<PurposeResolver>,
}

impl GuardedTraceTable {
    /// The trace it guards, once the guard let it through: what stands for it in a plan
    /// sent elsewhere.
    pub(crate) async fn checked(&self, state: &dyn Session) -> Result<Arc<dyn TableProvider>> {
        self.check(state).await?;
        Ok(Arc::clone(&self.inner))
    }

    /// The guard: the purpose's case is about the traced device, traced from its report on.
    async fn check(&self, state: &dyn Session) -> Result<()> {
        let scope = self.resolver.scope(state).await?;
        if scope.device != self.call.index {
            return plan_err!(
                "trace_contacts: the purpose case:{} is about device {}, not {}",
                scope.case_id,
                scope.device,
                self.call.index
            );
        }
        // From the report on (while the case is open), never earlier: an earlier time would
        // trace contacts of other periods, outside the case.
        if self.call.at < scope.reported_at {
            return plan_err!(
                "trace_contacts: the purpose case:{} was reported at {}; trace it at that time or later",
                scope.case_id,
                chrono::DateTime::from_timestamp_micros(scope.reported_at)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            );
        }
        Ok(())
    }
}

#[async_trait]
impl TableProvider for GuardedTraceTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.check(state).await?;
        self.inner.scan(state, projection, filters, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::common::tree_node::TreeNode as _;
    use datafusion::prelude::SessionContext;

    /// The filters of a query as the scan is offered them: coerced and simplified.
    async fn pushed(sql_filter: &str) -> Vec<Expr> {
        let ctx = SessionContext::new();
        ctx.sql(
            "CREATE TABLE t (observer VARCHAR, observed_at TIMESTAMP, rssi INT) AS \
             VALUES ('a', TIMESTAMP '2026-01-01 00:00:00', -50)",
        )
        .await
        .unwrap();
        let plan = ctx
            .sql(&format!("SELECT * FROM t WHERE {sql_filter}"))
            .await
            .unwrap()
            .into_optimized_plan()
            .unwrap();
        let mut filters = Vec::new();
        plan.apply(|node| {
            if let LogicalPlan::Filter(filter) = node {
                filters.extend(
                    datafusion::logical_expr::utils::split_conjunction(&filter.predicate)
                        .into_iter()
                        .cloned(),
                );
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .unwrap();
        assert!(!filters.is_empty(), "{sql_filter}: no filter");
        filters
    }

    #[tokio::test]
    async fn only_filters_that_cannot_fail_go_inside_the_scope() {
        for safe in [
            "observed_at >= now() - INTERVAL '1 day'",
            "observed_at BETWEEN TIMESTAMP '2026-01-01' AND TIMESTAMP '2026-01-02'",
            "observer IN ('a', 'b') OR observer IS NULL",
            "NOT (rssi < -90) AND observer <> 'x'",
        ] {
            for filter in pushed(safe).await {
                assert!(cannot_fail(&filter), "{safe}: {filter}");
            }
        }
        for unsafe_ in [
            "1 / (CASE WHEN observer = 'x' THEN 0 ELSE 1 END) = 1",
            "CAST(observer AS INT) = 1",
            "rssi + 2147483647 > 0",
            "length(observer) = 1",
        ] {
            let filters = pushed(unsafe_).await;
            assert!(filters.iter().any(|f| !cannot_fail(f)), "{unsafe_}: {filters:?}");
        }
    }
}
