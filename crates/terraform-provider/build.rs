//! Generates the gRPC server stubs of Terraform Plugin Protocol 6 (`proto/tfplugin6.proto`) and
//! of go-plugin's controller and stdio services (`proto/plugin.proto`).
//!
//! Compiled by `protox` (pure Rust), as the contract crate does, so building needs no `protoc`.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["proto/tfplugin6.proto", "proto/plugin.proto"], ["proto"])
        .map_err(|e| format!("{e:?}"))?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_transport(false)
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
