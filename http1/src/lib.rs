//! HTTP/1.1 for tako-server's proxy worker, both sides of the proxy: [`server`] serves the
//! internet's connections, [`upstream`] sends each request on to an app instance on the
//! loopback and reads its answer. Neither knows about routes, caches or apps: the server
//! hands each request to a [`server::Service`] and writes back what it answers.
//!
//! # Why not hyper
//!
//! The worker used hyper for both sides until the second performance round, and still uses
//! it for HTTP/2. For HTTP/1 these two replaced it because a reverse proxy asks different
//! things of HTTP/1 than a general library gives (BENCHMARKS.md, "What changed in the second
//! round" and after):
//!
//! - **Memory per idle connection.** hyper keeps an 8 KB read and an 8 KB write buffer per
//!   connection; this server holds no buffer while a connection is idle (one that only held
//!   small heads keeps a small one): 8 KB per idle plain connection against 22.8 KB with
//!   hyper, and 14.7 KB per idle TLS connection now.
//! - **No task, channel or wakeup per upstream request.** hyper's pooled client runs a task
//!   per connection and talks to it over a channel; here the request's own task writes the
//!   head and reads the answer on the pooled connection.
//! - **One pass over a request head.** The head is checked and turned into `http` types in a
//!   single pass that also reads what the loop acts on (framing, `Connection`, `Expect`) and
//!   refuses smuggling patterns stricter than httparse (see [`server::check_head`]); header
//!   values share the head's bytes.
//! - **The response head and the first body bytes in one write**, and the proxy's own limits
//!   (head, idle, body timeouts; unread bodies drained within a bound) on one lazy timer per
//!   connection instead of a timer per request.
//!
//! In instructions per proxied keep-alive request (`bench/cost.sh`, user space of the worker
//! thread) the worker went from 25,808 at the start of the fourth round to 21,058 at its end,
//! most of it in these two modules; the CPU time per request went from 1.13× nginx's with the
//! first version of both (hyper's server and client before them: far behind) to 0.87×.
//! Moving them into this crate kept the count within the script's noise: 22,127 before,
//! 22,195 after (+0.3 %; BENCHMARKS.md, "Instructions per request with HTTP/1 in its own
//! crate", which also says why the loop awaits its stages itself).
//!
//! The price is owning the parser that faces the internet: it is fuzzed (`fuzz/`), every
//! refusal has a unit test, and the integration tests drive it with raw bytes.

mod chunked;
pub mod date;
mod lazy_timer;
pub mod rewind;
pub mod server;
pub mod upstream;

pub use lazy_timer::LazyTimer;

/// The error of every body in this crate.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
