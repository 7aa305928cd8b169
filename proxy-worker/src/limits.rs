//! The worker's fixed limits (docs/limits.md, docs/http.md "Limits and timeouts"), in one leaf
//! module that every layer may read: the connection handlers, the pipeline and the sandbox.

use std::time::Duration;

/// From the accept to the end of the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// For the first head of a connection, or for a head whose first byte arrived.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle keep-alive between two HTTP/1 requests.
pub const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(60);
/// An HTTP/1 request body that sends nothing for this long ends the connection.
pub const BODY_IDLE: Duration = Duration::from_secs(60);
pub const MAX_HEADER_FIELDS: usize = 128;
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Longest request-target.
pub const MAX_TARGET_LEN: usize = 8 * 1024;
/// Largest request body.
pub const MAX_BODY_BYTES: u64 = 128 * 1024 * 1024;

/// Open connections one worker serves at most (client connections and WebSocket tunnels).
/// At 16384 a worker stays well inside a 64k descriptor limit even with an upstream socket
/// per connection, while an ordinary site never gets near it.
pub const MAX_CONNECTIONS: usize = 16 * 1024;

/// How long an HTTP/1 connection must have been idle before a draining worker closes it
/// (docs/limits.md, "Draining"). A client that sends on it before then gets its answer, with
/// `Connection: close`. Counted from the last answer (or from the accept for a connection
/// that has sent nothing yet), so a connection idle for longer closes at once and a restart
/// is not held up by it.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(5);
