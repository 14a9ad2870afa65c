//! Compiles the public API (`proto/iapd/v1`) with a pure-Rust protobuf
//! compiler feeding tonic's code generator, so no `protoc` install is needed,
//! and writes the file descriptor set that server reflection serves (the API
//! plus the `google.rpc` error details it sends).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "proto";
    let api = "iapd/v1/iapd.proto";
    let error_details = "google/rpc/error_details.proto";
    println!("cargo:rerun-if-changed={proto_root}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut reflection = protox::Compiler::new([proto_root])?;
    reflection.include_imports(true).open_files([api, error_details])?;
    std::fs::write(
        out_dir.join("iapd_descriptor.bin"),
        prost::Message::encode_to_vec(&reflection.file_descriptor_set()),
    )?;

    let api_descriptors = protox::compile([api], [proto_root])?;
    // The API's own codec maps a request that does not decode to
    // INVALID_ARGUMENT (server/codec.rs).
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::ApiCodec")
        .compile_fds(api_descriptors)?;
    Ok(())
}
