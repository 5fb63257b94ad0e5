//! Tunnels to the TCP ports VMs forward, wherever they run (what `corral vm ssh` rides).

pub mod grpc;
pub mod rest;
