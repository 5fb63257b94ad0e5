//! Guest memory of introspectable VMs: read, find, snapshot, map, stream. Every route and
//! method needs [`Permission::Memory`](crate::api::Permission::Memory); the service audits
//! every act.

pub mod grpc;
pub mod rest;
