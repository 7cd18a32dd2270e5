//! Proxima's SQL functions: contact tracing, GAEN identifiers and exposure risk.
//!
//! | function | kind | module |
//! |---|---|---|
//! | `trace_contacts(index_uuid, at [, max_order])` | table | [`trace`] |
//! | `en_rpik(tek)`, `en_rpi(tek, interval_number)` | scalar | [`gaen`] |
//! | `en_rpis(tek, rolling_start_interval [, rolling_period])` | table | [`gaen`] |
//! | `exposure_risk(duration_s, rssi, tx_power)` | scalar | [`risk`] |
//! | `hll_sketch(text)`, `hll_merge(sketch)` | aggregate | [`sketch`] |
//! | `hll_count(sketch)` | scalar | [`sketch`] |
//!
//! Their settings ([`ProximaOptions`], `SET proxima.…`) must be put on the
//! session's config before the session is made; [`register_all`] then adds
//! every function. This crate depends on DataFusion only; it reads the
//! session's `devices` table and `encounters` view and knows nothing of where
//! they are stored.
#![warn(missing_docs)]

mod args;
pub mod codec;
pub mod gaen;
pub mod options;
pub mod risk;
pub mod sketch;
pub mod trace;

use std::sync::Arc;

use datafusion::catalog::TableFunctionImpl;
use datafusion::error::Result;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::prelude::SessionContext;

pub use options::ProximaOptions;

/// Every scalar function of Proxima.
pub fn scalar_functions() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::from(gaen::EnRpik::default()),
        ScalarUDF::from(gaen::EnRpi::default()),
        ScalarUDF::from(risk::ExposureRisk::default()),
        ScalarUDF::from(sketch::HllCount::default()),
    ]
}

/// Every aggregate function of Proxima.
pub fn aggregate_functions() -> Vec<AggregateUDF> {
    sketch::aggregate_functions()
}

/// Every table function of Proxima, by name.
pub fn table_functions() -> Vec<(&'static str, Arc<dyn TableFunctionImpl>)> {
    vec![
        ("trace_contacts", Arc::new(trace::TraceContacts)),
        ("en_rpis", Arc::new(gaen::EnRpis)),
    ]
}

/// Registers every Proxima function on a session.
pub fn register_all(ctx: &SessionContext) -> Result<()> {
    for function in scalar_functions() {
        ctx.register_udf(function);
    }
    for function in aggregate_functions() {
        ctx.register_udaf(function);
    }
    for (name, function) in table_functions() {
        ctx.register_udtf(name, function);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names = HashSet::new();
        for f in scalar_functions() {
            assert!(names.insert(f.name().to_string()), "{} registered twice", f.name());
        }
        for f in aggregate_functions() {
            assert!(names.insert(f.name().to_string()), "{} registered twice", f.name());
        }
        for (name, _) in table_functions() {
            assert!(names.insert(name.to_string()), "{name} registered twice");
        }
    }
}
