//! Locking that survives a panicked holder. A leaf module: every service takes its own lock
//! through [`lock`].

use std::sync::{Mutex, MutexGuard};

/// Locks a std mutex, recovering from poisoning: a panicked holder must not take the whole
/// master down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
