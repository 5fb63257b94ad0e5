//! Images: content-addressed by BLAKE3, imported from a file or URL, verified.

pub mod grpc;
pub mod rest;
