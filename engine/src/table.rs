//! The table provider of the store's tables.
//!
//! A `ListingTable` prunes day folders for predicates on `day` only. Users
//! filter on the timestamp instead (`observed_at >= now() - INTERVAL '2 days'`),
//! so [`StoreTable`] derives the matching `day` bounds from each comparison of
//! a day-partitioned table's time column with a constant and hands both to the
//! listing table: only the matching day folders are listed and read. It also
//! names the table it reads, which is all a cluster needs to rebuild it
//! (`proxima-cluster`'s codec): a plain `ListingTable` would travel without
//! its decryption settings.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::ScalarValue;
use datafusion::datasource::TableProvider;
use datafusion::datasource::listing::ListingTable;
use datafusion::error::Result;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType, col, lit};
use datafusion::physical_plan::ExecutionPlan;

use crate::paths::Table;
use crate::schema::DAY;

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// One of the store's tables: a listing of its Parquet files; for a Hive-style
/// day-partitioned table, `day` is the UTC date of its time column.
#[derive(Debug)]
pub struct StoreTable {
    table: Table,
    inner: ListingTable,
}

impl StoreTable {
    pub(crate) fn new(table: Table, inner: ListingTable) -> Self {
        Self { table, inner }
    }

    /// The table it reads.
    pub fn table(&self) -> Table {
        self.table
    }
}

/// `day` predicates implied by a filter on `time_column` (none if it implies nothing).
fn day_bounds(time_column: &str, filter: &Expr) -> Vec<Expr> {
    let is_time = |e: &Expr| matches!(e, Expr::Column(c) if c.name == time_column);
    match filter {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            if let (true, Some(day)) = (is_time(left), day_of_literal(right)) {
                day_bound(*op, day).into_iter().collect()
            } else if let (true, Some(day)) = (is_time(right), day_of_literal(left)) {
                op.swap().and_then(|op| day_bound(op, day)).into_iter().collect()
            } else {
                vec![]
            }
        }
        Expr::Between(between) if !between.negated && is_time(&between.expr) => {
            let low = day_of_literal(&between.low).map(|d| col(DAY).gt_eq(date_lit(d)));
            let high = day_of_literal(&between.high).map(|d| col(DAY).lt_eq(date_lit(d)));
            low.into_iter().chain(high).collect()
        }
        _ => vec![],
    }
}

/// The UTC day (days since the epoch) of a timestamp literal.
fn day_of_literal(expr: &Expr) -> Option<i32> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    let micros = match value {
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000)?,
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1_000)?,
        ScalarValue::TimestampMicrosecond(Some(v), _) => *v,
        ScalarValue::TimestampNanosecond(Some(v), _) => v.div_euclid(1_000),
        _ => return None,
    };
    i32::try_from(micros.div_euclid(MICROS_PER_DAY)).ok()
}

fn date_lit(day: i32) -> Expr {
    lit(ScalarValue::Date32(Some(day)))
}

/// The bound on `day` implied by `time_column <op> <a timestamp on day>`.
fn day_bound(op: Operator, day: i32) -> Option<Expr> {
    let day_col = col(DAY);
    match op {
        Operator::Eq => Some(day_col.eq(date_lit(day))),
        Operator::Gt | Operator::GtEq => Some(day_col.gt_eq(date_lit(day))),
        Operator::Lt | Operator::LtEq => Some(day_col.lt_eq(date_lit(day))),
        _ => None,
    }
}

#[async_trait]
impl TableProvider for StoreTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut all_filters = filters.to_vec();
        if let Some(time_column) = self.table.time_column() {
            all_filters.extend(filters.iter().flat_map(|f| day_bounds(time_column, f)));
        }
        self.inner.scan(state, projection, &all_filters, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(micros: i64) -> Expr {
        lit(ScalarValue::TimestampMicrosecond(Some(micros), Some("UTC".into())))
    }

    fn bounds(filter: Expr) -> Vec<String> {
        day_bounds("observed_at", &filter)
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn bounds_from_comparisons() {
        // 2026-11-29T12:00:00Z lies on day 20_786 since the epoch.
        let noon = 20_786 * MICROS_PER_DAY + 12 * 3_600_000_000;
        let at = |e: Expr| e.to_string();
        assert_eq!(
            bounds(col("observed_at").gt_eq(ts(noon))),
            [at(col(DAY).gt_eq(date_lit(20_786)))]
        );
        assert_eq!(
            bounds(ts(noon).gt(col("observed_at"))),
            [at(col(DAY).lt_eq(date_lit(20_786)))]
        );
        assert_eq!(
            bounds(col("observed_at").eq(ts(noon))),
            [at(col(DAY).eq(date_lit(20_786)))]
        );
        assert_eq!(
            bounds(col("observed_at").between(ts(noon - MICROS_PER_DAY), ts(noon))),
            [
                at(col(DAY).gt_eq(date_lit(20_785))),
                at(col(DAY).lt_eq(date_lit(20_786)))
            ]
        );
        // Before the epoch, days round down.
        assert_eq!(
            bounds(ts(-1).lt_eq(col("observed_at"))),
            [at(col(DAY).gt_eq(date_lit(-1)))]
        );
        assert!(bounds(col("duration_s").gt_eq(lit(3))).is_empty());
        assert!(bounds(col("observed_at").not_eq(ts(noon))).is_empty());
    }
}
