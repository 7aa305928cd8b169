//! Any bytes as a request head through the HTTP/1 connection loop's parser: a request or an
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tako_proxy_worker::fuzz_h1_request(data);
});
