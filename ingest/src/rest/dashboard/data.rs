//! What the dashboard reads, and the downloads: SQL over the analysts' aggregate views
//! only (`daily_cell_rates`, `case_rollup` and the intervention job over them), run in the
//! signed-in analyst's own session, so the role's policy (aggregates only, small cells and
//! counts suppressed) holds for the page exactly as over Flight SQL.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Date32Type, Float64Type, Schema};
use chrono::NaiveDate;
use proxima_engine::{Principal, SessionFactory};

use crate::rest::error::{ApiError, ApiResult};

/// Contacts, cases and alerts per day, summed over the cells each view shows (a count the
/// view suppresses is in no sum; a day whose every count is suppressed is NULL, a day with
/// no case in any cell 0), and for each count the cells whose count was suppressed (the
/// sum is then a lower bound, and the page says so).
pub const TRENDS_SQL: &str = "\
SELECT r.day, r.devices, r.contacts, \
  CASE WHEN c.day IS NULL THEN 0 ELSE c.suspected END AS suspected, \
  CASE WHEN c.day IS NULL THEN 0 ELSE c.confirmed END AS confirmed, \
  CASE WHEN c.day IS NULL THEN 0 ELSE c.alerts_high END AS alerts_high, \
  CASE WHEN c.day IS NULL THEN 0 ELSE c.alerts_medium END AS alerts_medium, \
  coalesce(c.suspected_suppressed, 0) AS suspected_suppressed, \
  coalesce(c.confirmed_suppressed, 0) AS confirmed_suppressed, \
  coalesce(c.alerts_high_suppressed, 0) AS alerts_high_suppressed, \
  coalesce(c.alerts_medium_suppressed, 0) AS alerts_medium_suppressed \
FROM (SELECT day, sum(devices) AS devices, sum(contacts) AS contacts FROM daily_cell_rates GROUP BY day) AS r \
LEFT JOIN (SELECT day, sum(suspected) AS suspected, sum(confirmed) AS confirmed, \
  sum(alerts_high) AS alerts_high, sum(alerts_medium) AS alerts_medium, \
  count(*) - count(suspected) AS suspected_suppressed, count(*) - count(confirmed) AS confirmed_suppressed, \
  count(*) - count(alerts_high) AS alerts_high_suppressed, \
  count(*) - count(alerts_medium) AS alerts_medium_suppressed FROM case_rollup GROUP BY day) AS c \
  ON r.day = c.day \
ORDER BY r.day";

/// Every day and cell `daily_cell_rates` shows.
pub const CELLS_SQL: &str = "\
SELECT day, cell, devices, contacts, contacts_per_device, confirmed, confirmed_per_1000_devices \
FROM daily_cell_rates ORDER BY day, cell";

/// The policy-intervention job, run with the dashboard's parameters.
const INTERVENTION_JOB: &str = include_str!("../../../../sql/jobs/intervention.sql");

/// The views the dashboard's statements read (named in each call's audit record).
pub const VIEWS_READ: &[&str] = &["daily_cell_rates", "case_rollup"];

/// The intervention job with its parameters bound (each a quoted literal).
pub fn intervention_sql(region: &str, date: NaiveDate, from: NaiveDate, to: NaiveDate) -> ApiResult<String> {
    let params: BTreeMap<String, String> = [
        ("region", region.to_string()),
        ("date", date.to_string()),
        ("from", from.to_string()),
        ("to", to.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    proxima_engine::script::substitute(INTERVENTION_JOB, &params)
        .map_err(|e| ApiError::internal("the intervention job could not be prepared", e))
}

/// Runs `sql` in `principal`'s own session.
pub async fn query(factory: &SessionFactory, principal: &Principal, sql: &str) -> ApiResult<Vec<RecordBatch>> {
    Ok(query_with_schema(factory, principal, sql).await?.1)
}

/// [`query`], with the result's schema (what a download of no rows still has a header of).
pub async fn query_with_schema(
    factory: &SessionFactory,
    principal: &Principal,
    sql: &str,
) -> ApiResult<(Schema, Vec<RecordBatch>)> {
    let failed = |e: datafusion::error::DataFusionError| ApiError::internal("a dashboard query failed", e);
    let ctx = factory
        .session_for(principal)
        .await
        .map_err(|e| ApiError::internal("the analyst's session could not be opened", e))?;
    let frame = ctx.sql(sql).await.map_err(failed)?;
    let schema = frame.schema().as_arrow().clone();
    let batches = frame.collect().await.map_err(failed)?;
    crate::rest::audit::statement(sql, batches.iter().map(RecordBatch::num_rows).sum());
    Ok((schema, batches))
}

/// A column of every batch as numbers (NULL stays `None`).
pub fn numbers(batches: &[RecordBatch], name: &str) -> ApiResult<Vec<Option<f64>>> {
    let mut out = Vec::new();
    for batch in batches {
        let column = column(batch, name)?;
        let column = arrow::compute::cast(column, &DataType::Float64)
            .map_err(|e| ApiError::internal("a dashboard column is not a number", e))?;
        out.extend(column.as_primitive::<Float64Type>().iter());
    }
    Ok(out)
}

/// A date column of every batch.
pub fn days(batches: &[RecordBatch], name: &str) -> ApiResult<Vec<NaiveDate>> {
    let mut out = Vec::new();
    for batch in batches {
        let column = column(batch, name)?
            .as_primitive_opt::<Date32Type>()
            .ok_or_else(|| ApiError::internal("a dashboard column", format!("{name} is not a date")))?;
        for i in 0..column.len() {
            out.push(
                column
                    .value_as_date(i)
                    .ok_or_else(|| ApiError::internal("a dashboard column", format!("{name} holds an invalid date")))?,
            );
        }
    }
    Ok(out)
}

/// A text column of every batch.
pub fn texts(batches: &[RecordBatch], name: &str) -> ApiResult<Vec<String>> {
    let mut out = Vec::new();
    for batch in batches {
        let column = arrow::compute::cast(column(batch, name)?, &DataType::Utf8)
            .map_err(|e| ApiError::internal("a dashboard column is not text", e))?;
        out.extend(
            column
                .as_string::<i32>()
                .iter()
                .map(|v| v.unwrap_or_default().to_string()),
        );
    }
    Ok(out)
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> ApiResult<&'a dyn Array> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| ApiError::internal("a dashboard query", format!("no column {name}")))
}

/// Rows as a JSON array of objects, a suppressed value as `null` (never a number).
pub fn to_json(batches: &[RecordBatch]) -> ApiResult<Vec<u8>> {
    let mut writer = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::JsonArray>(Vec::new());
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    writer
        .write_batches(&refs)
        .and_then(|()| writer.finish())
        .map_err(|e| ApiError::internal("the download could not be written", e))?;
    let mut bytes = writer.into_inner();
    if bytes.is_empty() {
        bytes.extend_from_slice(b"[]");
    }
    Ok(bytes)
}

/// Rows as CSV with a header, a suppressed value as an empty field.
pub fn to_csv(batches: &[RecordBatch], header_of: &Schema) -> ApiResult<Vec<u8>> {
    let mut bytes = Vec::new();
    {
        let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(&mut bytes);
        let empty = RecordBatch::new_empty(std::sync::Arc::new(header_of.clone()));
        let written = if batches.is_empty() {
            writer.write(&empty)
        } else {
            batches.iter().try_for_each(|b| writer.write(b))
        };
        written.map_err(|e| ApiError::internal("the download could not be written", e))?;
    }
    Ok(bytes)
}
