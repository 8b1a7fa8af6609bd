//! Failures of import, export and the diffs: clear messages, and the pool (or the target
//! volume) left as it was.

mod common;
use common::*;

fn diff_stream(tp: &TestPool) -> Vec<u8> {
    tp.run(&["create", "{}", "src", "--size", "4M"]).ok();
    let f = tp.put("d", &pattern(3, 700_000));
    tp.run(&["write", "{}", "src", &f]).ok();
    tp.run(&["snapshot", "{}", "src", "base"]).ok();
    tp.run(&["export-diff", "{}", "base", "-"]).ok().stdout
}

/// A target volume with some data, and everything that must not change.
fn target(tp: &TestPool) -> (serde_json::Value, Vec<u8>) {
    tp.run(&["create", "{}", "dst", "--size", "2M"]).ok();
    let f = tp.put("t", &pattern(9, 100_000));
    tp.run(&["write", "{}", "dst", "--offset", "64K", &f]).ok();
    (tp.list(), tp.run(&["export", "{}", "dst", "-"]).ok().stdout)
}

fn unchanged(tp: &TestPool, before: &(serde_json::Value, Vec<u8>)) {
    assert_eq!(tp.list(), before.0, "volumes changed");
    let now = tp.run(&["export", "{}", "dst", "-"]).ok().stdout;
    assert!(now == before.1, "target contents changed");
    tp.check_clean();
}

#[test]
fn bad_diff_header_is_refused() {
    let tp = TestPool::new("64M", "64K");
    let before = target(&tp);
    let f = tp.put("bad", b"rbd diff v2\nsomething");
    tp.run(&["import-diff", "{}", "dst", &f])
        .fails(1, "not an rbd diff v1 stream");
    let f = tp.put("empty", b"");
    tp.run(&["import-diff", "{}", "dst", &f])
        .fails(1, "not an rbd diff v1 stream");
    let f = tp.put("short", b"rbd di");
    tp.run(&["import-diff", "{}", "dst", &f])
        .fails(1, "truncated");
    unchanged(&tp, &before);
}

#[test]
fn truncated_diff_leaves_the_target_unchanged() {
    let tp = TestPool::new("64M", "64K");
    let d = diff_stream(&tp);
    let before = target(&tp);
    // Cut inside the metadata, inside a record header, inside the data, before the end tag.
    for cut in [14, 20, 40, 100_000, d.len() - 1] {
        let f = tp.put("cut", &d[..cut]);
        tp.run(&["import-diff", "{}", "dst", &f, "--no-snapshot"])
            .fails(1, "truncated");
        unchanged(&tp, &before);
    }
    // Unknown record tag after the metadata.
    let mut bad = d[..d.len() - 1].to_vec();
    bad.push(b'q');
    let f = tp.put("tag", &bad);
    tp.run(&["import-diff", "{}", "dst", &f, "--no-snapshot"])
        .fails(1, "unknown record tag 0x71");
    unchanged(&tp, &before);
    // The whole stream applies.
    let f = tp.put("all", &d);
    tp.run(&["import-diff", "{}", "dst", &f, "--no-snapshot"])
        .ok();
}

#[test]
fn record_beyond_the_image_size_is_refused() {
    let tp = TestPool::new("64M", "64K");
    let before = target(&tp);
    let mut s = b"rbd diff v1\ns".to_vec();
    s.extend_from_slice(&(2u64 << 20).to_le_bytes());
    s.push(b'z');
    s.extend_from_slice(&0u64.to_le_bytes());
    s.extend_from_slice(&(1u64 << 20).to_le_bytes()); // valid: zero the first MiB
    s.push(b'w');
    s.extend_from_slice(&(2u64 << 20).to_le_bytes());
    s.extend_from_slice(&4u64.to_le_bytes());
    s.extend_from_slice(b"abcd");
    s.push(b'e');
    let f = tp.put("big", &s);
    tp.run(&["import-diff", "{}", "dst", &f])
        .fails(1, "beyond the image size");
    unchanged(&tp, &before);
}

#[test]
fn import_diff_needs_its_from_snapshot() {
    let tp = TestPool::new("64M", "64K");
    diff_stream(&tp);
    tp.run(&["write", "{}", "src", "--offset", "1M", &tp.put("x", b"xyz")])
        .ok();
    tp.run(&["snapshot", "{}", "src", "next"]).ok();
    let incr = tp
        .run(&["export-diff", "{}", "next", "-", "--from", "base"])
        .ok()
        .stdout;
    let before = target(&tp);
    let f = tp.put("incr", &incr);
    tp.run(&["import-diff", "{}", "dst", &f])
        .fails(1, "has no snapshot of that name");
    // A volume named 'base' exists, but it is not a snapshot of 'dst'.
    assert!(tp
        .list()
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["name"] == "base"));
    unchanged(&tp, &before);
    // A diff whose end snapshot already exists.
    let full = tp.run(&["export-diff", "{}", "base", "-"]).ok().stdout;
    let f = tp.put("full", &full);
    tp.run(&["import-diff", "{}", "dst", &f])
        .fails(1, "already exists");
    unchanged(&tp, &before);
    tp.run(&["import-diff", "{}", "nosuch", &f])
        .fails(1, "no volume named 'nosuch'");
}

