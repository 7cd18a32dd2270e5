//! Flight SQL tickets, commands and action bodies from a logged-in client, through the real
//! server on loopback: refused or answered, never an internal error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    proxima_fuzz::flight().send(data);
});
