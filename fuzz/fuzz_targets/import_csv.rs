//! `proxima import` of a CSV file: the first byte picks the table, the rest is the file.
//! Any input is imported whole or refused with an error; nothing panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use proxima_engine::Table;

fuzz_target!(|data: &[u8]| {
    let Some((&which, file)) = data.split_first() else {
        return;
    };
    let table = [Table::Observations, Table::Devices, Table::Cases][usize::from(which) % 3];
    proxima_fuzz::import(table, "input.csv", file);
});
