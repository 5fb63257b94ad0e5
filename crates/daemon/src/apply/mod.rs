//! Applying declared resources as one owner: `corral apply`, `corral diff` (a dry run) and Git
//! sources.

pub mod grpc;
pub mod rest;
