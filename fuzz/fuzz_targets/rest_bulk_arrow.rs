//! `POST /v1/observations:bulk` with an Arrow IPC stream, as a gateway, through the real
//! router (the pre-scan of the stream's messages, then the decoder).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rest = proxima_fuzz::rest();
    rest.post(
        "/v1/observations:bulk",
        "application/vnd.apache.arrow.stream",
        &rest.gateway_token,
        data,
    );
});
