//! The life of app instances (docs/architecture.md, "The path of a deploy"; docs/apps.md):
//! starting, promoting, replacing, stopping, idling and waking them, what happens when the
//! launcher is lost, the restore at boot, and the app identities they run under. One job per
//! file; each adds the methods of its job to [`crate::master::Master`].

pub mod identity;
pub mod idle;
pub mod instance_events;
mod launcher_loss;
mod orphans;
mod promotion;
mod replacement;
pub mod restore;
mod spawn;
mod stop;
mod wake;
