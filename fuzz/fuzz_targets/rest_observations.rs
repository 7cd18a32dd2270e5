//! `POST /v1/observations`: a phone's JSON upload, through the real router.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rest = proxima_fuzz::rest();
    rest.post("/v1/observations", "application/json", &rest.device_token, data);
});
