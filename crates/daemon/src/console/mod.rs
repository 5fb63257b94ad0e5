//! Serial consoles: attach (many readers, one writer) and the kept log.

pub mod grpc;
pub mod rest;
