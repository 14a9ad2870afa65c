//! Clients in other languages, made from `proto/` as the README's recipes
//! say, calling the real server: each verifies, decodes `ErrorInfo`,
//! `RetryInfo` and `BadRequest` of real errors with its language's standard
//! `google.rpc` messages, asks a user's entitlements and takes the first event
//! of their stream: Python stubs from grpcio-tools (`tests/fixtures/python/`), Go
//! stubs from protoc-gen-go and protoc-gen-go-grpc through buf
//! (`tests/fixtures/go/`), Node with @grpc/proto-loader and protobufjs
//! (`tests/fixtures/node/`), and Java with Debian's grpc-java
//! (`tests/fixtures/java/`). `tests/run.sh` installs what they need.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{Server, root, tool};

/// Where Debian's Go library packages keep their sources, the GOPATH entry
/// the Go client builds against.
const DEBIAN_GOCODE: &str = "/usr/share/gocode";

fn show(output: &Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `command`, asserting it succeeds; `what` says what it was for.
fn run(command: &mut Command, what: &str) -> Output {
    let output = command.output().unwrap_or_else(|error| panic!("{what}: cannot run {command:?}: {error}"));
    assert!(output.status.success(), "{what} failed (tests/run.sh installs the tools):\n{}", show(&output));
    output
}

/// Runs a client with the server's address; it prints `ok` when every check passed.
fn assert_client_passes(mut client: Command, server: &Server, what: &str) {
    let output = client.arg(server.address.to_string()).output().unwrap_or_else(|error| panic!("{what}: {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.lines().any(|line| line == "ok"),
        "{what} failed:\n{}\n--- server logs ---\n{}",
        show(&output),
        server.logs()
    );
}

/// Generates Python messages and stubs of `files` (relative to `proto/`) into `out`.
pub(crate) fn python_stubs(python: &Path, out: &Path, files: &[PathBuf]) {
    let proto = root().join("proto");
    let mut protoc = Command::new(python);
    protoc.args(["-m", "grpc_tools.protoc", "-I"]).arg(&proto);
    protoc.arg(format!("--python_out={}", out.display())).arg(format!("--grpc_python_out={}", out.display()));
    run(protoc.args(files.iter().map(|file| proto.join(file))), "python -m grpc_tools.protoc");
}

/// Every file under `dir` whose name ends in `.{extension}`.
fn files_under(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path, extension));
        } else if path.extension().is_some_and(|found| found == extension) {
            files.push(path);
        }
    }
    files
}

#[test]
fn a_generated_python_client_verifies_consumes_and_reads_error_details() {
    let python = tool("python");
    let generated = tempfile::tempdir().expect("temp dir");
    python_stubs(&python, generated.path(), &["iapd/v1/iapd.proto".into()]);

    let server = Server::start(None, &[]);
    let mut client = Command::new(&python);
    client.arg(root().join("tests/fixtures/python/verify_client.py"));
    client.env("PYTHONPATH", generated.path()).env("PYTHONDONTWRITEBYTECODE", "1");
    assert_client_passes(client, &server, "the Python client");
}

/// Stubs of every file under `proto/`, Google's included, must not shadow the
/// standard `google.rpc` modules with a part of them.
#[test]
fn python_stubs_of_every_proto_file_keep_google_rpc_whole() {
    let python = tool("python");
    let generated = tempfile::tempdir().expect("temp dir");
    let proto = root().join("proto");
    let files: Vec<PathBuf> =
        files_under(&proto, "proto").iter().map(|file| file.strip_prefix(&proto).unwrap().to_owned()).collect();
    assert!(files.iter().any(|file| file.starts_with("google/rpc")), "no google.rpc files in proto/: {files:?}");
    python_stubs(&python, generated.path(), &files);

    let script = "from iapd.v1 import iapd_pb2_grpc\n\
                  from google.rpc import error_details_pb2, status_pb2\n\
                  from grpc_status import rpc_status\n\
                  names = sorted(error_details_pb2.DESCRIPTOR.message_types_by_name)\n\
                  print(' '.join(names))\n";
    let output = run(
        Command::new(&python)
            .args(["-c", script])
            .env("PYTHONPATH", generated.path())
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        "importing the stubs of every proto file",
    );
    let messages = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    for message in ["BadRequest", "ErrorInfo", "QuotaFailure", "RetryInfo", "PreconditionFailure", "LocalizedMessage"] {
        assert!(messages.split(' ').any(|name| name == message), "google.rpc.{message} missing: {messages}");
    }
}

/// A `go` command building in GOPATH mode against Debian's Go libraries,
/// with the build cache in `.tools/`.
fn go(gopath: &Path) -> Command {
    let mut command = Command::new(tool("go"));
    command
        .env("GO111MODULE", "off")
        .env("GOPATH", std::env::join_paths([gopath, Path::new(DEBIAN_GOCODE)]).unwrap())
        .env("GOCACHE", root().join(".tools/go/cache"))
        .env("GOFLAGS", "")
        .env("GOPROXY", "off");
    command
}

