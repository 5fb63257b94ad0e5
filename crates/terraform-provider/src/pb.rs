//! Generated gRPC server stubs.

/// Terraform Plugin Protocol 6.
#[allow(missing_docs, clippy::all)]
pub mod tfplugin6 {
    tonic::include_proto!("tfplugin6");
}

/// go-plugin's controller and stdio services.
#[allow(missing_docs, clippy::all)]
pub mod plugin {
    tonic::include_proto!("plugin");
}
