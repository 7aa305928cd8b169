//! Any bytes as an HTTP/1 request head through the worker's head check (the guard in front
//! of hyper that refuses smuggling patterns): an answer, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tako_proxy_worker::fuzz_check_head(data);
});
