//! `thinpool demo`: the README's first command must work, quickly, and clean up.

mod common;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn demo_runs_checks_and_removes_its_pool() {
    let start = Instant::now();
    let out = thinpool(&["demo"]).ok();
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "demo took {:?}",
        start.elapsed()
    );
    let text = out.text();
    // Every step shows the command it runs.
    for cmd in [
        "$ thinpool pool create $POOL",
        "$ thinpool create $POOL vm --size 1G",
        "$ thinpool write $POOL vm",
        "$ thinpool snapshot $POOL vm vm-snap",
        "$ thinpool read $POOL vm-snap",
        "$ thinpool list $POOL",
        "$ thinpool rollback $POOL vm vm-snap",
        "$ thinpool remove $POOL vm",
        "$ thinpool pool info $POOL",
    ] {
        assert!(text.contains(cmd), "{cmd:?} missing:\n{text}");
    }
    assert_eq!(text.matches("OK:").count(), 4, "{text}");
    assert!(text.contains("0 of 4096 blocks"), "{text}");
    // The table shows copy-on-write at work: 14 blocks shared, 2 exclusive, per volume.
    let table: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("vm"))
        .collect();
    assert!(
        table
            .iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()[4..7] == ["16", "2", "14"]),
        "{text}"
    );
    // The temporary pool is gone.
    let pool = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("POOL="))
        .expect("demo prints POOL=");
    assert!(!std::path::Path::new(pool).exists(), "{pool} left behind");
}

#[test]
fn demo_in_a_directory_keeps_the_pool() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo-pool");
    let d = dir.to_str().unwrap();
    let out = thinpool(&["demo", d]).ok();
    assert!(
        out.text().contains(&format!("kept in {d}")),
        "{}",
        out.text()
    );
    let info = thinpool(&["pool", "info", d, "--json"]).ok().json();
    assert_eq!(info["data_blocks_used"], 0);
    assert_eq!(info["volumes"], 0);
    assert_eq!(
        thinpool(&["list", d, "--json"]).ok().json(),
        serde_json::json!([])
    );
}

#[test]
fn demo_refuses_a_used_directory() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("file"), b"mine").unwrap();
    thinpool(&["demo", tmp.path().to_str().unwrap()]).fails(1, "already exists");
    assert_eq!(std::fs::read(tmp.path().join("file")).unwrap(), b"mine");
}