#[test]
fn a_generated_go_client_reads_error_details_next_to_the_standard_errdetails() {
    let gopath = tempfile::tempdir().expect("temp dir");
    let package = gopath.path().join("src/iapdclient");
    std::fs::create_dir_all(&package).unwrap();
    // As the README says: `buf generate` with the template, no flags.
    let template = root().join("tests/fixtures/go/buf.gen.yaml");
    run(
        Command::new(tool("buf"))
            .arg("generate")
            .arg("--template")
            .arg(&template)
            .arg("-o")
            .arg(&package)
            .current_dir(root()),
        "buf generate with protoc-gen-go and protoc-gen-go-grpc",
    );
    for file in ["gen/iapd/v1/iapd.pb.go", "gen/iapd/v1/iapd_grpc.pb.go", "gen/iapd/plugin/v1/plugin.pb.go"] {
        assert!(package.join(file).exists(), "buf generate did not write {file}");
    }
    std::fs::copy(root().join("tests/fixtures/go/main.go"), package.join("main.go")).unwrap();

    // Every generated package compiles, the plugin contract's too.
    run(go(gopath.path()).args(["vet", "iapdclient/..."]), "go vet");
    let client = gopath.path().join("client");
    run(go(gopath.path()).arg("build").arg("-o").arg(&client).arg("iapdclient"), "go build");

    let server = Server::start(None, &[]);
    assert_client_passes(Command::new(client), &server, "the Go client");
}

#[test]
fn a_node_client_reads_error_details() {
    let server = Server::start(None, &[]);
    let mut client = Command::new(tool("node"));
    client.arg(root().join("tests/fixtures/node/verify_client.js")).arg(root().join("proto"));
    client.env("NODE_PATH", root().join(".tools/node/node_modules"));
    assert_client_passes(client, &server, "the Node client");
}

/// The jars of Debian's packages the Java client compiles and runs against.
const JAVA_JARS: [&str; 13] = [
    "grpc-api",
    "grpc-core",
    "grpc-netty",
    "grpc-protobuf",
    "grpc-protobuf-lite",
    "grpc-stub",
    "grpc-context",
    "protobuf",
    "guava",
    "perfmark-api",
    "geronimo-annotation-1.3-spec",
    "jsr305",
    "error_prone_annotations",
];

#[test]
fn a_generated_java_client_verifies_consumes_and_reads_error_details() {
    let jars = Path::new("/usr/share/java");
    let mut classpath: Vec<PathBuf> = JAVA_JARS.iter().map(|jar| jars.join(format!("{jar}.jar"))).collect();
    // Netty's modules, not its all-in-one jar, which would bring them twice.
    for entry in std::fs::read_dir(jars).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("netty-") && !name.starts_with("netty-all") && name.ends_with(".Final.jar") {
            classpath.push(path);
        }
    }
    for jar in &classpath {
        assert!(jar.exists(), "{} is missing (tests/run.sh installs it)", jar.display());
    }
    let work = tempfile::tempdir().expect("temp dir");
    let (generated, classes) = (work.path().join("gen"), work.path().join("classes"));
    std::fs::create_dir_all(&generated).unwrap();
    // As the README says; google.rpc from the repo's copies, since Debian's
    // proto-google-common-protos predates ErrorInfo.
    run(
        Command::new("protoc")
            .args(["-I", "proto"])
            .arg(format!("--java_out={}", generated.display()))
            .arg("--plugin=protoc-gen-grpc-java=/usr/bin/grpc_java_plugin")
            .arg(format!("--grpc-java_out={}", generated.display()))
            .args(["proto/iapd/v1/iapd.proto", "proto/google/rpc/status.proto", "proto/google/rpc/error_details.proto"])
            .current_dir(root()),
        "protoc --java_out --grpc-java_out",
    );
    let sources = files_under(&generated, "java");
    assert!(sources.iter().any(|path| path.ends_with("iapd/v1/PurchaseServiceGrpc.java")), "{sources:?}");
    let jars_path = std::env::join_paths(&classpath).unwrap();
    run(
        Command::new("javac")
            .args(["-nowarn", "-encoding", "UTF-8", "-cp"])
            .arg(&jars_path)
            .arg("-d")
            .arg(&classes)
            .args(&sources)
            .arg(root().join("tests/fixtures/java/VerifyClient.java")),
        "javac",
    );
    let server = Server::start(None, &[]);
    let mut client = Command::new("java");
    client.arg("-cp").arg(std::env::join_paths(std::iter::once(classes).chain(classpath)).unwrap()).arg("VerifyClient");
    assert_client_passes(client, &server, "the Java client");
}
