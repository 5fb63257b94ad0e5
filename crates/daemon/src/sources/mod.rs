//! Git sources: repositories of manifests corrald applies as their owner.

pub mod grpc;
pub mod rest;
