//! Apps and their instances as the master holds them: the registry (desired state and live
//! instances), the release a deploy reads, the environment and identity an instance gets,
//! and why a start fails. Moving one towards the other is `crate::lifecycle`'s job
//! (docs/architecture.md, "The path of a deploy").

pub mod env;
pub mod error;
pub mod identity;
pub mod registry;
pub mod release;
