//! The management socket: protocol, validation, and the server that runs commands.

pub mod handlers;
pub mod linereader;
pub mod protocol;
pub mod server;
pub mod validate;
