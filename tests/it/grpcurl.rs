//! The README's grpcurl examples, run literally against the real binary on
//! its embedded defaults (only the address is changed), plus reflection and
//! health through grpcurl.

use std::process::Command;

use crate::support::{Server, root, tool};

/// The README's command lines that `wanted` picks, in order, with the
/// expected failure code of those marked `# fails: <Code>`.
pub(crate) fn readme_lines(wanted: impl Fn(&str) -> bool) -> Vec<(String, Option<String>)> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    readme
        .lines()
        .filter(|line| wanted(line))
        .map(|line| match line.split_once("  # fails: ") {
            Some((command, code)) => (command.to_owned(), Some(code.trim().to_owned())),
            None => (line.to_owned(), None),
        })
        .collect()
}

/// The `grpcurl` lines of the README for the server on its embedded defaults.
fn readme_examples() -> Vec<(String, Option<String>)> {
    readme_lines(|line| line.starts_with("grpcurl ") && line.contains("localhost:50051"))
}

/// Runs README lines in order, each after `rewrite` (addresses), asserting
/// that each succeeds or fails with its `# fails:` code; their outputs.
pub(crate) fn run_all(lines: &[(String, Option<String>)], rewrite: impl Fn(&str) -> String) -> Vec<String> {
    let mut outputs = Vec::new();
    for (line, failure) in lines {
        let command = rewrite(line);
        let (ok, output) = run(&command);
        match failure {
            None => assert!(ok, "`{command}` failed:\n{output}"),
            Some(code) => {
                assert!(!ok, "`{command}` should fail with {code}:\n{output}");
                assert!(output.contains(&format!("Code: {code}")), "`{command}`: expected {code}:\n{output}");
            }
        }
        outputs.push(output);
    }
    outputs
}

/// Runs a shell command line with grpcurl on the PATH: (success, output).
fn run(command_line: &str) -> (bool, String) {
    let grpcurl = tool("grpcurl");
    let path = format!("{}:{}", grpcurl.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let output = Command::new("sh").arg("-c").arg(command_line).env("PATH", path).output().expect("run sh");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
fn the_readme_examples_work_as_written() {
    let server = Server::start(None, &[]);
    let examples = readme_examples();
    assert!(examples.len() >= 12, "the README lost its examples: {examples:?}");
    let all = run_all(&examples, |command| command.replace("localhost:50051", &server.address.to_string())).join("\n");
    for expected in [
        "iapd.v1.PurchaseService",
        "grpc.health.v1.Health",
        "rpc Verify ( .iapd.v1.VerifyRequest ) returns ( .iapd.v1.VerifyResponse );",
        "\"verdict\": \"VERDICT_VALID\"",
        "\"verdict\": \"VERDICT_REFUNDED\"",
        "\"verdict\": \"VERDICT_USER_MISMATCH\"",
        // The ledger's walkthrough: alice claims, bob's replay is refused.
        "\"claim\": \"CLAIM_NEW\"",
        "\"verdict\": \"VERDICT_CLAIMED_BY_OTHER_USER\"",
        "\"alreadyConsumed\": true",
        "\"nextPageToken\"",
        "\"status\": \"SERVING\"",
        // Error details are decoded through reflection, not shown as raw bytes.
        "{\"@type\":\"type.googleapis.com/google.rpc.ErrorInfo\",\"domain\":\"iapd\"",
        "\"reason\":\"UNKNOWN_STORE\"",
        "{\"@type\":\"type.googleapis.com/google.rpc.RetryInfo\",\"retryDelay\":\"2s\"}",
    ] {
        assert!(all.contains(expected), "`{expected}` missing from the examples' output:\n{all}");
    }
}

#[test]
fn reflection_v1_and_health_per_store() {
    let server = Server::start(None, &[]);
    let address = server.address.to_string();
    // grpcurl tries reflection v1 first; -use-reflection is the default.
    let (ok, output) = run(&format!("grpcurl -plaintext {address} describe iapd.v1.Verdict"));
    assert!(ok && output.contains("VERDICT_NOT_FOUND = 5;"), "{output}");
    // Google's google.rpc files are served whole, for decoding error details.
    for symbol in ["google.rpc.Status", "google.rpc.ErrorInfo", "google.rpc.QuotaFailure"] {
        let (ok, output) = run(&format!("grpcurl -plaintext {address} describe {symbol}"));
        assert!(ok && output.contains(&format!("{symbol} is a message:")), "describe {symbol}:\n{output}");
    }
    // Both reflection versions answer, each called explicitly.
    for version in ["v1", "v1alpha"] {
        let (ok, output) = run(&format!(
            "grpcurl -plaintext -d '{{\"list_services\": \"\"}}' {address} grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
        ));
        assert!(ok && output.contains("\"name\": \"iapd.v1.PurchaseService\""), "reflection {version}:\n{output}");
    }
    let (ok, output) = run(&format!(
        "grpcurl -plaintext -d '{{\"service\": \"iapd.v1.PurchaseService/nope\"}}' {address} grpc.health.v1.Health/Check"
    ));
    assert!(!ok && output.contains("Code: NotFound"), "an unknown store has no health entry:\n{output}");
}

/// The README's deadline example, run 20 times: each must show its
/// `ErrorInfo` decoded. The answer comes a few tens of milliseconds before
/// grpcurl's own deadline, too late for a reflection lookup of the detail
/// type after it, so this holds only because reflection hands grpcurl the
/// `google.rpc` files with the service's, before the call.
#[test]
fn the_deadline_example_decodes_its_details_every_time() {
    let server = Server::start(None, &[]);
    let example = readme_lines(|line| {
        line.starts_with("grpcurl ")
            && line.contains("localhost:50051")
            && line.contains("/Verify")
            && line.ends_with("# fails: DeadlineExceeded")
    });
    assert_eq!(example.len(), 1, "the README's deadline example: {example:?}");
    let decoded = "{\"@type\":\"type.googleapis.com/google.rpc.ErrorInfo\",\"domain\":\"iapd\"";
    for attempt in 1..=20 {
        let output = run_all(&example, |command| command.replace("localhost:50051", &server.address.to_string()));
        assert!(output[0].contains(decoded), "run {attempt} of 20 did not decode its ErrorInfo:\n{}", output[0]);
    }
}
