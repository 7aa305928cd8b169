//! The life of app instances (docs/architecture.md, "The path of a deploy"; docs/apps.md):
//! starting, promoting, replacing, stopping, idling and waking them, the restore at boot,
//! and the app identities they run under.

pub mod events;
pub mod identity;
pub mod idle;
pub mod restore;
