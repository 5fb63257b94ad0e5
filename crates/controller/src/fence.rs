//! Whether this node is fenced (it cannot report to the cluster, so the servers may move
//! its VMs): the VM controller starts nothing meanwhile, and restarts what the fence stopped
//! once it is lifted — those VMs did not stop by their own choice.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Shared between whoever fences (the node's heartbeat) and the VM controller.
#[derive(Debug, Default)]
pub struct FenceState {
    active: AtomicBool,
    stopped: Mutex<HashSet<String>>,
}

impl FenceState {
    /// Fences (`true`) or lifts the fence; returns whether it was fenced before.
    pub fn set(&self, fenced: bool) -> bool {
        self.active.swap(fenced, Ordering::SeqCst)
    }

    /// Whether the node is fenced now.
    pub fn is_fenced(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    /// Records that the fence stopped the VM `uid`.
    pub fn stopped(&self, uid: &str) {
        self.lock().insert(uid.to_owned());
    }

    /// Whether the fence stopped `uid` and it has not been started since.
    pub(crate) fn was_stopped(&self, uid: &str) -> bool {
        self.lock().contains(uid)
    }

    /// `uid` starts again: the fence's stop is behind it.
    pub(crate) fn started(&self, uid: &str) {
        self.lock().remove(uid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }
}
