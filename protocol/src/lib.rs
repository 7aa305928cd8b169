//! The management protocol of tako-server (docs/management-protocol.md), in one place for the
//! server, `tako-server ctl` and the fuzz targets: the request and response types with both
//! directions of serde, the checks every request passes before the server acts on it, the
//! line framing of the socket, and the `app.json` manifest of a release.
//!
//! Pure: nothing here touches the file system or the network. The one check that needs the
//! file system, whether a release path may be used, lives with the server.

pub mod line;
pub mod manifest;
pub mod request;
pub mod validate;

pub use request::{
    parse_request, parse_response, DeployRequest, Request, Response, PROTOCOL_VERSION,
};
