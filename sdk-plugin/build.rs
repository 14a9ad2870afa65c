//! Compiles the plugin contract (`proto/iapd/plugin/v1`) with a pure-Rust
//! protobuf compiler, so building a plugin needs no `protoc`, and records the
//! compiler and target for the descriptor's build info.

use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "../proto";
    let file = "iapd/plugin/v1/plugin.proto";
    println!("cargo:rerun-if-changed={proto_root}/{file}");
    let descriptors = protox::compile([file], [proto_root])?;
    prost_build::Config::new().compile_fds(descriptors)?;

    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|version| version.trim().to_owned())
        .unwrap_or_else(|| "rustc unknown".into());
    println!("cargo:rustc-env=IAPD_SDK_RUSTC={rustc_version}");
    println!("cargo:rustc-env=IAPD_SDK_TARGET={}", std::env::var("TARGET")?);
    Ok(())
}
