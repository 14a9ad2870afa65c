//! The public API follows buf's style rules, and never breaks the generated
//! stubs of its users: `buf breaking` against the released API
//! (`tests/fixtures/api-baseline`, made by its `make.sh`), for iapd.v1 and
//! the plugin contract.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::{root, tool};

const BASELINE: &str = "tests/fixtures/api-baseline";

fn buf(args: &[&str], dir: &Path) -> Output {
    Command::new(tool("buf")).args(args).current_dir(dir).output().expect("run buf")
}

fn said(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn buf_lint_passes() {
    let output = buf(&["lint"], &root());
    assert!(output.status.success(), "buf lint:\n{}", said(&output));
}

#[test]
fn the_api_and_the_plugin_contract_only_grow_from_the_released_baseline() {
    let output = buf(&["breaking", "--against", BASELINE], &root());
    assert!(output.status.success(), "buf breaking against {BASELINE}:\n{}", said(&output));
}

/// The check above can fail: a copy of the API with one field renumbered in
/// each of its two packages is refused, naming both.
#[test]
fn a_renumbered_field_breaks_against_the_baseline() {
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(root().join("buf.yaml"), copy.path().join("buf.yaml")).unwrap();
    let edits = [
        ("iapd/v1/iapd.proto", "message AcknowledgeRequest {", "string developer_payload = 5;"),
        ("iapd/plugin/v1/plugin.proto", "message AcknowledgeRequest {", "string developer_payload = 4;"),
    ];
    for entry in walk(&root().join("proto")) {
        let relative = entry.strip_prefix(root().join("proto")).unwrap();
        let target = copy.path().join("proto").join(relative);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        let mut text = std::fs::read_to_string(&entry).unwrap();
        if let Some((_, message, field)) = edits.iter().find(|(file, ..)| relative == Path::new(file)) {
            let message_at = text.find(message).expect("the message");
            let at = message_at + text[message_at..].find(field).expect("the field");
            let renumbered = format!("{} = 15;", field.split(" = ").next().unwrap_or(field));
            text.replace_range(at..at + field.len(), &renumbered);
        }
        std::fs::write(target, text).unwrap();
    }
    let against = root().join(BASELINE);
    let output = buf(&["breaking", "--against", against.to_str().unwrap()], copy.path());
    let said = said(&output);
    assert!(!output.status.success(), "a renumbered field passed:\n{said}");
    for (file, ..) in edits {
        assert!(said.contains(file) && said.contains("developer_payload"), "{file} not named:\n{said}");
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
