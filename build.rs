//! Compiles the public API (`proto/iapd/v1`) with a pure-Rust protobuf
//! compiler feeding tonic's code generator, so no `protoc` install is needed,
//! and writes the file descriptor set that server reflection serves: the API
//! plus Google's `google.rpc` status and error details, which errors carry.

use std::path::PathBuf;

const API: &str = "iapd/v1/iapd.proto";
const ERROR_DETAILS: &str = "google/rpc/error_details.proto";
const STATUS: &str = "google/rpc/status.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "proto";
    println!("cargo:rerun-if-changed={proto_root}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut reflection = protox::Compiler::new([proto_root])?;
    reflection.include_imports(true).open_files([API, ERROR_DETAILS, STATUS])?;
    std::fs::write(
        out_dir.join("iapd_descriptor.bin"),
        prost::Message::encode_to_vec(&reflection.file_descriptor_set()),
    )?;

    let api_descriptors = protox::compile([API], [proto_root])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(api_descriptors)?;
    Ok(())
}
