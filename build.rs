//! Compiles the public API (`proto/iapd/v1`) with a pure-Rust protobuf
//! compiler feeding tonic's code generator, so no `protoc` install is needed,
//! and writes the file descriptor set that server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "proto";
    let file = "iapd/v1/iapd.proto";
    println!("cargo:rerun-if-changed={proto_root}/{file}");
    let descriptors = protox::Compiler::new([proto_root])?.include_imports(true).open_file(file)?.file_descriptor_set();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("iapd_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
