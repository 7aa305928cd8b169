//! tako-server's data plane: the proxy worker. It receives listeners, routes, certificates and
//! status pages from the master over IPC and serves HTTP and HTTPS traffic with them.
//!
//! The master calls [`run`] in the child process after dropping privileges.

mod access;
mod body;
mod cache;
mod client_limits;
mod compress;
mod conn_info;
mod conns;
mod control;
mod counters;
mod fast_hash;
mod forwarded;
mod h1_service;
mod h2_body;
mod h2_limits;
mod h2_send;
mod hold;
mod host;
mod internal_host;
mod limits;
mod listeners;
mod no_public;
mod pipeline;
#[doc(hidden)]
pub mod proxy_protocol;
mod redirect;
mod request_body;
mod request_id;
mod responses;
pub mod sandbox;
mod shared;
mod static_files;
mod table;
mod tls;
mod tunnel;

/// Runs the worker on its IPC channel to the master until the master is gone or orders a
/// drain. Returns the process exit code: 0 after a drain or when the master went away, 1 on
/// a protocol error (version mismatch, no hello) or a runtime that cannot start.
pub fn run(ipc: std::os::unix::net::UnixStream) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            tracing::error!(%error, "Cannot start the worker runtime");
            return 1;
        }
    };
    let code = runtime.block_on(async move {
        if let Err(error) = ipc.set_nonblocking(true) {
            tracing::error!(%error, "IPC socket cannot be made non-blocking");
            return 1;
        }
        match tokio::net::UnixStream::from_std(ipc) {
            Ok(stream) => control::run(stream).await,
            Err(error) => {
                tracing::error!(%error, "IPC socket cannot be registered with the runtime");
                1
            }
        }
    });
    // Connections past the drain deadline are cut here, without waiting for them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    code
}

/// The HTTP/1 head check the connection loop runs before it parses a request (the parser
/// that faces the internet), exposed for the fuzz target only. Returns whether the head
/// was accepted.
#[doc(hidden)]
pub fn fuzz_check_head(head: &[u8]) -> bool {
    tako_http1::server::check_head(head, &h1_service::CONFIG.head).is_ok()
}

/// An instance's answer as the upstream client reads it: response head, body framing and,
/// when chunked, the chunk decoder. Exposed for the fuzz target only; returns whether a head
/// was accepted.
#[doc(hidden)]
pub fn fuzz_upstream_response(data: &[u8]) -> bool {
    tako_http1::upstream::fuzz_response(data)
}

/// A request head as the HTTP/1 connection loop parses it. Exposed for the fuzz target only;
/// returns whether a complete head was accepted.
#[doc(hidden)]
pub fn fuzz_h1_request(data: &[u8]) -> bool {
    tako_http1::server::fuzz_request(data, &h1_service::CONFIG)
}
