//! Distinct counts that merge: `hll_sketch(text)`, `hll_merge(sketch)` and `hll_count(sketch)`.
//!
//! A count of distinct devices cannot be added up across flushes or hours (a device seen in
//! two of them would count twice), so the rollups keep a HyperLogLog sketch of the devices
//! instead: Apache DataSketches' (the `datasketches` crate), `lg_k` [`LG_K`], stored in its
//! HLL_8 form, a byte per bucket (about 4.1 KB: twice HLL_4's, but united and counted 2.3
//! times faster, for it needs no unpacking; BENCHMARKS.md; sketches stored as HLL_4 before
//! are read and united alike). `hll_sketch` makes one from values, `hll_merge` unites sketches (the
//! union of the sets they stand for), and `hll_count` estimates a sketch's distinct count.
//!
//! The estimate is DataSketches' *composite* estimator, which depends only on the set of
//! values a sketch has seen, never on their order or on how the set was split and merged:
//! merging the sketches of a day's flushes gives exactly the count of one sketch over the
//! day's rows, which is what lets a rollup equal a recomputation. Up to a few hundred
//! distinct values a sketch keeps their hashes (exact in every trial measured up to 300);
//! beyond, it is an estimate: a relative standard error of about 1.6 % at `lg_k` 12 (mean
//! absolute error measured 1.0–1.4 % from 1,000 to 1,000,000 values, BENCHMARKS.md).
//!
//! A sketch is bytes anybody could make: `hll_merge` and `hll_count` refuse bytes that are
//! not one with an error, never a panic.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Builder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{ScalarValue, exec_err};
use datafusion::error::Result;
use datafusion::logical_expr::function::AccumulatorArgs;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature,
    Volatility,
};
use datasketches::hll::{HllSketch, HllType, HllUnion};

use crate::args::{to_arrays, to_columnar};

/// log2 of a sketch's buckets: 4,096 buckets, at most about 4.1 KB stored.
pub const LG_K: u8 = 12;

/// The form sketches are stored in (and partial aggregation states passed in).
const STORED: HllType = HllType::Hll8;

/// A sketch from its stored bytes; an error (never a panic) for anything else.
pub fn decode(bytes: &[u8]) -> Result<HllSketch> {
    match std::panic::catch_unwind(|| HllSketch::deserialize(bytes)) {
        Ok(Ok(sketch)) => Ok(sketch),
        Ok(Err(e)) => exec_err!("not a distinct-count sketch: {e}"),
        Err(_) => exec_err!("not a distinct-count sketch: damaged bytes"),
    }
}

/// A sketch's distinct count: the composite estimate, rounded.
pub fn count(sketch: &HllSketch) -> i64 {
    sketch.composite_estimate().round() as i64
}

/// A sketch being built outside SQL (a rollup's devices per cell and hour): values and
/// other sketches go in, the same bytes as `hll_sketch` come out.
pub struct Sketcher(HllUnion);

impl std::fmt::Debug for Sketcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Sketcher").field(&self.count()).finish()
    }
}

impl Default for Sketcher {
    fn default() -> Self {
        Self(HllUnion::new(LG_K).expect("LG_K is a valid lg_k"))
    }
}

impl Sketcher {
    /// Adds a value (hashed as `hll_sketch` hashes text).
    pub fn add(&mut self, value: &str) {
        self.0.update_value(value);
    }

    /// Adds every value another sketch stands for.
    pub fn merge(&mut self, sketch: &[u8]) -> Result<()> {
        self.0.update(&decode(sketch)?);
        Ok(())
    }

    /// The sketch's stored bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_sketch(STORED).serialize()
    }

    /// The distinct count, as `hll_count` says it.
    pub fn count(&self) -> i64 {
        count(&self.0.to_sketch(STORED))
    }

    /// Bytes of memory it holds.
    pub fn estimated_size(&self) -> usize {
        self.0.estimated_size()
    }
}

/// `hll_sketch(value)`, the sketch of a text column's distinct values, and
/// `hll_merge(sketch)`, the union of sketches (NULLs ignored by both).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct HllAggregate {
    input: Input,
    signature: Signature,
}

impl HllAggregate {
    /// `hll_sketch`.
    pub fn sketch() -> Self {
        Self {
            input: Input::Values,
            signature: Signature::uniform(1, vec![DataType::Utf8], Volatility::Immutable),
        }
    }

    /// `hll_merge`.
    pub fn merge() -> Self {
        Self {
            input: Input::Sketches,
            signature: Signature::uniform(1, vec![DataType::Binary], Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for HllAggregate {
    fn name(&self) -> &str {
        match self.input {
            Input::Values => "hll_sketch",
            Input::Sketches => "hll_merge",
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Binary)
    }
    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(Uniting::new(self.input)))
    }
}

/// What an aggregate's input rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Input {
    /// Values to count (`hll_sketch`).
    Values,
    /// Sketches to unite (`hll_merge`).
    Sketches,
}

/// The accumulator of both aggregates: a union, whose partial state is a sketch too.
#[derive(Debug)]
struct Uniting {
    input: Input,
    sketcher: Sketcher,
}

impl Uniting {
    fn new(input: Input) -> Self {
        Self {
            input,
            sketcher: Sketcher::default(),
        }
    }

