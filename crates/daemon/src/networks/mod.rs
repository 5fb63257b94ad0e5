//! Networks VMs attach to.

pub mod grpc;
pub mod rest;
