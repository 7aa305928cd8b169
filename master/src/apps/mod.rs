//! Apps and their instances: the desired state, the live instances, and the algorithms that
//! move one towards the other (instances.md).

pub mod deploy;
pub mod env;
pub mod events;
pub mod identity;
pub mod idle;
pub mod ops;
pub mod ports;
pub mod registry;
pub mod release;
pub mod restore;
