//! `POST /v1/observations:bulk` with an NDJSON body, as a gateway, through the real router.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rest = proxima_fuzz::rest();
    rest.post(
        "/v1/observations:bulk",
        "application/x-ndjson",
        &rest.gateway_token,
        data,
    );
});
