//! The management socket: the server that runs commands, and the release-path check. The
//! protocol itself is the `tako-protocol` crate.

pub mod handlers;
pub mod server;
pub mod validate;
