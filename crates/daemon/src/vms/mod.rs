//! Virtual machines: CRUD, watch and power actions.

pub mod grpc;
pub mod history;
pub mod rest;
