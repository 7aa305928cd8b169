//! Everything the three tako-server roles share: the IPC messages, the framing that carries
//! them (with file descriptors beside a frame), and the privilege helpers each role uses to
//! shed what it does not need.

pub mod channel;
pub mod cidr;
pub mod client_table;
pub mod frame;
pub mod messages;
pub mod output;
pub mod privilege;
pub mod route;
pub mod validate;

pub use channel::{Channel, ChannelError, Encoded, Greeting, Limits, SendError, Sender};
pub use frame::{FrameError, FrameReader, FrameWriter, MAX_FDS_PER_FRAME, MAX_FRAME_LEN};
pub use messages::*;

/// Version of the IPC protocol between the master and its children. Bumped on any change of
/// the message enums; a child built from another version refuses to talk.
pub const IPC_VERSION: u32 = 2;

/// File descriptor number on which a child finds its IPC socket.
pub const CHILD_IPC_FD: i32 = 3;
