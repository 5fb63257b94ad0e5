//! Snapshots of a VM's disks (and memory): take, restore, delete.

pub mod grpc;
pub mod rest;
