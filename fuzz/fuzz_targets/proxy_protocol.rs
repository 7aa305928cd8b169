//! Any bytes as the start of a connection on a PROXY protocol listener (docs/http.md, "PROXY
//! protocol"): the parser accepts a header within its bounds, asks for more bytes within its
//! bounds, or refuses, and never panics; a complete v1 line parses the same without what
//! follows it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tako_proxy_worker::proxy_protocol::fuzz(data);
});
