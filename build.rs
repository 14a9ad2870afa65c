//! Compiles the public API (`proto/iapd/v1`) with a pure-Rust protobuf
//! compiler feeding tonic's code generator, so no `protoc` install is needed,
//! and writes the file descriptor set that server reflection serves: the API
//! plus Google's `google.rpc` status and error details, which errors carry.

use std::path::PathBuf;

use protox::prost_reflect::prost_types::FileDescriptorSet;

const API: &str = "iapd/v1/iapd.proto";
const ERROR_DETAILS: &str = "google/rpc/error_details.proto";
const STATUS: &str = "google/rpc/status.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "proto";
    println!("cargo:rerun-if-changed={proto_root}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut reflection = protox::Compiler::new([proto_root])?;
    reflection.include_imports(true).open_files([API, ERROR_DETAILS, STATUS])?;
    let mut served = reflection.file_descriptor_set();
    name_error_details_as_dependency(&mut served)?;
    std::fs::write(out_dir.join("iapd_descriptor.bin"), prost::Message::encode_to_vec(&served))?;

    let api_descriptors = protox::compile([API], [proto_root])?;
    // The API's own codec maps a request that does not decode to
    // INVALID_ARGUMENT (server/codec.rs).
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::ApiCodec")
        .compile_fds(api_descriptors)?;
    Ok(())
}

/// Lists the error details file among the served API file's dependencies, so
/// that a reflection client loads the detail types along with the service,
/// before its call. grpcurl otherwise looks them up after the call, and with
/// `-max-time` that lookup can come after its deadline and fail, leaving the
/// details undecoded. The proto source does not import the file: no message
/// of the API uses it, and generated clients take it from Google's packages.
fn name_error_details_as_dependency(set: &mut FileDescriptorSet) -> Result<(), String> {
    let api = set.file.iter_mut().find(|file| file.name() == API).ok_or(format!("{API} is not in the set"))?;
    if !api.dependency.iter().any(|dependency| dependency == ERROR_DETAILS) {
        api.dependency.push(ERROR_DETAILS.to_owned());
    }
    Ok(())
}
