//! Attestations: a VM's spec, image and volume digests, signed by the node's key.

pub mod grpc;
pub mod rest;
