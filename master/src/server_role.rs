//! What this master process is to the server's state: the primary that owns it, an upgrade
//! candidate started beside the primary, or a stand-in that only answers on the socket
//! (docs/operations.md, "Upgrade"). A leaf module: boot decides it, everything else reads it.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerRole {
    Primary,
    Candidate,
    StandIn,
}

impl ServerRole {
    /// The `role` of `server_info` and of the log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerRole::Primary => "primary",
            ServerRole::Candidate => "candidate",
            ServerRole::StandIn => "stand-in",
        }
    }
}
