//! The command layer: the management socket's server, the commands it runs (deploy, the
//! other app operations, server commands), their errors and the release-path check. The
//! protocol itself is the `tako-protocol` crate.

pub mod app_ops;
pub mod deploy;
pub mod error;
pub mod handlers;
pub mod server;
pub mod validate;
