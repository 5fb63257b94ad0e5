//! Volumes: qcow2 or raw disks, thin clones, resize.

pub mod grpc;
pub mod rest;
