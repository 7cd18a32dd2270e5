//! `trace_case(case_id [, max_order])`: the contacts of a case, found from its id.
//!
//! It is `trace_contacts` of the case's device at the case's report time, so that tracer
//! jobs take the case they are for rather than a device and a time. The case is read, and
//! the trace run, through the caller's own session: in a tracer's, `cases` holds only the
//! declared purpose's case and `trace_contacts` takes only its device, so a tracer traces
//! that case and no other (another id is "no such case", as for an id that does not
//! exist); a full session (the local CLI) traces any case.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::error::Result;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use proxima_udfs::trace::{constant_argument, is_uuid, output_schema};

const NAME: &str = "trace_case";

/// The table function registered as `trace_case`.
#[derive(Debug, Default)]
pub struct TraceCase;

impl TableFunctionImpl for TraceCase {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        if !(1..=2).contains(&args.exprs().len()) {
            return plan_err!(
                "{NAME}(case_id [, max_order]) takes 1 or 2 arguments, got {}",
                args.exprs().len()
            );
        }
        let case_id = match constant_argument(NAME, &args, 1, "case_id")? {
            ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)) => s,
            other => return plan_err!("{NAME}: argument 1 (case_id) must be a case id as text, got {other}"),
        };
        if !is_uuid(&case_id) {
            return plan_err!("{NAME}: argument 1 (case_id): '{case_id}' is not a case id (8-4-4-4-12 hex digits)");
        }
        // Checked by trace_contacts, which it is handed to.
        let max_order = match args.exprs().len() {
            2 => Some(constant_argument(NAME, &args, 2, "max_order")?),
            _ => None,
        };
        Ok(Arc::new(CaseTraceTable {
            case_id: case_id.to_ascii_lowercase(),
            max_order,
        }))
    }
}

/// The relation a `trace_case(…)` call stands for.
#[derive(Debug)]
struct CaseTraceTable {
    case_id: String,
    max_order: Option<ScalarValue>,
}

#[async_trait]
impl TableProvider for CaseTraceTable {
    fn schema(&self) -> SchemaRef {
        output_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(state) = state.as_any().downcast_ref::<SessionState>() else {
            return plan_err!("{NAME} runs only in a Proxima session");
        };
        let trace = self.trace(state).await?;
        // Named as the function it scans, which the caller's policy allows or refuses.
        let builder = LogicalPlanBuilder::scan(
            "trace_contacts",
            datafusion::datasource::provider_as_source(trace),
            None,
        )?;
        crate::policy::execute_narrowed(builder, &output_schema(), projection, limit, state).await
    }
}

impl CaseTraceTable {
    /// The `trace_contacts(…)` relation of the case, read through `state`: the caller's
    /// own session, whose catalog and policy decide what it may read.
    async fn trace(&self, state: &SessionState) -> Result<Arc<dyn TableProvider>> {
        let ctx = SessionContext::new_with_state(state.clone());
        // The id was checked to be a UUID.
        let Some((device, reported_at)) = crate::purpose::find_case(&ctx, &self.case_id).await? else {
            return plan_err!("{NAME}: there is no case {}", self.case_id);
        };
        let mut args = vec![
            datafusion::logical_expr::lit(device),
            datafusion::logical_expr::lit(ScalarValue::TimestampMicrosecond(Some(reported_at), Some("UTC".into()))),
        ];
        if let Some(order) = &self.max_order {
            args.push(datafusion::logical_expr::lit(order.clone()));
        }
        state
            .table_functions()
            .get("trace_contacts")
            .ok_or_else(|| {
                datafusion::error::DataFusionError::Plan(format!("{NAME}: trace_contacts is not available"))
            })?
            .create_table_provider_with_args(TableFunctionArgs::new(&args, state))
    }
}

/// `plan` with each `trace_case(…)` relation replaced by the `trace_contacts(…)` relation
/// of its case, read through `state` (the caller's session, so its policy applies), or
/// none if it has no such relation: what a session that executes elsewhere does before
/// sending its plan, since the case is read, like any relation, where the plan is made.
pub async fn resolve_case_traces(plan: &LogicalPlan, state: &SessionState) -> Result<Option<LogicalPlan>> {
    let mut calls = Vec::new();
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Ok(provider) = source_as_provider(&scan.source)
            && let Some(call) = provider.downcast_ref::<CaseTraceTable>()
        {
            calls.push((call.case_id.clone(), call.max_order.clone()));
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if calls.is_empty() {
        return Ok(None);
    }
    let mut traces = Vec::new();
    for (case_id, max_order) in calls {
        let table = CaseTraceTable { case_id, max_order };
        let trace = table.trace(state).await?;
        traces.push((table, trace));
    }
    let replaced = plan.clone().transform_up_with_subqueries(|node| {
        let LogicalPlan::TableScan(mut scan) = node else {
            return Ok(Transformed::no(node));
        };
        let found = source_as_provider(&scan.source).ok().and_then(|provider| {
            let call = provider.downcast_ref::<CaseTraceTable>()?;
            traces
                .iter()
                .find(|(t, _)| t.case_id == call.case_id && t.max_order == call.max_order)
                .map(|(_, trace)| Arc::clone(trace))
        });
        match found {
            Some(trace) => {
                scan.source = provider_as_source(trace);
                Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
            }
            None => Ok(Transformed::no(LogicalPlan::TableScan(scan))),
        }
    })?;
    Ok(Some(replaced.data))
}
