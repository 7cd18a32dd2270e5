//! A plan made here and executed elsewhere (on a Ballista cluster, `crate::Remote`): what
//! must happen where the plan is made, because only the caller's session can do it.
//!
//! The policy's opaque relations hold what the caller may read, resolved through the
//! caller's session; a cluster knows none of them. So before the plan leaves, each is
//! replaced by what it stands for:
//! - an analyst's [`AggregateView`] by its plan;
//! - a tracer's [`ScopedTable`] by its plan filtered to the purpose's scope (the purpose's
//!   case is read now, through this session);
//! - a tracer's guarded `trace_contacts(…)` by the trace, once its guard passed;
//! - a `trace_case(…)` by the `trace_contacts(…)` of its case
//!   ([`crate::trace_case::resolve_case_traces`]).
//!
//! The access rule checked the plan when it was made (it is an analyzer rule), and the
//! replacements are made after, from the policy's own plans: the caller's SQL can neither
//! see nor widen them. Each replacement ends in a [`PolicyBarrier`], which the cluster's
//! optimiser pushes none of the caller's filters through: a filter run below it would see
//! the rows the policy holds back (a suppressed cell's, another case's) and could tell of
//! them through an error. A plan that reads the audit log is not sent at all
//! ([`reads_local_only`]): the log is a folder of this machine.

use std::sync::Arc;

use arrow::datatypes::DataType;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
use datafusion::datasource::listing::ListingTable;
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::error::Result;
use datafusion::execution::SessionState;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::expr_rewriter::unnormalize_col;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    TableScan, Volatility,
};

use crate::policy::AggregateView;
use crate::purpose::{GuardedTraceTable, ScopedTable};

/// What stands for a relation in the plan that is sent.
enum Replacement {
    Plan(LogicalPlan),
    Source(Arc<dyn TableProvider>),
}

/// `plan` ready to be sent (see the module docs), or none if nothing in it needed
/// replacing.
pub async fn resolve(plan: &LogicalPlan, state: &SessionState) -> Result<Option<LogicalPlan>> {
    let traced = crate::trace_case::resolve_case_traces(plan, state).await?;
    let plan = traced.as_ref().unwrap_or(plan);
    let mut scans = Vec::new();
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Ok(provider) = source_as_provider(&scan.source)
            && (provider.downcast_ref::<AggregateView>().is_some()
                || provider.downcast_ref::<ScopedTable>().is_some()
                || provider.downcast_ref::<GuardedTraceTable>().is_some())
        {
            scans.push((scan.clone(), provider));
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if scans.is_empty() {
        return Ok(traced);
    }
    // Keyed by the scan and its provider: scans compare equal whatever their sources (every
    // `trace_contacts(…)` scan is named alike), and one provider may be scanned twice with
    // other columns or filters.
    let mut replacements: Vec<(TableScan, Arc<dyn TableProvider>, Replacement)> = Vec::with_capacity(scans.len());
    for (scan, provider) in scans {
        let replacement = if let Some(view) = provider.downcast_ref::<AggregateView>() {
            Replacement::Plan(view.inline(&scan)?)
        } else if let Some(scoped) = provider.downcast_ref::<ScopedTable>() {
            Replacement::Plan(scoped.inline(&scan, state).await?)
        } else if let Some(guarded) = provider.downcast_ref::<GuardedTraceTable>() {
            Replacement::Source(guarded.checked(state).await?)
        } else {
            continue;
        };
        replacements.push((scan, provider, replacement));
    }
    let replaced = plan.clone().transform_up_with_subqueries(|node| {
        let LogicalPlan::TableScan(scan) = node else {
            return Ok(Transformed::no(node));
        };
        let provider = source_as_provider(&scan.source).ok();
        let found = provider.and_then(|p| {
            replacements
                .iter()
                .find(|(s, r, _)| Arc::ptr_eq(r, &p) && *s == scan)
                .map(|(_, _, replacement)| replacement)
        });
        match found {
            Some(Replacement::Plan(plan)) => Ok(Transformed::yes(plan.clone())),
            Some(Replacement::Source(provider)) => {
                let mut scan = scan;
                scan.source = provider_as_source(Arc::clone(provider));
                Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
            }
            None => Ok(Transformed::no(LogicalPlan::TableScan(scan))),
        }
    })?;
    Ok(Some(replaced.data))
}

/// Whether `plan` reads what only this machine has (the audit log), so must run here.
pub fn reads_local_only(plan: &LogicalPlan) -> bool {
    let mut local = false;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Ok(provider) = source_as_provider(&scan.source)
            && let Some(listing) = provider.downcast_ref::<ListingTable>()
            && listing
                .table_paths()
                .iter()
                .any(|path| path.as_str().starts_with(crate::session::AUDIT_STORE_URL))
        {
            local = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    local
}

/// `proxima_policy_barrier(x)`: `x`, as a volatile function, so that no optimiser moves a
/// filter that reads its result below it (see the module docs).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PolicyBarrier {
    signature: Signature,
}

impl Default for PolicyBarrier {
    fn default() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Volatile),
        }
    }
}

impl ScalarUDFImpl for PolicyBarrier {
    fn name(&self) -> &str {
        "proxima_policy_barrier"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        arg_types
            .first()
            .cloned()
            .ok_or_else(|| datafusion::error::DataFusionError::Plan("proxima_policy_barrier takes one value".into()))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        args.args.into_iter().next().ok_or_else(|| {
            datafusion::error::DataFusionError::Internal("proxima_policy_barrier without a value".into())
        })
    }
}

/// `builder`'s plan (of a relation of `schema`) behind a [`PolicyBarrier`], then narrowed as
/// `scan` asks (its filters, the columns it reads, its limit) and named as the scan was, so
/// that the plan above it reads the same columns.
pub(crate) fn inline(mut builder: LogicalPlanBuilder, schema: &SchemaRef, scan: &TableScan) -> Result<LogicalPlan> {
    let barrier = Arc::new(ScalarUDF::from(PolicyBarrier::default()));
    let columns = schema.fields().iter().map(|field| {
        let column = Expr::Column(Column::new_unqualified(field.name()));
        Expr::ScalarFunction(ScalarFunction::new_udf(Arc::clone(&barrier), vec![column])).alias(field.name())
    });
    builder = builder.project(columns)?;
    if let Some(filter) = conjunction(scan.filters.iter().cloned().map(unnormalize_col)) {
        builder = builder.filter(filter)?;
    }
    if let Some(projection) = &scan.projection {
        let columns = projection
            .iter()
            .map(|&i| Expr::Column(Column::new_unqualified(schema.field(i).name())));
        builder = builder.project(columns)?;
    }
    if let Some(fetch) = scan.fetch {
        builder = builder.limit(0, Some(fetch))?;
    }
    builder.alias(scan.table_name.clone())?.build()
}
