//! The daemon itself: version, health, metrics and the API description.

pub mod grpc;
pub mod rest;
