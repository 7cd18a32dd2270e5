//! `exposure_risk(duration_s, rssi, tx_power)`: weighted minutes of exposure.
//!
//! In the manner of the NHS COVID-19 app's published v1 configuration:
//!
//! ```text
//! attenuation = max(tx_power − rssi, 0) dB
//! bucket      = near if attenuation ≤ 55, medium if ≤ 63, far otherwise
//!               (a missing rssi or tx_power counts as medium)
//! risk        = duration_s / 60 × weight(bucket), weights near 1.0, medium 0.5, far 0.0
//! ```
//!
//! Thresholds and weights are the session settings
//! `proxima.risk.attenuation_thresholds` and `proxima.risk.weights`. About 15
//! weighted minutes is the usual "close contact" bar (2 m for 15 minutes).
//! A NULL duration gives NULL.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Float64Builder};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::error::Result;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};

use crate::args::{ArgKind, coerce, to_arrays, to_columnar};
use crate::options::ProximaOptions;

/// Weighted minutes of one sighting under `options` (None when the duration is unknown).
pub fn weighted_minutes(
    options: &ProximaOptions,
    duration_s: Option<i64>,
    rssi: Option<i64>,
    tx_power: Option<i64>,
) -> Option<f64> {
    let duration_s = duration_s?;
    let [near, medium] = options.attenuation_thresholds;
    let weight = match (rssi, tx_power) {
        (Some(rssi), Some(tx_power)) => {
            let attenuation = (tx_power - rssi).max(0) as f64;
            if attenuation <= near {
                options.weights[0]
            } else if attenuation <= medium {
                options.weights[1]
            } else {
                options.weights[2]
            }
        }
        _ => options.weights[1],
    };
    Some(duration_s as f64 / 60.0 * weight)
}

/// The `exposure_risk` scalar function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ExposureRisk {
    signature: Signature,
}

impl Default for ExposureRisk {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for ExposureRisk {
    fn name(&self) -> &str {
        "exposure_risk"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        coerce(
            self.name(),
            &[ArgKind::Integer, ArgKind::Integer, ArgKind::Integer],
            arg_types,
        )
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let options = args
            .config_options
            .extensions
            .get::<ProximaOptions>()
            .cloned()
            .unwrap_or_default();
        let (arrays, all_scalar) = to_arrays(&args.args, args.number_rows)?;
        let [duration, rssi, tx_power] = [0, 1, 2].map(|i| arrays[i].as_primitive::<Int64Type>());
        let mut out = Float64Builder::with_capacity(duration.len());
        for i in 0..duration.len() {
            let value = |a: &datafusion::arrow::array::Int64Array| (!a.is_null(i)).then(|| a.value(i));
            out.append_option(weighted_minutes(
                &options,
                value(duration),
                value(rssi),
                value(tx_power),
            ));
        }
        to_columnar(Arc::new(out.finish()), all_scalar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_weights() {
        let o = ProximaOptions::default();
        // 10 minutes at attenuation 0 - (-50) = 50 dB: near.
        assert_eq!(weighted_minutes(&o, Some(600), Some(-50), Some(0)), Some(10.0));
        // Exactly 55 dB is still near; 56 is medium; 63 medium; 64 far.
        assert_eq!(weighted_minutes(&o, Some(600), Some(-55), Some(0)), Some(10.0));
        assert_eq!(weighted_minutes(&o, Some(600), Some(-56), Some(0)), Some(5.0));
        assert_eq!(weighted_minutes(&o, Some(600), Some(-63), Some(0)), Some(5.0));
        assert_eq!(weighted_minutes(&o, Some(600), Some(-64), Some(0)), Some(0.0));
        // Negative attenuation counts as 0.
        assert_eq!(weighted_minutes(&o, Some(60), Some(10), Some(0)), Some(1.0));
        // Missing signal: medium.
        assert_eq!(weighted_minutes(&o, Some(600), None, Some(0)), Some(5.0));
        assert_eq!(weighted_minutes(&o, None, Some(-50), Some(0)), None);
    }
}
