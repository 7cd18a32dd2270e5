//! SQL job scripts and their `--param` values: `name=value` lines, then `---`, then the
//! script; substituted and split into statements, or refused.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    proxima_fuzz::script(data);
});
