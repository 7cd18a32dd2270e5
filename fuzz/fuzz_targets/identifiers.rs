//! Every identifier a request or file carries, each line of the input tried as each kind:
//! device UUIDs, case ids, MACs, RPIs, observed keys, geohashes, and rotating identifiers
//! resolved with a key.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    proxima_fuzz::identifiers(data);
});
