//! Pool files that were truncated, substituted or replaced by something that is not a file
//! (issue 10, items 2 and 9): every command says so and exits non-zero; nothing reads zeros
//! where data is mapped, nothing hangs.

mod common;
use common::*;
use std::time::Duration;

/// How long a command may take before it counts as hung.
const LIMIT: Duration = Duration::from_secs(20);

/// A 64K-block pool with 3 MiB written to 'v' (48 mapped blocks, 0..3 MiB of the data file).
fn pool_with_data() -> (TestPool, Vec<u8>) {
    let tp = TestPool::new("64M", "64K");
    tp.run(&["create", "{}", "v", "--size", "8M"]).ok();
    let data = pattern(3, 3 << 20);
    tp.run(&["write", "{}", "v", &tp.put("in.bin", &data)]).ok();
    (tp, data)
}

/// Every way of looking at the pool fails with `needle`; none reads zeros.
fn every_command_refuses(tp: &TestPool, needle: &str) {
    let out = tp.run(&["check", "{}"]).fails(1, "check found");
    assert!(out.text().contains(needle), "check: {}", out.text());
    let j = tp.run(&["check", "{}", "--json"]);
    assert_eq!(j.code, 1);
    assert_eq!(j.json()["clean"], false);
    tp.run(&["read", "{}", "v", "--length", "64K"])
        .fails(1, needle);
    tp.run(&["list", "{}"]).fails(1, needle);
    tp.run(&["export", "{}", "v", "-"]).fails(1, needle);
    tp.run(&["write", "{}", "v", &tp.put("w.bin", b"x")])
        .fails(1, needle);
    // A server must not start on it either.
    let sock = tp.file("s.sock");
    let o = thinpool_within(
        &["serve", tp.p(), "--socket", sock.to_str().unwrap()],
        LIMIT,
    );
    assert_eq!(o.code, 1, "{}", o.stderr);
}

#[test]
fn a_truncated_data_file_is_damage() {
    let (tp, _) = pool_with_data();
    let dpath = tp.dir.join("data");
    let full = std::fs::read(&dpath).unwrap();
    for len in [0u64, 1, 4095, 65537, 1 << 20, (2 << 20) + 3, (3 << 20) - 1] {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&dpath)
            .unwrap();
        f.set_len(len).unwrap();
        drop(f);
        every_command_refuses(&tp, "data file");
        // Refusing changed nothing: the file was not silently grown back.
        assert_eq!(std::fs::metadata(&dpath).unwrap().len(), len);
        std::fs::write(&dpath, &full).unwrap();
    }
    tp.check_clean();
}

#[test]
fn check_names_the_blocks_past_the_end() {
    let (tp, _) = pool_with_data();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(tp.dir.join("data"))
        .unwrap();
    f.set_len(1 << 20).unwrap();
    let j = tp.run(&["check", "{}", "--json"]).json();
    let msgs: Vec<String> = j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "error")
        .map(|f| f["message"].as_str().unwrap().to_string())
        .collect();
    // Blocks 16..48 of 'v' lie past the 1 MiB end: 32 blocks.
    assert!(
        msgs.iter()
            .any(|m| m.contains("32 mapped blocks") && m.contains("past the end")),
        "{msgs:?}"
    );
}

/// A data file longer than every mapped block but shorter than the pool (its unmapped tail
/// lost, e.g. by a copy that dropped trailing holes) is not damage: a read-write open
/// restores its size, and the data reads back.
#[test]
fn a_data_file_missing_only_unmapped_tail_still_opens() {
    let (tp, data) = pool_with_data();
    let dpath = tp.dir.join("data");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&dpath)
        .unwrap();
    f.set_len(3 << 20).unwrap();
    drop(f);
    tp.run(&["check", "{}"]).ok();
    assert_eq!(tp.read("v", 0, 3 << 20), data);
    tp.run(&["create", "{}", "w", "--size", "1M"]).ok();
    assert_eq!(std::fs::metadata(&dpath).unwrap().len(), 64 << 20);
    tp.check_clean();
}

#[test]
fn data_replaced_by_a_character_device_is_refused() {
    let (tp, _) = pool_with_data();
    let dpath = tp.dir.join("data");
    std::fs::rename(&dpath, tp.file("data.saved")).unwrap();
    for dev in ["/dev/null", "/dev/zero"] {
        std::os::unix::fs::symlink(dev, &dpath).unwrap();
        every_command_refuses(&tp, "not a regular file or block device");
        std::fs::remove_file(&dpath).unwrap();
    }
    std::fs::rename(tp.file("data.saved"), &dpath).unwrap();
    tp.check_clean();
}

