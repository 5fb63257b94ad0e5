//! A watcher that follows every VM change for the whole run, across daemon restarts, resuming
//! from the last revision it saw. At the end its reconstruction must equal a fresh list.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_client::{Client, Endpoint, EventType};

/// What the watcher has reconstructed so far.
#[derive(Debug, Default, Clone)]
pub struct Followed {
    /// VM name → resource_version, as the events tell it.
    pub vms: BTreeMap<String, u64>,
    /// The revision of the last event applied (or of the list it started from).
    pub revision: u64,
    /// How many times a watch ended and was resumed.
    pub resumes: u32,
    /// Times the store said the revision was compacted and the watcher listed again.
    pub relists: u32,
    /// Events that went back in revision.
    pub out_of_order: u32,
}

/// Starts following VMs on the corrald at `socket`; the state is shared with the caller.
pub fn spawn(socket: PathBuf) -> Arc<Mutex<Followed>> {
    let state = Arc::new(Mutex::new(Followed::default()));
    let shared = state.clone();
    tokio::spawn(async move {
        let mut listed = false;
        loop {
            let Ok(client) = Client::connect(Endpoint::Unix(socket.clone())).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if !listed {
                let Ok((vms, revision)) = client.list_vms_with_revision("").await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                s.vms = vms
                    .into_iter()
                    .map(|vm| (vm.metadata.name.to_string(), vm.metadata.resource_version))
                    .collect();
                s.revision = revision;
                listed = true;
            }
            let after = shared.lock().unwrap_or_else(|e| e.into_inner()).revision;
            let mut watch = match client.watch_vms(None, after).await {
                Ok(watch) => watch,
                Err(e) => {
                    if e.to_string().contains("compacted") {
                        shared.lock().unwrap_or_else(|e| e.into_inner()).relists += 1;
                        listed = false;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            while let Some(Ok(event)) = watch.next().await {
                let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                if event.revision <= s.revision {
                    s.out_of_order += 1;
                    continue;
                }
                s.revision = event.revision;
                let name = event.vm.metadata.name.to_string();
                match event.event {
                    EventType::Deleted => {
                        s.vms.remove(&name);
                    }
                    EventType::Added | EventType::Modified => {
                        s.vms.insert(name, event.vm.metadata.resource_version);
                    }
                }
            }
            shared.lock().unwrap_or_else(|e| e.into_inner()).resumes += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    state
}
