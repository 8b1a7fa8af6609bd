//! Logs: `serve` logs its start, each NBD connection and its stop at the default level, each
//! commit at debug (RUST_LOG=debug or -v), as text or as JSON lines that `jq` and serde
//! read; other commands stay silent on stderr unless asked.

mod common;
use common::serve;
use common::tools::have_tools;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// A client session that writes 1 MiB at `mib` MiB and flushes (a commit: the blocks are
/// new).
fn client_writes(dir: &Path, mib: u64) {
    let uri = format!("nbd+unix:///v?socket={}", dir.join("nbd.sock").display());
    let w = format!("write -P 7 {mib}M 1M");
    let out = Command::new("qemu-io")
        .args(["-f", "raw", &uri, "-c", &w, "-c", "flush"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serve_logs_connections_and_commits_as_json_lines() {
    if !have_tools(&["qemu-io", "jq"]) {
        return;
    }
    let tp = TestPool::new("256M", "64K");
    tp.run(&["create", "{}", "v", "--size", "16M"]).ok();
    let log = tp.tmp.path().join("serve.log");
    let dir = tp.dir.clone();
    let srv = serve::spawn(
        &dir,
        &["--log-format", "json"],
        &[("RUST_LOG", "debug")],
        Some(&log),
    );
    tp.run(&["snapshot", "{}", "v", "s1"]).ok();
    client_writes(&dir, 1);
    serve::sigterm(srv);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let with = |msg: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|v| v["fields"]["message"] == msg)
            .collect()
    };
    assert!(lines[0]["fields"]["message"]
        .as_str()
        .unwrap()
        .starts_with("exporting all volumes"));
    let commits = with("commit");
    // The snapshot's commit and the FLUSH's (the periodic timer may add more).
    assert!(commits.len() >= 2, "{text}");
    for c in &commits {
        assert_eq!(c["level"], "DEBUG");
        assert!(c["fields"]["seq"].as_u64().unwrap() > 1);
        assert!(c["fields"]["metadata_blocks"].as_u64().unwrap() > 0);
        assert!(c["fields"]["ms"].as_f64().unwrap() >= 0.0);
    }
    let attached = with("client attached");
    assert_eq!(attached.len(), 1, "{text}");
    assert_eq!(attached[0]["fields"]["export"], "v");
    assert_eq!(with("client detached").len(), 1);
    assert_eq!(with("stopped").len(), 1);
    // jq reads every line too.
    let out = Command::new("jq")
        .args(["-r", "select(.fields.message == \"commit\") | .fields.seq"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        commits.len()
    );
}

#[test]
fn default_levels_keep_requests_and_commits_out_and_flags_move_them() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let tp = TestPool::new("256M", "64K");
    tp.run(&["create", "{}", "v", "--size", "16M"]).ok();
    let dir = tp.dir.clone();
    // Default (info, text): start, the connection, stop; no commit lines.
    let log = tp.tmp.path().join("default.log");
    let srv = serve::spawn(&dir, &[], &[], Some(&log));
    client_writes(&dir, 2);
    serve::sigterm(srv);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(" INFO ") && text.contains("client attached"),
        "{text}"
    );
    assert!(!text.contains("thinpool::pool: commit"), "{text}");
    assert_eq!(text.lines().count(), 4, "{text}");
    // -v: commits too.
    let log = tp.tmp.path().join("v.log");
    let srv = serve::spawn(&dir, &["-v"], &[], Some(&log));
    client_writes(&dir, 3);
    serve::sigterm(srv);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("DEBUG thinpool::pool: commit seq="), "{text}");
    // -q: nothing at info.
    let log = tp.tmp.path().join("q.log");
    let srv = serve::spawn(&dir, &["-q"], &[], Some(&log));
    client_writes(&dir, 4);
    serve::sigterm(srv);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "");
    // Other commands: nothing on stderr by default; -vv shows their commit.
    let out = tp.run(&["snapshot", "{}", "v", "s2"]).ok();
    assert_eq!(out.stderr, "");
    let out = tp.run(&["-vv", "snapshot", "{}", "v", "s3"]).ok();
    assert!(
        out.stderr.contains("thinpool::pool: commit seq="),
        "{}",
        out.stderr
    );
    // A RUST_LOG that is not a filter says so and falls back to the flags.
    let out = Command::new(BIN)
        .args(["list", dir.to_str().unwrap()])
        .env("RUST_LOG", "thinpool=loud")
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a filter"), "{err}");
}
