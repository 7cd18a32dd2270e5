//! GAEN (Apple/Google Exposure Notification) identifiers in SQL.
//!
//! Follows the Exposure Notification cryptography specification:
//! `RPIK = HKDF-SHA256(TEK, salt = none, info = "EN-RPIK", 16 bytes)` and
//! `RPI = AES-128(RPIK, "EN-RPI" ‖ 6 zero bytes ‖ ENIntervalNumber as little-endian u32)`,
//! where `ENIntervalNumber = unix seconds / 600` and a key covers 144 intervals.
//! Keys and identifiers are 32-character lowercase hex text, as Proxima stores RPIs,
//! so `JOIN en_rpis(tek, start) r ON o.observed = r.rpi` finds every sighting of a key.

use std::sync::Arc;

use aes::Aes128;
use aes::cipher::{BlockCipherEncrypt, KeyInit};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringBuilder, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::datasource::MemTable;
use datafusion::error::Result;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};
use hkdf::Hkdf;
use sha2::Sha256;

use crate::args::{ArgKind, coerce, constant, simplifier, to_arrays, to_columnar};

/// Seconds in one ENIntervalNumber.
pub const INTERVAL_SECONDS: i64 = 600;
/// Intervals a temporary exposure key covers by default (one day).
pub const DEFAULT_ROLLING_PERIOD: i64 = 144;

fn parse_key(function: &str, hex_key: &str) -> Result<[u8; 16]> {
    let mut key = [0u8; 16];
    match hex::decode_to_slice(hex_key.trim(), &mut key) {
        Ok(()) => Ok(key),
        Err(_) => exec_err!("{function}: '{hex_key}' is not a key of 32 hex digits"),
    }
}

/// The rolling proximity identifier key of a temporary exposure key.
pub fn rpik(tek: &[u8; 16]) -> [u8; 16] {
    let mut okm = [0u8; 16];
    Hkdf::<Sha256>::new(None, tek)
        .expand(b"EN-RPIK", &mut okm)
        .expect("16 bytes is a valid HKDF-SHA256 output length");
    okm
}

/// The rolling proximity identifier of `rpik` in interval `interval_number`.
pub fn rpi(rpik: &[u8; 16], interval_number: u32) -> [u8; 16] {
    let mut block = [0u8; 16];
    block[..6].copy_from_slice(b"EN-RPI");
    block[12..].copy_from_slice(&interval_number.to_le_bytes());
    let cipher = Aes128::new(rpik.into());
    let mut block = block.into();
    cipher.encrypt_block(&mut block);
    block.into()
}

fn interval(function: &str, value: i64) -> Result<u32> {
    u32::try_from(value).or_else(|_| exec_err!("{function}: interval number {value} is out of range 0..4294967295"))
}

/// `en_rpik(tek)`: the 16-byte rolling proximity identifier key of a TEK, as hex.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct EnRpik {
    signature: Signature,
}

impl Default for EnRpik {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for EnRpik {
    fn name(&self) -> &str {
        "en_rpik"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        coerce(self.name(), &[ArgKind::Text], arg_types)
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (arrays, all_scalar) = to_arrays(&args.args, args.number_rows)?;
        let teks = arrays[0].as_string::<i32>();
        let mut out = StringBuilder::with_capacity(teks.len(), teks.len() * 32);
        for tek in teks.iter() {
            match tek {
                Some(tek) => out.append_value(hex::encode(rpik(&parse_key(self.name(), tek)?))),
                None => out.append_null(),
            }
        }
        to_columnar(Arc::new(out.finish()), all_scalar)
    }
}

/// `en_rpi(tek, interval_number)`: the rolling proximity identifier of a TEK in an interval, as hex.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct EnRpi {
    signature: Signature,
}

impl Default for EnRpi {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for EnRpi {
    fn name(&self) -> &str {
        "en_rpi"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        coerce(self.name(), &[ArgKind::Text, ArgKind::Integer], arg_types)
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (arrays, all_scalar) = to_arrays(&args.args, args.number_rows)?;
        let teks = arrays[0].as_string::<i32>();
        let intervals = arrays[1].as_primitive::<Int64Type>();
        let mut out = StringBuilder::with_capacity(teks.len(), teks.len() * 32);
        for (tek, n) in teks.iter().zip(intervals.iter()) {
            match (tek, n) {
                (Some(tek), Some(n)) => {
                    let key = rpik(&parse_key(self.name(), tek)?);
                    out.append_value(hex::encode(rpi(&key, interval(self.name(), n)?)))
                }
                _ => out.append_null(),
            }
        }
        to_columnar(Arc::new(out.finish()), all_scalar)
    }
}

/// `en_rpis(tek, rolling_start_interval [, rolling_period])`: every identifier of a key.
///
/// Yields `(interval_number, rpi, valid_from, valid_until)` for each of the key's
/// `rolling_period` intervals (default 144, one day).
#[derive(Debug, Default)]
pub struct EnRpis;

impl TableFunctionImpl for EnRpis {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        const NAME: &str = "en_rpis";
        let exprs = args.exprs();
        if !(2..=3).contains(&exprs.len()) {
            return plan_err!(
                "{NAME}(tek, rolling_start_interval [, rolling_period]) takes 2 or 3 arguments, got {}",
                exprs.len()
            );
        }
        let simplifier = simplifier(args.session());
        let tek = match constant(NAME, 1, "tek", &exprs[0], &simplifier)? {
            ScalarValue::Utf8(Some(t)) | ScalarValue::Utf8View(Some(t)) | ScalarValue::LargeUtf8(Some(t)) => t,
            other => return plan_err!("{NAME}: argument 1 (tek) must be text of 32 hex digits, got {other}"),
        };
        let key = match parse_key(NAME, &tek) {
            Ok(tek) => rpik(&tek),
            Err(_) => return plan_err!("{NAME}: argument 1 (tek): '{tek}' is not a key of 32 hex digits"),
        };
        let integer = |position: usize, name: &str| -> Result<i64> {
            match constant(NAME, position, name, &exprs[position - 1], &simplifier)?.cast_to(&DataType::Int64) {
                Ok(ScalarValue::Int64(Some(v))) => Ok(v),
                _ => plan_err!("{NAME}: argument {position} ({name}) must be an integer"),
            }
        };
        let start = integer(2, "rolling_start_interval")?;
        let period = if exprs.len() == 3 {
            integer(3, "rolling_period")?
        } else {
            DEFAULT_ROLLING_PERIOD
        };
        if !(1..=DEFAULT_ROLLING_PERIOD).contains(&period) {
            return plan_err!("{NAME}: argument 3 (rolling_period) must be between 1 and 144, got {period}");
        }
        if start < 0 || start + period > i64::from(u32::MAX) {
            return plan_err!("{NAME}: argument 2 (rolling_start_interval) {start} is out of range");
        }
        let numbers: Vec<i64> = (start..start + period).collect();
        let mut rpis = StringBuilder::new();
        for &n in &numbers {
            rpis.append_value(hex::encode(rpi(&key, n as u32)));
        }
        let micros = |n: i64| n * INTERVAL_SECONDS * 1_000_000;
        let schema = Arc::new(Schema::new(vec![
            Field::new("interval_number", DataType::Int64, false),
            Field::new("rpi", DataType::Utf8, false),
            Field::new(
                "valid_from",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new(
                "valid_until",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(numbers.clone())),
            Arc::new(rpis.finish()),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(numbers.iter().map(|&n| micros(n))).with_timezone("UTC"),
            ),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(numbers.iter().map(|&n| micros(n + 1)))
                    .with_timezone("UTC"),
            ),
        ];
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}
