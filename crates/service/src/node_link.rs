//! Node-local operations through any server: the console, console log, memory, attestation
//! and tunnels to forwarded ports of a VM run where its QEMU runs. A server asked for one of a VM
//! bound to another node (an agent) authorizes the caller itself, then asks that node over a
//! [`NodeLink`].

use std::sync::Arc;

use async_trait::async_trait;
use corral_contract::Vm;
use corral_hypervisor::Console;

use crate::ServiceError;
use crate::memory::{FrameStream, MemoryError, RemoteChunks, SnapshotMode, SnapshotStream};

/// How a server reaches the nodes that run VMs. Every call names the VM by its store key
/// (`project/name`); the node checks that it runs it.
#[async_trait]
pub trait NodeLink: Send + Sync + std::fmt::Debug {
    /// Attaches to VM `vm`'s console on `node`, with its write side when `write` (the node
    /// keeps to one writer); `who` names the caller to the console's other sessions. The
    /// console ends when every handle on it is dropped.
    async fn console(
        &self,
        node: &str,
        vm: &str,
        write: bool,
        who: &str,
    ) -> Result<Console, ServiceError>;

    /// The end of VM `vm`'s serial output on `node`: `tail` bytes, or what is kept for 0.
    async fn console_log(&self, node: &str, vm: &str, tail: u64) -> Result<Vec<u8>, ServiceError>;

    /// VM `vm`'s attestation, signed by `node`'s key: the DSSE envelope and that key (PEM).
    async fn attest(&self, node: &str, vm: &str) -> Result<(Vec<u8>, String), ServiceError>;

    /// A stream to guest TCP port `port` of VM `vm`, which `node` forwards (see
    /// [`TunnelService`](crate::TunnelService)).
    async fn tunnel(
        &self,
        node: &str,
        vm: &str,
        port: u16,
    ) -> Result<tokio::io::DuplexStream, ServiceError>;

    /// `len` bytes of VM `vm`'s RAM at guest-physical `addr`, read on `node` for `who` (the
    /// caller this server authorized and audited; the node audits the read too).
    async fn memory_read(
        &self,
        node: &str,
        vm: &str,
        who: &str,
        addr: u64,
        len: u64,
    ) -> Result<RemoteChunks, MemoryError>;

    /// Where `pattern` is in VM `vm`'s RAM (at most `limit` places), and whether there were
    /// more.
    async fn memory_find(
        &self,
        node: &str,
        vm: &str,
        who: &str,
        pattern: &[u8],
        limit: u32,
    ) -> Result<(Vec<u64>, bool), MemoryError>;

    /// A copy of all of VM `vm`'s RAM, taken on `node`.
    async fn memory_snapshot(
        &self,
        node: &str,
        vm: &str,
        who: &str,
        mode: SnapshotMode,
    ) -> Result<SnapshotStream, MemoryError>;

    /// A Hilbert map of VM `vm`'s RAM as PNG, `side` pixels square.
    async fn memory_map(
        &self,
        node: &str,
        vm: &str,
        who: &str,
        side: u32,
    ) -> Result<Vec<u8>, MemoryError>;

    /// Live Hilbert frames of VM `vm`'s RAM.
    async fn memory_stream(
        &self,
        node: &str,
        vm: &str,
        who: &str,
        side: u32,
        fps: u32,
    ) -> Result<FrameStream, MemoryError>;
}

/// This node's name and the link to the others: which VMs are served here and which through
/// their node.
#[derive(Debug, Clone)]
pub struct NodeRoute {
    local: String,
    link: Arc<dyn NodeLink>,
}

impl NodeRoute {
    /// The route from node `local` over `link`.
    pub fn new(local: impl Into<String>, link: Arc<dyn NodeLink>) -> Self {
        NodeRoute {
            local: local.into(),
            link,
        }
    }

    /// The node that runs `vm`, when that is another one than this.
    pub fn elsewhere<'a>(&self, vm: &'a Vm) -> Option<&'a str> {
        vm.status.node.as_deref().filter(|n| *n != self.local)
    }

    /// The link to the other nodes.
    pub fn link(&self) -> &dyn NodeLink {
        self.link.as_ref()
    }
}
