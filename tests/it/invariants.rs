//! The architecture invariants written in ARCHITECTURE.md, checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::support::root;

/// The workspace's packages and their normal (non-dev) dependencies, by name.
fn dependency_graph() -> BTreeMap<String, BTreeSet<String>> {
    let output = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1"])
        .current_dir(root())
        .output()
        .expect("cargo metadata");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let names: BTreeMap<&str, &str> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|package| (package["id"].as_str().unwrap(), package["name"].as_str().unwrap()))
        .collect();
    metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| {
            let dependencies = node["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|dep| dep["dep_kinds"].as_array().unwrap().iter().any(|kind| kind["kind"].is_null()))
                .map(|dep| names[dep["pkg"].as_str().unwrap()].to_owned())
                .collect();
            (names[node["id"].as_str().unwrap()].to_owned(), dependencies)
        })
        .collect()
}

fn closure(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![start.to_owned()];
    while let Some(name) = stack.pop() {
        for dependency in graph.get(&name).into_iter().flatten() {
            if seen.insert(dependency.clone()) {
                stack.push(dependency.clone());
            }
        }
    }
    seen
}

#[test]
fn sdk_plugin_depends_on_no_runtime_and_no_grpc() {
    let graph = dependency_graph();
    let sdk = closure(&graph, "iapd-sdk-plugin");
    for forbidden in ["tokio", "tonic", "hyper", "reqwest", "iapd"] {
        assert!(!sdk.contains(forbidden), "iapd-sdk-plugin depends on {forbidden}");
    }
}

#[test]
fn plugins_never_depend_on_the_server() {
    let graph = dependency_graph();
    let plugins: Vec<&String> =
        graph.keys().filter(|name| name.starts_with("iapd-plugin-") || name.starts_with("iapd-test-plugin-")).collect();
    assert!(plugins.len() >= 2, "found plugins: {plugins:?}");
    for plugin in plugins {
        let dependencies = closure(&graph, plugin);
        for forbidden in ["iapd", "tokio", "tonic", "iapd-emulators"] {
            assert!(!dependencies.contains(forbidden), "{plugin} depends on {forbidden}");
        }
    }
    // The emulators are for tests: nothing that ships depends on them.
    assert!(!closure(&graph, "iapd").contains("iapd-emulators"), "the server depends on the emulators");
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() && name != "target" && !name.to_string_lossy().starts_with('.') && name != "node_modules" {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn unsafe_code_lives_only_in_the_ffi_modules() {
    // The ffi modules, and this checker, which names the patterns.
    let allowed = [
        root().join("sdk-plugin/src/ffi.rs"),
        root().join("server/host/ffi.rs"),
        root().join("tests/it/invariants.rs"),
    ];
    let mut files = Vec::new();
    rust_files(&root(), &mut files);
    let unsafe_code = regex_lite_find;
    for file in files.iter().filter(|file| !allowed.contains(file)) {
        let text = std::fs::read_to_string(file).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            assert!(
                !unsafe_code(code),
                "{}:{}: unsafe code outside the ffi modules: {line}",
                file.display(),
                number + 1
            );
        }
    }
    let mut plugins: Vec<PathBuf> = std::fs::read_dir(root().join("plugins"))
        .unwrap()
        .map(|entry| entry.unwrap().path().join("src/lib.rs"))
        .collect();
    assert!(plugins.len() >= 2, "found plugins: {plugins:?}");
    plugins.push(root().join("tests/plugins/faulty/src/lib.rs"));
    for plugin in plugins {
        let text = std::fs::read_to_string(&plugin).unwrap();
        assert!(text.contains("#![forbid(unsafe_code)]"), "{} must forbid unsafe code", plugin.display());
    }
}

/// Finds `unsafe {`, `unsafe impl`, `unsafe fn`, an `unsafe extern "C" fn`
/// definition (a name follows `fn`), or an `unsafe(` attribute. Function
/// pointer types (`unsafe extern "C" fn(`) are not unsafe code.
fn regex_lite_find(code: &str) -> bool {
    let words: Vec<&str> = code.split_whitespace().collect();
    words.windows(2).any(|pair| match pair {
        ["unsafe", next] => {
            next.starts_with('{') || *next == "impl" || *next == "fn" || (*next == "extern" && defines_function(code))
        }
        _ => false,
    }) || code.contains("#[unsafe(")
}

fn defines_function(code: &str) -> bool {
    code.split("fn").nth(1).is_some_and(|rest| rest.trim_start().starts_with(|c: char| c.is_alphabetic() || c == '_'))
}

#[test]
fn the_ledger_knows_no_store_no_plugin_and_no_grpc() {
    let mut files = Vec::new();
    rust_files(&root().join("server/ledger"), &mut files);
    assert!(!files.is_empty(), "server/ledger has Rust files");
    for file in files {
        let code = std::fs::read_to_string(&file).unwrap();
        for forbidden in ["crate::host", "iapd_sdk_plugin", "tonic", "crate::service"] {
            assert!(!code.contains(forbidden), "{} uses {forbidden}", file.display());
        }
    }
}

#[test]
fn every_api_handler_starts_from_the_caller() {
    let code = std::fs::read_to_string(root().join("server/service.rs")).unwrap();
    let start = code.find("/// The RPCs' bodies").expect("the RPC bodies");
    let end = start + code[start..].find("\n}\n").expect("their end");
    let handlers: Vec<&str> = code[start..end].split("\n    async fn ").skip(1).collect();
    assert_eq!(handlers.len(), iapd::rpc_names().len(), "one handler per RPC");
    for handler in handlers {
        let name = handler.split('(').next().unwrap_or_default();
        // Everything before the first statement that reads the request's body.
        let prologue = handler.split("into_inner()").next().unwrap_or_default();
        assert!(prologue.contains("Caller::of(&request)?"), "{name} does not take its caller before anything else");
    }
}
