//! The SQL functions that let the `encounters` view join a sighting to the device heard,
//! whatever the phone broadcast: a static MAC or a server-issued rotating identifier.
//!
//! - `sighting_key(observed, observed_at)`: the MAC itself; for an identifier, its device's
//!   handle (16 hex digits) if one of the server's keys issued it for an epoch that holds
//!   `observed_at` (± the tolerance); NULL for anything else (a replayed, forged or foreign
//!   identifier, an RPI, a malformed value).
//! - `device_handle(device_uuid)`: a device's handle (16 hex digits,
//!   [`ephemeral::handle_of`]).
//!
//! A device is heard when a sighting's key is its MAC or its handle. Both functions are in
//! full sessions only (the CLI's, and the one behind a tracer's scoped tables): nothing
//! reached over the network can resolve identifiers of its own choosing.

use std::sync::Arc;

use arrow::array::{Array, AsArray, StringBuilder};
use arrow::datatypes::{DataType, TimestampMicrosecondType};
use datafusion::error::Result;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};

use crate::ephemeral::{self, Heard, Identifiers};
use crate::schema::timestamp_type;

/// Both functions, resolving with `identifiers` (none: no identifier resolves).
pub fn functions(identifiers: Option<Arc<Identifiers>>) -> [ScalarUDF; 2] {
    [
        ScalarUDF::new_from_impl(SightingKey {
            identifiers,
            signature: Signature::exact(vec![DataType::Utf8, timestamp_type()], Volatility::Immutable),
        }),
        ScalarUDF::new_from_impl(DeviceHandle {
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
        }),
    ]
}

/// `sighting_key(observed, observed_at)`.
#[derive(Debug)]
struct SightingKey {
    identifiers: Option<Arc<Identifiers>>,
    signature: Signature,
}

// Functions are compared by name and keys (the same `Arc`), as DataFusion's plans need.
impl PartialEq for SightingKey {
    fn eq(&self, other: &Self) -> bool {
        match (&self.identifiers, &other.identifiers) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

impl Eq for SightingKey {}

impl std::hash::Hash for SightingKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.identifiers.as_ref().map(Arc::as_ptr).hash(state);
    }
}

impl ScalarUDFImpl for SightingKey {
    fn name(&self) -> &str {
        "sighting_key"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let observed = arrays[0].as_string::<i32>();
        let at = arrays[1].as_primitive::<TimestampMicrosecondType>();
        let mut out = StringBuilder::with_capacity(observed.len(), observed.len() * 17);
        for i in 0..observed.len() {
            if observed.is_null(i) || at.is_null(i) {
                out.append_null();
                continue;
            }
            let value = observed.value(i);
            if value.len() == 17 {
                // A MAC (the store holds canonical identifiers only).
                out.append_value(value);
                continue;
            }
            match self.identifiers.as_ref().and_then(|ids| ids.heard(value, at.value(i))) {
                Some(Heard::Device(handle)) => out.append_value(handle_text(handle)),
                _ => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `device_handle(device_uuid)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct DeviceHandle {
    signature: Signature,
}

impl ScalarUDFImpl for DeviceHandle {
    fn name(&self) -> &str {
        "device_handle"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let uuids = arrays[0].as_string::<i32>();
        let mut out = StringBuilder::with_capacity(uuids.len(), uuids.len() * 16);
        for uuid in uuids.iter() {
            match uuid.and_then(ephemeral::handle_of) {
                Some(handle) => out.append_value(handle_text(handle)),
                None => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// A handle as the functions give it: 16 lowercase hex digits (never 17 characters, so
/// never equal to a MAC).
fn handle_text(handle: u64) -> String {
    format!("{handle:016x}")
}
