//! `thinpool check`, `thinpool crashtest` and `--at-seq`, through the real binary.

mod common;
use common::{thinpool, TestPool};

#[test]
fn check_is_clean_and_reports_json() {
    let tp = TestPool::new("64M", "4K");
    tp.run(&["create", "{}", "v", "--size", "4M"]).ok();
    tp.run_in(&["write", "{}", "v"], Some(&vec![7u8; 300_000]))
        .ok();
    tp.run(&["snapshot", "{}", "v", "s"]).ok();
    let out = tp.run(&["check", "{}"]).ok();
    assert!(out.text().contains("clean"), "{}", out.text());
    let j = tp.run(&["check", "{}", "--json"]).ok().json();
    assert_eq!(j["clean"], true);
    assert_eq!(j["volumes"], 2);
    // 300,000 bytes = 74 blocks, shared by the snapshot: 74 entries in shared leaves.
    assert_eq!(j["mappings"], 74, "{j}");
    assert_eq!(j["data_blocks_used"], 74, "{j}");
    assert!(j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["severity"] != "error"));
}

#[test]
fn check_names_the_damaged_block_and_exits_1() {
    let tp = TestPool::new("64M", "4K");
    tp.run(&["create", "{}", "v", "--size", "4M"]).ok();
    tp.run_in(&["write", "{}", "v"], Some(&vec![7u8; 300_000]))
        .ok();
    let before = std::fs::read(tp.dir.join("metadata")).unwrap();
    // Damage each written block after the journal in turn until the checker objects.
    let mut hit = None;
    for b in 129..(before.len() / 4096) {
        let blk = &before[b * 4096..(b + 1) * 4096];
        if blk.iter().all(|&x| x == 0) {
            continue;
        }
        let mut bad = before.clone();
        bad[b * 4096 + 200] ^= 0x01;
        std::fs::write(tp.dir.join("metadata"), &bad).unwrap();
        let out = tp.run(&["check", "{}", "--json"]);
        if out.code == 1 {
            let j = out.json();
            assert_eq!(j["clean"], false);
            let named = j["findings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["severity"] == "error" && f["block"] == b as u64);
            assert!(named, "block {b} not named: {j}");
            assert!(
                out.stderr.starts_with("thinpool: check found"),
                "{}",
                out.stderr
            );
            hit = Some(b);
            break;
        }
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    assert!(hit.is_some(), "no damaged block was detected");
    std::fs::write(tp.dir.join("metadata"), &before).unwrap();
    tp.run(&["check", "{}"]).ok();
}

#[test]
fn at_seq_shows_an_older_commit_read_only() {
    let tp = TestPool::new("64M", "4K");
    tp.run(&["create", "{}", "v", "--size", "1M"]).ok();
    tp.run_in(&["write", "{}", "v"], Some(b"hello")).ok();
    let seq_hello = tp.info()["seq"].as_u64().unwrap();
    tp.run_in(&["write", "{}", "v", "--offset", "64K"], Some(b"world"))
        .ok();
    tp.run(&["snapshot", "{}", "v", "s"]).ok();
    let s = seq_hello.to_string();
    let at = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--at-seq", &s]);
        tp.run(&a).ok()
    };
    assert_eq!(at(&["read", "{}", "v", "--length", "5"]).stdout, b"hello");
    assert_eq!(
        at(&["read", "{}", "v", "--offset", "64K", "--length", "5"]).stdout,
        [0u8; 5]
    );
    assert_eq!(tp.read("v", 65536, 5), b"world");
    assert_eq!(
        at(&["list", "{}", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(tp.list().as_array().unwrap().len(), 2);
    let info = at(&["pool", "info", "{}", "--json"]).json();
    assert_eq!(info["seq"].as_u64(), Some(seq_hello));
    tp.run(&["list", "{}", "--at-seq", "1"])
        .fails(1, "cannot be opened");
}

#[test]
fn crashtest_runs_and_a_broken_commit_order_is_replayable() {
    let out = thinpool(&["crashtest", "--ops", "60", "--json"])
        .ok()
        .json();
    assert!(out["states"].as_u64().unwrap() > 50, "{out}");
    assert_eq!(out["runs"][0]["violations"].as_array().unwrap().len(), 0);

    let tmp = tempfile::tempdir().unwrap();
    let replay = tmp.path().join("replay.json");
    let r = replay.to_str().unwrap();
    let bad = thinpool(&[
        "crashtest",
        "--ops",
        "200",
        "--broken-commit-order",
        "--replay-out",
        r,
    ]);
    let bad = bad.fails(1, "violation");
    assert!(bad.stderr.contains("--replay"), "{}", bad.stderr);
    let again = thinpool(&["crashtest", "--replay", r]).fails(1, "violation");
    // Same seed, crash point and state, and the same broken promise.
    let first_line = |s: &str| s.lines().next().unwrap_or("").to_string();
    assert_eq!(first_line(&again.stderr), first_line(&bad.stderr));
    assert!(
        bad.stderr
            .contains("reproduce with `thinpool crashtest --replay"),
        "{}",
        bad.stderr
    );
    thinpool(&["crashtest", "--faults", "drop,melt"]).fails(1, "unknown fault");
}

/// Without `--replay-out`, a violation's replay file is a new file in $TMPDIR: nothing is
/// written into the working directory, an existing file of that name is never overwritten,
/// and `--json` names the file.
#[test]
fn crashtest_replay_goes_to_a_new_file_in_tmpdir() {
    let cwd = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let run = || {
        std::process::Command::new(common::BIN)
            .args([
                "crashtest",
                "--ops",
                "200",
                "--broken-commit-order",
                "--json",
            ])
            .current_dir(cwd.path())
            .env("TMPDIR", tmp.path())
            .output()
            .unwrap()
    };
    let replay_of = |o: &std::process::Output| -> std::path::PathBuf {
        assert_eq!(o.status.code(), Some(1));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        j["replay_file"].as_str().expect("replay_file").into()
    };
    let first = replay_of(&run());
    assert_eq!(first.parent(), Some(tmp.path()));
    let kept = std::fs::read(&first).unwrap();
    let second = replay_of(&run());
    assert_ne!(first, second);
    assert_eq!(
        std::fs::read(&first).unwrap(),
        kept,
        "an existing file was rewritten"
    );
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0);
    thinpool(&["crashtest", "--replay", second.to_str().unwrap()]).fails(1, "violation");
    // A replay file that cannot be written is an error naming it, not a panic.
    let nowhere = cwd.path().join("missing-dir/replay.json");
    thinpool(&[
        "crashtest",
        "--ops",
        "200",
        "--broken-commit-order",
        "--replay-out",
        nowhere.to_str().unwrap(),
    ])
    .fails(1, "missing-dir/replay.json");
}

#[test]
fn kill_mode_survives_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let out = thinpool(&[
        "crashtest",
        "--kill",
        dir.to_str().unwrap(),
        "--rounds",
        "4",
        "--json",
    ])
    .ok()
    .json();
    assert_eq!(out["rounds"], 4);
    assert!(out["sectors_checked"].as_u64().unwrap() >= 4 * 4 * 2048);
    assert_eq!(out["violations"].as_array().unwrap().len(), 0);
}
