//! A client in another language: Python stubs generated with grpcio-tools from
//! the public proto call the real server, and read the error details with the
//! standard `google.rpc` messages. The client is
//! `tests/fixtures/python/verify_client.py`; `tests/run.sh` installs what it
//! needs into `.tools/venv`.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::{Server, root, tool};

fn show(output: &Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Generates the Python messages and stubs of `iapd.proto` into `out`.
fn generate_stubs(python: &Path, out: &Path) {
    let proto = root().join("proto");
    let output = Command::new(python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto)
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .arg(proto.join("iapd/v1/iapd.proto"))
        .output()
        .expect("run python -m grpc_tools.protoc");
    assert!(
        output.status.success(),
        "generating the Python stubs failed (tests/run.sh installs grpcio-tools into .tools/venv):\n{}",
        show(&output)
    );
    for file in ["iapd/v1/iapd_pb2.py", "iapd/v1/iapd_pb2_grpc.py"] {
        assert!(out.join(file).exists(), "grpc_tools.protoc did not write {file}");
    }
}

#[test]
fn a_generated_python_client_verifies_consumes_and_reads_error_details() {
    let python = tool("python");
    let generated = tempfile::tempdir().expect("temp dir");
    generate_stubs(&python, generated.path());

    let server = Server::start(None, &[]);
    let output = Command::new(&python)
        .arg(root().join("tests/fixtures/python/verify_client.py"))
        .arg(server.address.to_string())
        .env("PYTHONPATH", generated.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.lines().any(|line| line == "ok"),
        "the Python client failed:\n{}\n--- server logs ---\n{}",
        show(&output),
        server.logs()
    );
}
