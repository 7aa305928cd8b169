//! Certificates in the master (docs/tls.md): the set every worker serves, loaded from
//! `certs/`, self-signed for private hosts or issued by ACME, and what status shows about
//! them. Workers get them over IPC only.

pub mod acme_progress;
mod der;
mod files;
mod self_signed;
mod view;

#[cfg(test)]
mod tests;

use std::sync::Mutex;

use tako_ipc::CertEntry;

pub use der::leaf_info;
pub use files::{check_entry, load_dir, write_cert, CertLoadError};
pub use self_signed::{add_missing, is_private_host, self_signed};
pub use view::{views, CertView};

use crate::sync::lock;

/// The certificate set the workers serve, behind its own lock. Changing it and telling the
/// workers is one step of the master (`Master::push_certs`), under the worker set's lock.
#[derive(Default)]
pub struct Certificates {
    set: Mutex<Vec<CertEntry>>,
}

impl Certificates {
    pub fn new(set: Vec<CertEntry>) -> Certificates {
        Certificates {
            set: Mutex::new(set),
        }
    }

    pub fn snapshot(&self) -> Vec<CertEntry> {
        lock(&self.set).clone()
    }

    pub fn replace(&self, set: Vec<CertEntry>) {
        *lock(&self.set) = set;
    }

    /// Runs `f` over the set under its lock (status views read it without a copy).
    pub fn with<R>(&self, f: impl FnOnce(&[CertEntry]) -> R) -> R {
        f(&lock(&self.set))
    }
}
