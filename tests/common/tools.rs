//! Tool discovery for tests that drive real clients (qemu-img, nbdinfo, fio, rbd, ...):
//! a missing tool fails the test when `CI` is set, and skips it loudly otherwise.

use std::process::Command;

/// True when every tool is installed. Otherwise: under `CI` the test fails, elsewhere it
/// prints a loud skip message and the caller returns.
pub fn have_tools(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {t}"))
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set and required tools are missing: {missing:?}");
    }
    eprintln!(
        "\n!!!!! SKIPPING: tools not installed: {missing:?} (tools/test.sh installs them) !!!!!\n"
    );
    false
}
