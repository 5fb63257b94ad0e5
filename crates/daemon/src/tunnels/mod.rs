//! Tunnels to the TCP ports VMs forward, wherever they run (what `corral vm ssh` rides).

pub(crate) mod bridge;
pub mod grpc;
pub mod rest;
