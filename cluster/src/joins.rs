//! A rule of the scheduler's physical optimiser that keeps the joins Ballista would split
//! wrong in one task.
//!
//! A join that builds one side whole and probes it partition by partition (a hash join in
//! `CollectLeft` mode, a nested loop join) emits the build side's unmatched or matched rows
//! (left, full, left-semi, left-anti and left-mark joins) once, when the *last* probe
//! partition ends: its partitions share that state in memory. Ballista runs each
//! partition as a task of its own, often on another executor, so each one emits them:
//! `SELECT 1 WHERE EXISTS (SELECT 1 FROM encounters)` gave one row per partition of
//! `encounters`. With the probe side shuffled into one partition first, the join is one
//! task and the rows come once.

use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::error::Result;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::projection::ProjectionExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::Partitioning;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::joins::{HashJoinExec, NestedLoopJoinExec, PartitionMode};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};

/// See the module docs.
#[derive(Debug, Default)]
pub struct OneTaskForGlobalJoins;

/// Whether a join of this type emits build-side rows once all probe partitions are done.
fn emits_at_the_end(join_type: JoinType) -> bool {
    matches!(
        join_type,
        JoinType::Left | JoinType::Full | JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark
    )
}

fn needs_one_task(plan: &dyn ExecutionPlan) -> bool {
    if let Some(join) = plan.downcast_ref::<NestedLoopJoinExec>() {
        return emits_at_the_end(*join.join_type());
    }
    if let Some(join) = plan.downcast_ref::<HashJoinExec>() {
        return *join.partition_mode() == PartitionMode::CollectLeft && emits_at_the_end(*join.join_type());
    }
    false
}

/// `plan` shuffled into one partition. A plan without columns (the probe side of an
/// `EXISTS`) gets one for the shuffle, which cannot carry batches without columns, and
/// loses it after.
fn one_partition(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let zero = || -> Arc<dyn PhysicalExpr> { Arc::new(Literal::new(ScalarValue::Int32(Some(0)))) };
    let one = Partitioning::Hash(vec![zero()], 1);
    if !plan.schema().fields().is_empty() {
        return Ok(Arc::new(RepartitionExec::try_new(plan, one)?));
    }
    let carried: Arc<dyn ExecutionPlan> = Arc::new(ProjectionExec::try_new(
        [ProjectionExpr::new(zero(), "proxima_row".to_string())],
        plan,
    )?);
    let shuffled: Arc<dyn ExecutionPlan> = Arc::new(RepartitionExec::try_new(carried, one)?);
    Ok(Arc::new(ProjectionExec::try_new(
        Vec::<ProjectionExpr>::new(),
        shuffled,
    )?))
}

impl PhysicalOptimizerRule for OneTaskForGlobalJoins {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if !needs_one_task(node.as_ref()) {
                return Ok(Transformed::no(node));
            }
            let children = node.children();
            let [build, probe] = children.as_slice() else {
                return Ok(Transformed::no(node));
            };
            if probe.output_partitioning().partition_count() <= 1 {
                return Ok(Transformed::no(node));
            }
            // A shuffle into one partition (Ballista turns a coalesce into a stage whose reader
            // keeps every partition, and drops round-robin repartitions).
            let probe = one_partition(Arc::clone(probe))?;
            let rebuilt = replace_children_if_necessary(Arc::clone(&node), vec![Arc::clone(build), probe])?;
            Ok(Transformed::yes(rebuilt))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "proxima_one_task_for_global_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
