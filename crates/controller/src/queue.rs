use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

/// A deduplicating work queue of object names, as Kubernetes controllers use: a name is queued
/// at most once, never handed to two workers at the same time, and handed out again when it
/// changed while a worker held it.
#[derive(Debug, Clone)]
pub struct WorkQueue {
    tx: mpsc::UnboundedSender<String>,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>>,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    queued: HashSet<String>,
    active: HashSet<String>,
    dirty: HashSet<String>,
}

impl Default for WorkQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkQueue {
    /// An empty queue.
    pub fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        WorkQueue {
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
            state: Arc::default(),
        }
    }

    /// Asks for `name` to be reconciled.
    pub fn add(&self, name: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.active.contains(name) {
            state.dirty.insert(name.to_owned());
        } else if state.queued.insert(name.to_owned()) {
            let _ = self.tx.send(name.to_owned());
        }
    }

    /// Asks for `name` to be reconciled after `delay`.
    pub fn add_after(&self, name: &str, delay: Duration) {
        let queue = self.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(&name);
        });
    }

    /// The next name to work on; call [`WorkQueue::done`] when finished with it.
    pub async fn next(&self) -> Option<String> {
        let name = self.rx.lock().await.recv().await?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.queued.remove(&name);
        state.active.insert(name.clone());
        Some(name)
    }

    /// Marks `name` finished; it is queued again if it changed meanwhile.
    pub fn done(&self, name: &str) {
        let again = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.active.remove(name);
            state.dirty.remove(name)
        };
        if again {
            self.add(name);
        }
    }

    /// Names waiting (not counting those being worked on).
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queued
            .len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dedups_and_requeues_changes_made_while_active() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let a = q.next().await.unwrap();
        assert_eq!(a, "a");
        q.add("a"); // changed while a worker holds it
        assert_eq!(q.len(), 1);
        q.done("a");
        assert_eq!(q.next().await.unwrap(), "b");
        q.done("b");
        assert_eq!(q.next().await.unwrap(), "a");
        q.done("a");
        assert!(q.is_empty());
    }
}
