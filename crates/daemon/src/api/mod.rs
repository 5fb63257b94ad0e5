//! What every API concept shares: the route and method tables with each entry's permission,
//! the one authorization layer that enforces them for REST and gRPC alike, the mapping of
//! errors to HTTP statuses and gRPC codes, and the JSON body and answer helpers.

mod act;
pub mod error;
pub(crate) mod json;
pub mod limits;
mod permission;
mod revoke;
mod routes;
pub mod scope;
pub(crate) mod watch;

pub use permission::Permission;
pub(crate) use revoke::REVOKED;
pub use routes::{GrpcMethod, RouteInfo, grpc_methods, routes};
pub(crate) use routes::{Route, rest_router};
pub use scope::Scope;
