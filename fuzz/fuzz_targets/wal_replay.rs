//! Reading a write-ahead log segment (what a start replays): in the clear or sealed with
//! the corpus's master key, as the last segment (a torn tail tolerated) and as an earlier
//! one (damage refused). Either way an answer or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    proxima_fuzz::replay(data);
});
