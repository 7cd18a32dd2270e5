//! `proxima import` of a Parquet file of observations: imported whole or refused.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    proxima_fuzz::import(proxima_engine::Table::Observations, "input.parquet", data);
});
