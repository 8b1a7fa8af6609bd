//! Every error path: a clear `thinpool: ...` message on stderr, exit 1 (2 for usage
//! errors), no panic, and the pool exactly as it was.

mod common;
use common::*;
use thinpool::pool::{OpenOptions, Pool};

/// A pool with one written volume and one snapshot.
fn populated() -> TestPool {
    let tp = TestPool::new("16M", "4K");
    tp.run(&["create", "{}", "vm", "--size", "1M"]).ok();
    tp.run(&["write", "{}", "vm", &tp.put("d", &pattern(1, 20_000))])
        .ok();
    tp.run(&["snapshot", "{}", "vm", "snap"]).ok();
    tp
}

#[test]
fn unknown_volume_everywhere() {
    let tp = populated();
    let f = tp.put("x", b"x");
    let before = tp.state();
    let cases: Vec<Vec<&str>> = vec![
        vec!["info", "{}", "nope"],
        vec!["remove", "{}", "nope"],
        vec!["resize", "{}", "nope", "--size", "1M"],
        vec!["rename", "{}", "nope", "other"],
        vec!["rollback", "{}", "nope", "snap"],
        vec!["rollback", "{}", "vm", "nope"],
        vec!["snapshot", "{}", "nope", "s2"],
        vec!["write", "{}", "nope", &f],
        vec!["read", "{}", "nope"],
        vec!["discard", "{}", "nope"],
    ];
    for args in cases {
        let out = tp.run(&args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
        out.fails(1, "no volume named 'nope'");
    }
    assert_eq!(tp.state(), before);
}

#[test]
fn duplicate_names() {
    let tp = populated();
    let before = tp.state();
    tp.run(&["create", "{}", "vm", "--size", "1M"])
        .fails(1, "a volume named 'vm' already exists");
    tp.run(&["snapshot", "{}", "vm", "snap"])
        .fails(1, "a volume named 'snap' already exists");
    tp.run(&["rename", "{}", "vm", "snap"])
        .fails(1, "a volume named 'snap' already exists");
    assert_eq!(tp.state(), before);
}

#[test]
fn bad_size_strings_are_usage_errors() {
    let tp = populated();
    let before = tp.state();
    let cases = [
        ("10X", "unknown unit"),
        ("-1", "negative"),
        ("1.5G", "fractional"),
        ("", "empty size"),
        ("99999999999999999999", "too large"),
        ("16E", "too large"),
        ("G", "not a size"),
        ("10KB", "ambiguous"),
    ];
    for (size, why) in cases {
        tp.run(&["create", "{}", "new", "--size", size])
            .fails(2, why);
        tp.run(&["resize", "{}", "vm", "--size", size])
            .fails(2, why);
        tp.run(&["pool", "grow", "{}", "--size", size])
            .fails(2, why);
        tp.run(&["read", "{}", "vm", "--offset", size])
            .fails(2, why);
        tp.run(&["discard", "{}", "vm", "--length", size])
            .fails(2, why);
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("p");
    thinpool(&[
        "pool",
        "create",
        d.to_str().unwrap(),
        "--size",
        "1G",
        "--block-size",
        "4X",
    ])
    .fails(2, "unknown unit");
    assert!(!d.exists());
    assert_eq!(tp.state(), before);
}

#[test]
fn sizes_the_library_refuses() {
    let tp = populated();
    let before = tp.state();
    tp.run(&["create", "{}", "zero", "--size", "0"])
        .fails(1, "greater than zero");
    tp.run(&["create", "{}", "huge", "--size", "15E"])
        .fails(1, "too large");
    assert_eq!(tp.state(), before);
    // Thin: a volume far bigger than the pool is fine.
    tp.run(&["create", "{}", "big", "--size", "1T"]).ok();
}

#[test]
fn write_to_a_read_only_volume() {
    let tp = populated();
    tp.run(&["create", "{}", "ro", "--size", "1M", "--read-only"])
        .ok();
    let before = tp.state();
    tp.run(&["write", "{}", "ro", &tp.put("x", b"data")])
        .fails(1, "volume 'ro' is read-only");
    tp.run_in(&["write", "{}", "ro"], Some(b"data"))
        .fails(1, "volume 'ro' is read-only");
    tp.run(&["discard", "{}", "ro"])
        .fails(1, "volume 'ro' is read-only");
    assert_eq!(tp.state(), before);
}

#[test]
fn full_pool() {
    // 64 KiB of data in 4 KiB blocks: 16 blocks.
    let tp = TestPool::new("64K", "4K");
    tp.run(&["create", "{}", "a", "--size", "1M"]).ok();
    tp.run(&["write", "{}", "a", &tp.put("fill", &pattern(2, 40 << 10))])
        .ok();
    assert_eq!(tp.info()["data_blocks_used"], 10);
    tp.run(&["create", "{}", "b", "--size", "1M"]).ok();
    let big = tp.put("big", &pattern(3, 128 << 10));
    tp.run(&["write", "{}", "b", &big])
        .fails(1, "out of data space");
    tp.run_in(&["write", "{}", "b"], Some(&pattern(3, 128 << 10)))
        .fails(1, "out of data space");

    // Still consistent: readable, checkable, the earlier data intact.
    tp.check_clean();
    assert_eq!(tp.read("a", 0, 40 << 10), pattern(2, 40 << 10));
    let info = tp.info();
    assert!(info["data_blocks_used"].as_u64().unwrap() <= 16, "{info}");

    // Removing a volume makes room; the pool is writable again.
    tp.run(&["remove", "{}", "a"]).ok();
    tp.run(&[
        "write",
        "{}",
        "b",
        "--offset",
        "100K",
        &tp.put("small", &pattern(4, 32 << 10)),
    ])
    .ok();
    assert_eq!(tp.read("b", 100 << 10, 32 << 10), pattern(4, 32 << 10));
    tp.check_clean();
}

#[test]
fn second_opener_is_told_the_pool_is_in_use() {
    let tp = populated();
    let before = tp.state();
    let holder = Pool::open(&tp.dir, &OpenOptions::default()).unwrap();
    tp.run(&["create", "{}", "new", "--size", "1M"])
        .fails(1, "in use");
    tp.run(&["write", "{}", "vm", &tp.put("x", b"x")])
        .fails(1, "in use");
    tp.run(&["list", "{}"]).fails(1, "in use");
    tp.run(&["pool", "info", "{}"]).fails(1, "in use");
    tp.run(&["read", "{}", "vm"]).fails(1, "in use");
    drop(holder);
    assert_eq!(tp.state(), before);
}

#[test]
fn invalid_names() {
    let tp = populated();
    let before = tp.state();
    let long = "x".repeat(128);
    for name in ["a/b", "/", long.as_str(), "", ".", ".."] {
        tp.run(&["create", "{}", name, "--size", "1M"])
            .fails(1, "invalid volume name");
        tp.run(&["snapshot", "{}", "vm", name])
            .fails(1, "invalid volume name");
        tp.run(&["rename", "{}", "vm", name])
            .fails(1, "invalid volume name");
    }
    tp.run(&["create", "{}", &long, "--size", "1M"])
        .fails(1, "at most 127 bytes");
    assert_eq!(tp.state(), before);
    // 127 bytes is the limit, not beyond it.
    tp.run(&["create", "{}", &"y".repeat(127), "--size", "1M"])
        .ok();
    // Names that look like options go after `--`.
    tp.run(&["create", "{}", "--size", "1M", "--", "-dash"])
        .ok();
    assert_eq!(tp.vol("-dash")["size"], 1 << 20);
}

#[test]
fn read_past_end() {
    let tp = populated();
    tp.run(&["read", "{}", "vm", "--offset", "1M", "--length", "1"])
        .fails(1, "outside volume 'vm'");
    tp.run(&["read", "{}", "vm", "--offset", "2M"])
        .fails(1, "outside volume 'vm'");
    tp.run(&["read", "{}", "vm", "--length", "15E"])
        .fails(1, "outside volume 'vm'");
}

#[test]
fn not_a_pool() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    for args in [
        vec!["list", d],
        vec!["create", d, "v", "--size", "1M"],
        vec!["pool", "grow", d, "--size", "1G"],
    ] {
        thinpool(&args).fails(1, "is not a thinpool pool");
    }
    // A file where the pool should be.
    let file = tmp.path().join("file");
    std::fs::write(&file, b"").unwrap();
    thinpool(&["list", file.to_str().unwrap()]).fails(1, "is not a thinpool pool");
}

#[test]
fn usage_errors_exit_2() {
    let tp = populated();
    let before = tp.state();
    thinpool(&[]).fails(2, "usage");
    thinpool(&["frobnicate"]).fails(2, "unrecognized subcommand");
    tp.run(&["create", "{}", "v"]).fails(2, "--size");
    tp.run(&["snapshot", "{}", "vm"]).fails(2, "required");
    tp.run(&["list", "{}", "--bogus"]).fails(2, "--bogus");
    tp.run(&["rename", "{}", "a", "b", "c"])
        .fails(2, "unexpected argument");
    tp.run(&["serve", "{}", "--commit-interval", "soon"])
        .fails(2, "not a duration");
    tp.run(&[
        "serve",
        "{}",
        "--socket",
        "/tmp/x",
        "--listen",
        "127.0.0.1:1",
    ])
    .fails(2, "cannot be used with");
    assert_eq!(tp.state(), before);
}

/// A closed stderr (`thinpool ... 2>&1 | head -1` after head exits) never turns a message
/// into a panic: the error exits 1 as usual, and a server still starts and stops cleanly.
#[test]
fn a_closed_stderr_is_not_a_crash() {
    use std::process::{Command, Stdio};
    let closed = || {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        Stdio::from(writer)
    };
    let tp = TestPool::new("64M", "64K");
    let st = Command::new(BIN)
        .args(["info", tp.p(), "nope"])
        .stderr(closed())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(1), "{st:?}");
    let mut server = Command::new(BIN)
        .args(["serve", tp.p()])
        .stdout(Stdio::null())
        .stderr(closed())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(tp.dir.join("control.sock")).is_err() {
        if let Some(st) = server.try_wait().unwrap() {
            panic!("serve exited at start: {st:?}");
        }
        assert!(t0.elapsed().as_secs() < 20, "serve did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    let st = server.wait().unwrap();
    assert!(st.success(), "serve with a closed stderr: {st:?}");
}