#[test]
fn import_into_an_existing_name_is_refused() {
    let tp = TestPool::new("64M", "64K");
    let before = target(&tp);
    let f = tp.put("img", &pattern(1, 200_000));
    tp.run(&["import", "{}", "dst", &f])
        .fails(1, "already exists");
    unchanged(&tp, &before);
    // And the other input mistakes.
    tp.run(&["import", "{}", "n", &f, "--size", "64K"])
        .fails(1, "larger than the requested size");
    let out = tp
        .run_in(&["import", "{}", "n", "-"], Some(b""))
        .fails(1, "import of 'n' failed: the input is empty");
    assert_eq!(out.stderr.matches("import of").count(), 1, "{}", out.stderr);
    tp.run_in(
        &["import", "{}", "n", "-", "--size", "4K"],
        Some(&[1u8; 5000]),
    )
    .fails(1, "longer than the requested size");
    tp.run(&["import", "{}", "n", &tp.file("missing").to_string_lossy()])
        .fails(1, "cannot open");
    unchanged(&tp, &before);
}

#[test]
fn import_larger_than_the_pool_leaves_no_volume_behind() {
    let tp = TestPool::new("8M", "64K");
    let (info_before, list_before) = tp.state();
    let f = tp.put("img", &pattern(5, 12 << 20));
    let out = tp
        .run(&["import", "{}", "huge", &f])
        .fails(1, "out of data space");
    assert!(out.stderr.contains("removed"), "{}", out.stderr);
    let (info_after, list_after) = tp.state();
    assert_eq!(list_after, list_before);
    assert_eq!(
        info_after["data_blocks_used"], info_before["data_blocks_used"],
        "blocks leaked"
    );
    // Same from a stream of unknown length.
    tp.run_in(&["import", "{}", "huge", "-"], Some(&pattern(5, 12 << 20)))
        .fails(1, "out of data space");
    assert_eq!(tp.list(), list_before);
    tp.check_clean();
    // The pool still works.
    tp.run(&["import", "{}", "fits", &tp.put("s", &pattern(1, 1 << 20))])
        .ok();
}

#[test]
fn export_errors_are_clear() {
    let tp = TestPool::new("64M", "64K");
    tp.run(&["export", "{}", "nosuch", &tp.file("o").to_string_lossy()])
        .fails(1, "no volume named 'nosuch'");
    tp.run(&["create", "{}", "v", "--size", "1M"]).ok();
    tp.run(&["export", "{}", "v", "/nonexistent-dir/x.img"])
        .fails(1, "cannot create");
    tp.run(&["export-diff", "{}", "v", "-", "--from", "nosuch"])
        .fails(1, "no volume named 'nosuch'");
}

/// Output files never overwrite the pool's own files, whatever name reaches them (a symlink,
/// `..`): `export`, `export-diff` and `read FILE` refuse, and the pool reads back intact.
#[test]
fn outputs_never_overwrite_the_pools_own_files() {
    let tp = TestPool::new("64M", "64K");
    tp.run(&["create", "{}", "v", "--size", "1M"]).ok();
    let data = pattern(5, 1 << 20);
    let f = tp.put("in", &data);
    tp.run(&["write", "{}", "v", &f]).ok();
    let link = tp.file("link-to-data");
    std::os::unix::fs::symlink(tp.dir.join("data"), &link).unwrap();
    let via_dots = format!("{}/../pool/metadata", tp.p());
    for target in [
        tp.dir.join("data").to_str().unwrap(),
        link.to_str().unwrap(),
        via_dots.as_str(),
    ] {
        tp.run(&["export", "{}", "v", target])
            .fails(1, "this pool's");
        tp.run(&["export-diff", "{}", "v", target])
            .fails(1, "this pool's");
        tp.run(&["read", "{}", "v", target]).fails(1, "this pool's");
    }
    assert_eq!(tp.read("v", 0, 1 << 20), data);
    tp.check_clean();
}

#[test]
fn a_guard_left_by_an_interrupted_import_is_not_dropped_silently() {
    // What a `kill -9` during `import-diff` leaves: the guard snapshot of the target's
    // old contents, and the target half-written. The next import used to remove the guard
    // (the only copy of the old contents) and apply on top of the half-written volume.
    let tp = TestPool::new("64M", "64K");
    let stream = tp.put("diff", &diff_stream(&tp));
    tp.run(&["create", "{}", "dst", "--size", "4M"]).ok();
    let id = tp
        .list()
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "dst")
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let guard = format!(".import-diff-guard-{id}");
    tp.run(&["snapshot", "{}", "dst", &guard, "--read-only"])
        .ok();
    let half = tp.put("half", &pattern(5, 300_000));
    tp.run(&["write", "{}", "dst", &half]).ok();
    let before = (tp.list(), tp.run(&["export", "{}", "dst", "-"]).ok().stdout);
    tp.run(&["import-diff", "{}", "dst", &stream, "--no-snapshot"])
        .fails(1, "was interrupted")
        // The advice names this pool, not a placeholder.
        .fails(1, &format!("thinpool rollback {} dst {guard}", tp.p()));
    unchanged(&tp, &before);
    // Its advice works: roll back to the guard, remove it, import again.
    tp.run(&["rollback", "{}", "dst", &guard]).ok();
    tp.run(&["remove", "{}", &guard]).ok();
    tp.run(&["import-diff", "{}", "dst", &stream, "--no-snapshot"])
        .ok();
    let got = tp.run(&["export", "{}", "dst", "-"]).ok().stdout;
    let want = tp.run(&["export", "{}", "base", "-"]).ok().stdout;
    assert!(
        got == want,
        "the import after recovery differs from its source"
    );
}