    fn unite(&mut self, sketches: &ArrayRef) -> Result<()> {
        let sketches = cast(sketches, &DataType::Binary)?;
        for bytes in sketches.as_binary::<i32>().iter().flatten() {
            self.sketcher.merge(bytes)?;
        }
        Ok(())
    }

    fn sketch(&self) -> ScalarValue {
        ScalarValue::Binary(Some(self.sketcher.to_bytes()))
    }
}

impl Accumulator for Uniting {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let [column] = values else {
            return exec_err!("distinct-count sketches take one argument");
        };
        match self.input {
            Input::Values => {
                let column = cast(column, &DataType::Utf8)?;
                for value in column.as_string::<i32>().iter().flatten() {
                    self.sketcher.add(value);
                }
                Ok(())
            }
            Input::Sketches => self.unite(column),
        }
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(self.sketch())
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.sketcher.estimated_size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.sketch()])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        match states {
            [sketches] => self.unite(sketches),
            _ => exec_err!("a distinct-count sketch's partial state is one column"),
        }
    }
}

/// `hll_count(sketch)`: a sketch's distinct count (NULL for NULL).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct HllCount {
    signature: Signature,
}

impl Default for HllCount {
    fn default() -> Self {
        Self {
            signature: Signature::uniform(1, vec![DataType::Binary], Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for HllCount {
    fn name(&self) -> &str {
        "hll_count"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (arrays, all_scalar) = to_arrays(&args.args, args.number_rows)?;
        let sketches = cast(&arrays[0], &DataType::Binary)?;
        let sketches = sketches.as_binary::<i32>();
        let mut out = Int64Builder::with_capacity(sketches.len());
        for bytes in sketches.iter() {
            match bytes {
                Some(bytes) => out.append_value(count(&decode(bytes)?)),
                None => out.append_null(),
            }
        }
        to_columnar(Arc::new(out.finish()), all_scalar)
    }
}

/// The aggregate functions of this module.
pub fn aggregate_functions() -> Vec<AggregateUDF> {
    vec![
        AggregateUDF::from(HllAggregate::sketch()),
        AggregateUDF::from(HllAggregate::merge()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    use datafusion::arrow::array::{BinaryArray, Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::logical_expr::ScalarUDF;
    use datafusion::prelude::SessionContext;

    fn session() -> SessionContext {
        let ctx = SessionContext::new();
        for function in aggregate_functions() {
            ctx.register_udaf(function);
        }
        ctx.register_udf(ScalarUDF::from(HllCount::default()));
        ctx
    }

    /// The sketch of `values`, built by one accumulator.
    fn sketch_of(values: &[String]) -> Vec<u8> {
        let mut acc = Uniting::new(Input::Values);
        let column: ArrayRef = Arc::new(StringArray::from_iter_values(values));
        acc.update_batch(&[column]).unwrap();
        match acc.evaluate().unwrap() {
            ScalarValue::Binary(Some(bytes)) => bytes,
            other => panic!("{other:?}"),
        }
    }

    fn merged(parts: &[Vec<u8>]) -> HllSketch {
        let mut acc = Uniting::new(Input::Sketches);
        let column: ArrayRef = Arc::new(BinaryArray::from_iter_values(parts));
        acc.update_batch(&[column]).unwrap();
        match acc.evaluate().unwrap() {
            ScalarValue::Binary(Some(bytes)) => decode(&bytes).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    /// A deterministic shuffle (xorshift), so that a failure can be replayed.
    fn shuffled<T>(mut items: Vec<T>, mut seed: u64) -> Vec<T> {
        for i in (1..items.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            items.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        items
    }

    #[test]
    fn merged_parts_count_exactly_as_the_whole_set_at_every_size() {
        for (n, seed) in [(1, 3), (7, 5), (200, 11), (1_000, 13), (5_000, 17), (60_000, 19)] {
            // Devices seen more than once, split into parts that overlap.
            let values: Vec<String> = (0..n * 2).map(|i| format!("device-{}", i % n)).collect();
            let whole = count(&decode(&sketch_of(&values)).unwrap());
            let values = shuffled(values, seed);
            let parts: Vec<Vec<u8>> = values.chunks((values.len() / 9).max(1)).map(sketch_of).collect();
            // Merged in any order, and merged in two rounds (as compaction does).
            for order in 0..3 {
                let parts = shuffled(parts.clone(), seed + order);
                assert_eq!(count(&merged(&parts)), whole, "n = {n}");
                let (left, right) = parts.split_at(parts.len() / 2);
                let halves = [left, right]
                    .iter()
                    .filter(|half| !half.is_empty())
                    .map(|half| merged(half).serialize())
                    .collect::<Vec<_>>();
                assert_eq!(count(&merged(&halves)), whole, "n = {n}, two rounds");
            }
            // Exact while small; within 5 % (three standard errors) beyond.
            let error = (whole - n as i64).abs() as f64 / n as f64;
            if n <= 200 {
                assert_eq!(whole, n as i64);
            } else {
                assert!(error < 0.05, "n = {n}: {whole}");
            }
        }
    }

    /// The figures of BENCHMARKS.md ("Distinct counts"): the error of the estimate and a
    /// stored sketch's size, over 20 independent sets per size, each split across 24 sketches
    /// (a day of hourly rollups) and merged. Run with `--ignored --nocapture`.
    #[test]
    #[ignore = "measurement, not a check: prints the figures of BENCHMARKS.md"]
    fn sketch_error_and_size() {
        println!("| distinct values | mean abs. error | max abs. error | stored bytes |");
        println!("|---|---|---|---|");
        for n in [10usize, 100, 300, 1_000, 10_000, 100_000, 1_000_000] {
            let (mut sum, mut max, mut bytes) = (0.0f64, 0.0f64, 0usize);
            for trial in 0..20 {
                let values: Vec<String> = (0..n).map(|i| format!("{trial}-device-{i}")).collect();
                let parts: Vec<Vec<u8>> = values.chunks(n.div_ceil(24)).map(sketch_of).collect();
                let sketch = merged(&parts);
                let error = (count(&sketch) - n as i64).abs() as f64 / n as f64;
                sum += error;
                max = max.max(error);
                bytes = bytes.max(sketch.serialize().len());
            }
            println!("| {n} | {:.2} % | {:.2} % | {bytes} |", sum / 20.0 * 100.0, max * 100.0);
        }
    }

    /// The figures of BENCHMARKS.md ("Distinct counts", merge cost): 2,016 hourly sketches
    /// of 1,000 to 5,000 devices (a region's 14 days × 24 hours × 6 cells) united into 84
    /// day-and-cell sketches and counted, stored as HLL_4 and as HLL_8. Run in release with
    /// `--ignored --nocapture`.
    #[test]
    #[ignore = "measurement, not a check: prints the figures of BENCHMARKS.md"]
    fn sketch_merge_cost() {
        for kind in [HllType::Hll4, HllType::Hll8] {
            let stored: Vec<Vec<u8>> = (0..2016)
                .map(|i| {
                    let mut union = HllUnion::new(LG_K).unwrap();
                    for d in 0..(1000 + (i * 37) % 4000) {
                        union.update_value(format!("{}-{d}", i % 84).as_str());
                    }
                    union.to_sketch(kind).serialize()
                })
                .collect();
            let start = std::time::Instant::now();
            let mut total = 0;
            for group in stored.chunks(24) {
                let mut sketcher = Sketcher::default();
                for bytes in group {
                    sketcher.merge(bytes).unwrap();
                }
                total += decode(&sketcher.to_bytes()).map(|s| count(&s)).unwrap();
            }
            println!(
                "{kind:?}: {} bytes each, 2,016 merged into 84 and counted in {:.1} ms (total {total})",
                stored[0].len(),
                start.elapsed().as_secs_f64() * 1000.0
            );
        }
    }

    #[tokio::test]
    async fn sql_sketches_merge_and_count() {
        let ctx = session();
        let schema = Arc::new(Schema::new(vec![
            Field::new("hour", DataType::Int64, false),
            Field::new("device", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 1, 1, 2, 2, 2])),
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    Some("b"),
                    Some("a"),
                    Some("b"),
                    Some("c"),
                    None,
                ])),
            ],
        )
        .unwrap();
        ctx.register_batch("seen", batch).unwrap();
        let per_hour = "SELECT hour, hll_sketch(device) AS devices FROM seen GROUP BY hour";
        let sql = format!(
            "SELECT hll_count(hll_merge(devices)) AS total FROM ({per_hour}) \
             UNION ALL SELECT hll_count(hll_sketch(device)) FROM seen"
        );
        let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        let totals: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(totals, [3, 3]);
    }

    #[tokio::test]
    async fn bytes_that_are_no_sketch_are_refused() {
        let ctx = session();
        for bytes in ["X''", "X'00'", "X'0201070C0300'", "X'FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF'"] {
            for sql in [
                format!("SELECT hll_count({bytes})"),
                format!("SELECT hll_merge({bytes})"),
            ] {
                let error = match ctx.sql(&sql).await {
                    Ok(df) => df.collect().await.unwrap_err(),
                    Err(e) => e,
                };
                assert!(
                    error.to_string().contains("not a distinct-count sketch"),
                    "{sql}: {error}"
                );
            }
        }
    }
}
