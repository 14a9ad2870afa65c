//! The public API follows buf's style rules.

use crate::support::{root, tool};

#[test]
fn buf_lint_passes() {
    let output = std::process::Command::new(tool("buf")).arg("lint").current_dir(root()).output().expect("run buf");
    assert!(
        output.status.success(),
        "buf lint:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
