//! Any bytes as an instance's answer through the upstream client's response-head parser, body
//! framing and chunk decoder (what a compromised or broken app can send): never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tako_proxy_worker::fuzz_upstream_response(data);
});
