//! Projects and their limits: everyone reads them, admins change them.

pub mod grpc;
pub mod rest;
