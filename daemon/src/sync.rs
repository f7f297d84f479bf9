//! Locking helpers shared by the daemon's threads.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, recovering from poisoning. Only for locks whose every update
/// is a single call that leaves plain, consistent data behind (no
/// invariant spans two updates), so a panic elsewhere while holding the
/// lock must not cascade into every other user of it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
