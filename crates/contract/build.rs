//! Generates the protobuf messages and gRPC stubs of every `.proto` file in `proto/corral/v1`
//! (one package, `corral.v1`: each area — VMs, storage, networks, memory — keeps its own file).
//!
//! The .proto is compiled by `protox` (pure Rust), so building needs no `protoc`. The encoded
//! descriptor set is kept in `OUT_DIR` for gRPC server reflection (`pb::FILE_DESCRIPTOR_SET`).

use std::error::Error;
use std::path::PathBuf;

use protox::prost::Message as _;

const PROTO_DIR: &str = "proto/corral/v1";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);

    let mut files = Vec::new();
    for entry in std::fs::read_dir(PROTO_DIR)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "proto") {
            files.push(path);
        }
    }
    // Sorted, so the generated code and descriptor set do not depend on directory order.
    files.sort();
    // Debug shows the file, line and column of a syntax or type error.
    let fds = protox::compile(&files, ["proto"]).map_err(|e| format!("{e:?}"))?;
    std::fs::write(
        out_dir.join("corral_v1_descriptor.bin"),
        fds.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        // `connect(url)` needs tonic's transport, which this crate does not pull in: clients
        // build a channel (TCP, TLS or unix socket) and call `VmServiceClient::new`.
        .build_transport(false)
        // Sorted maps, like the resource types, so encoding is deterministic.
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
