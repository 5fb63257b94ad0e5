//! Following changes to VMs, and waiting for a VM to get somewhere.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use corral_contract::{Phase, Vm, pb};
use tokio::time::Instant;

use crate::client::decode_vm;
use crate::{Client, ClientError};

/// How long to wait before reading again after the server went away or a watch failed.
const RETRY: Duration = Duration::from_millis(200);

/// What happened to a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// It was created.
    Added,
    /// Its spec, metadata or status changed.
    Modified,
    /// It is gone.
    Deleted,
}

/// One change to a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmEvent {
    /// What happened.
    pub event: EventType,
    /// The store revision of the change; watch after it to resume.
    pub revision: u64,
    /// The VM after the change; for [`EventType::Deleted`], its last state.
    pub vm: Vm,
}

/// Changes to VMs, in revision order, from [`Client::watch_vms`].
///
/// Read with [`VmWatch::next`], or as a [`futures_core::Stream`].
#[derive(Debug)]
pub struct VmWatch {
    inner: tonic::Streaming<pb::VmEvent>,
    endpoint: Arc<str>,
}

impl VmWatch {
    pub(crate) fn new(inner: tonic::Streaming<pb::VmEvent>, endpoint: Arc<str>) -> Self {
        VmWatch { inner, endpoint }
    }

    /// The next change; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<Result<VmEvent, ClientError>> {
        match self.inner.message().await {
            Ok(Some(event)) => Some(decode_event(event)),
            Ok(None) => None,
            Err(status) => Some(Err(ClientError::from_status(status, &self.endpoint))),
        }
    }
}

impl futures_core::Stream for VmWatch {
    type Item = Result<VmEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        Pin::new(&mut this.inner).poll_next(cx).map(|item| {
            item.map(|result| match result {
                Ok(event) => decode_event(event),
                Err(status) => Err(ClientError::from_status(status, &this.endpoint)),
            })
        })
    }
}

fn decode_event(event: pb::VmEvent) -> Result<VmEvent, ClientError> {
    let kind = match pb::EventType::try_from(event.r#type) {
        Ok(pb::EventType::Added) => EventType::Added,
        Ok(pb::EventType::Modified) => EventType::Modified,
        Ok(pb::EventType::Deleted) => EventType::Deleted,
        Ok(pb::EventType::Unspecified) | Err(_) => {
            return Err(ClientError::Other {
                message: format!("corrald sent an event of unknown type {}", event.r#type),
            });
        }
    };
    let vm = event.vm.ok_or_else(|| ClientError::Other {
        message: "corrald sent an event without its VM".into(),
    })?;
    Ok(VmEvent {
        event: kind,
        revision: event.revision,
        vm: decode_vm(vm)?,
    })
}

impl Client {
    /// Waits until `done` says the VM got where it was going; returns the state `done`
    /// accepted (`None`: the VM is gone).
    ///
    /// `done` sees the current state first, then every change (`None` once the VM does not
    /// exist). It is a watch, not a poll: the state is read, then followed from its
    /// revision, so no change is missed. When the server goes away (a daemon restart) or a
    /// watch fails, the state is read again every 200 ms until the time runs out.
    ///
    /// Errors with [`ClientError::Timeout`] after `timeout` ([`ClientError::Unavailable`]
    /// if corrald could not be reached at the end), or with the first error that retrying
    /// cannot fix (e.g. [`ClientError::Unauthenticated`]).
    pub async fn wait_for<F>(
        &self,
        name: &str,
        mut done: F,
        timeout: Duration,
    ) -> Result<Option<Vm>, ClientError>
    where
        F: FnMut(Option<&Vm>) -> bool,
    {
        let mut last_phase = None;
        // Set while corrald cannot be reached: if the time runs out then, that is the news.
        let mut unreachable = None;
        let deadline = Instant::now() + timeout;
        let waited = tokio::time::timeout_at(deadline, async {
            loop {
                let current = match self.get_vm(name).await {
                    Ok(vm) => Some(vm),
                    Err(ClientError::NotFound { .. }) => None,
                    Err(e @ ClientError::Unavailable { .. }) => {
                        unreachable = Some(e);
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                unreachable = None;
                last_phase = current.as_ref().map(|vm| vm.status.phase);
                if done(current.as_ref()) {
                    return Ok(current);
                }
                // A VM's resource_version is the store revision of its last write.
                let after = current.map_or(0, |vm| vm.metadata.resource_version);
                if let Ok(mut watch) = self.watch_vms(Some(name), after).await {
                    while let Some(event) = watch.next().await {
                        let Ok(event) = event else { break };
                        let vm = (event.event != EventType::Deleted).then_some(&event.vm);
                        last_phase = vm.map(|vm| vm.status.phase);
                        if done(vm) {
                            return Ok(vm.cloned());
                        }
                    }
                }
                tokio::time::sleep(RETRY).await;
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            Err(unreachable.unwrap_or_else(|| ClientError::Timeout {
                name: name.to_owned(),
                after: timeout,
                phase: last_phase,
            }))
        })
    }
}

/// Whether `vm`'s status reflects its current spec (the controller has acted on it).
///
/// A status from before the last spec change says nothing about that change: a VM that
/// failed before `start` still shows `Failed` until its controller tries again.
pub fn is_observed(vm: &Vm) -> bool {
    vm.status.observed_generation >= vm.metadata.generation
}

/// Whether `vm` is in `phase` for its current spec.
pub fn reached(vm: &Vm, phase: Phase) -> bool {
    is_observed(vm) && vm.status.phase == phase
}
