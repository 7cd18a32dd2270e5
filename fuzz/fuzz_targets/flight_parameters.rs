//! Arrow IPC messages as the parameters a logged-in client binds to a prepared statement
//! (`DoPut`), through the real Flight SQL server on loopback: refused or taken, never an
//! internal error, never a panic (arrow-ipc panics on damaged messages it is given).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    proxima_fuzz::flight().bind(data);
});