#[test]
fn a_fifo_in_place_of_a_pool_file_is_refused_not_waited_on() {
    let (tp, _) = pool_with_data();
    for name in ["metadata", "data"] {
        let path = tp.dir.join(name);
        let saved = tp.file("saved");
        std::fs::rename(&path, &saved).unwrap();
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path, which outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for args in [
            vec!["list", tp.p()],
            vec!["read", tp.p(), "v", "--length", "4K"],
            vec!["check", tp.p()],
            vec!["pool", "info", tp.p()],
        ] {
            // Both streams: `check` prints its findings to stdout.
            let o = thinpool_within(&args, LIMIT);
            let err = o.text() + &o.stderr;
            assert_eq!(o.code, 1, "{args:?}: {err}");
            assert!(
                err.contains("not a regular file or block device"),
                "{args:?}: {err}"
            );
        }
        std::fs::remove_file(&path).unwrap();
        std::fs::rename(&saved, &path).unwrap();
    }
    tp.check_clean();
}

/// The newest record (highest valid seq in the journal): its seq and root block numbers.
fn newest_record(meta: &[u8]) -> (u64, Vec<u64>) {
    let u32_at = |o: usize| u32::from_le_bytes(meta[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(meta[o..o + 8].try_into().unwrap());
    let mut best = (0, Vec::new());
    for b in 1..=128usize {
        let o = b * 4096;
        if u32_at(o + 4) == 0x7470_7372 && u64_at(o + 64) > best.0 {
            let roots = (0..6).map(|i| u64_at(o + 128 + 24 * i)).collect();
            best = (u64_at(o + 64), roots);
        }
    }
    best
}

/// Issue 10 item 5: damage to the trees of the newest (valid) record is damage to an
/// acknowledged commit. It once rolled back an exit-0 `discard` without a word. Now `check`
/// exits 1 naming it, read-only commands warn, read-write opens refuse until `--rewind`.
/// (The newest command here is a snapshot: a `discard` now ends with a commit that changes
/// nothing, to punch what it freed, and shares its trees with the one before.)
#[test]
fn a_damaged_newest_commit_is_not_rolled_back_silently() {
    let tp = TestPool::new("64M", "64K");
    tp.run(&["create", "{}", "v", "--size", "1M"]).ok();
    let data = pattern(9, 64 << 10);
    tp.run(&["write", "{}", "v", &tp.put("in.bin", &data)]).ok();
    tp.run(&["snapshot", "{}", "v", "s"]).ok();

    let mpath = tp.dir.join("metadata");
    let mut meta = std::fs::read(&mpath).unwrap();
    let (seq, roots) = newest_record(&meta);
    // A root block the newest commit wrote (its generation is that seq).
    let root = *roots
        .iter()
        .find(|&&b| {
            let o = b as usize * 4096 + 16;
            u64::from_le_bytes(meta[o..o + 8].try_into().unwrap()) == seq
        })
        .expect("the newest commit wrote a root");
    meta[root as usize * 4096 + 300] ^= 0x20;
    std::fs::write(&mpath, &meta).unwrap();

    let out = tp.run(&["check", "{}"]).fails(1, "check found");
    let text = out.text();
    assert!(
        text.contains(&format!("seq {seq}")) && text.contains("--rewind"),
        "{text}"
    );

    // Read-only: the older commit, with a warning.
    let out = tp.run(&["read", "{}", "v", "--length", "64K"]).ok();
    assert_eq!(out.stdout, data);
    assert!(
        out.stderr.contains("warning") && out.stderr.contains("damaged"),
        "{}",
        out.stderr
    );

    // Read-write: refused, nothing written.
    tp.run(&["create", "{}", "w", "--size", "1M"])
        .fails(1, "--rewind");
    tp.run(&["write", "{}", "v", &tp.put("x.bin", b"x")])
        .fails(1, "--rewind");
    let sock = tp.file("s.sock");
    let o = thinpool_within(
        &["serve", tp.p(), "--socket", sock.to_str().unwrap()],
        LIMIT,
    );
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert_eq!(std::fs::read(&mpath).unwrap(), meta, "a refused open wrote");

    // With consent: the rewind is recorded by a commit, and the pool is whole again.
    let out = tp
        .run(&["create", "{}", "w", "--size", "1M", "--rewind"])
        .ok();
    assert!(out.stderr.contains("rewound"), "{}", out.stderr);
    let out = tp.run(&["list", "{}"]).ok();
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    tp.run(&["check", "{}"]).ok();
    let list = tp.run(&["list", "{}"]).ok().text();
    let names: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        names.contains(&"v") && names.contains(&"w") && !names.contains(&"s"),
        "the rewind went back before the snapshot: {list}"
    );
    assert_eq!(tp.read("v", 0, 64 << 10), data);
    tp.check_clean();
}
