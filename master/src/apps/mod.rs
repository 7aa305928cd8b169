//! Apps and their instances: the desired state, the live instances, and the algorithms that
//! move one towards the other (docs/architecture.md, "The path of a deploy").

pub mod deploy;
pub mod env;
pub mod error;
pub mod events;
pub mod identity;
pub mod idle;
pub mod ops;
pub mod ports;
pub mod registry;
pub mod release;
pub mod restore;
