//! `thinpool write|read|discard`: files and standard streams, offsets, unaligned ranges,
//! streaming beyond one chunk, range errors.

mod common;
use common::*;
use std::os::unix::fs::MetadataExt;
use thinpool::pool::{OpenOptions, Pool};

#[test]
fn write_file_read_stdout_and_file() {
    let tp = TestPool::new("64M", "64K");
    tp.run(&["create", "{}", "vm", "--size", "1M"]).ok();
    let data = pattern(1, 300_000);
    let f = tp.put("in", &data);
    let out = tp.run(&["write", "{}", "vm", &f]).ok();
    assert!(
        out.text().contains("(300000 bytes) to 'vm' at offset 0"),
        "{}",
        out.text()
    );

    let back = tp
        .run(&["read", "{}", "vm", "--length", "300000"])
        .ok()
        .stdout;
    assert_eq!(back, data);
    let dst = tp.file("out");
    let out = tp
        .run(&[
            "read",
            "{}",
            "vm",
            "--length",
            "300000",
            dst.to_str().unwrap(),
        ])
        .ok();
    assert!(out.text().contains("into"), "{}", out.text());
    assert_eq!(std::fs::read(&dst).unwrap(), data);
}

#[test]
fn write_is_durable_when_the_command_returns() {
    let tp = TestPool::new("64M", "4K");
    tp.run(&["create", "{}", "vm", "--size", "1M"]).ok();
    tp.run_in(&["write", "{}", "vm", "--offset", "5000"], Some(b"durable"))
        .ok();
    // A fresh open sees exactly what the last commit recorded.
    let mut p = Pool::open(
        &tp.dir,
        &OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let id = p.volume_id("vm").unwrap();
    let mut buf = [0u8; 7];
    p.read(id, 5000, &mut buf).unwrap();
    assert_eq!(&buf, b"durable");
    assert_eq!(p.info().unwrap().data_blocks_used, 1);
}

#[test]
fn stdin_with_unaligned_offset_across_blocks() {
    let tp = TestPool::new("64M", "4K");
    tp.run(&["create", "{}", "vm", "--size", "1M"]).ok();
    let data = pattern(2, 70_001);
    tp.run_in(&["write", "{}", "vm", "--offset", "1000"], Some(&data))
        .ok();
    assert_eq!(tp.read("vm", 1000, 70_001), data);
    // Bytes around the write stay zero.
    assert_eq!(tp.read("vm", 0, 1000), vec![0; 1000]);
    assert_eq!(tp.read("vm", 71_001, 4000), vec![0; 4000]);
    // Blocks 0..=17 (bytes 1000..71001) are mapped, nothing else.
    assert_eq!(tp.vol("vm")["mapped_blocks"], 18);
    // Through `-` as well, with a size suffix offset.
    tp.run_in(
        &["write", "{}", "vm", "--offset", "512K", "-"],
        Some(b"dash"),
    )
    .ok();
    assert_eq!(tp.read("vm", 512 << 10, 4), b"dash");
}

#[test]
fn streams_more_than_one_chunk() {
    // 9 MiB + 123 bytes: three 4 MiB chunks, the last one short, from a file and stdin.
    let tp = TestPool::new("64M", "64K");
    tp.run(&["create", "{}", "a", "--size", "16M"]).ok();
    tp.run(&["create", "{}", "b", "--size", "16M"]).ok();
    let data = pattern(3, (9 << 20) + 123);
    let f = tp.put("big", &data);
    tp.run(&["write", "{}", "a", "--offset", "77", &f]).ok();
    tp.run_in(&["write", "{}", "b", "--offset", "77"], Some(&data))
        .ok();
    let len = data.len().to_string();
    for vol in ["a", "b"] {
        let back = tp
            .run(&["read", "{}", vol, "--offset", "77", "--length", &len])
            .ok()
            .stdout;
        assert!(back == data, "volume {vol} differs");
    }
}

#[test]
fn read_defaults_to_the_whole_volume() {
    let tp = TestPool::new("16M", "4K");
    tp.run(&["create", "{}", "vm", "--size", "100000"]).ok();
    tp.run_in(
        &["write", "{}", "vm", "--offset", "99990"],
        Some(b"0123456789"),
    )
    .ok();
    let all = tp.run(&["read", "{}", "vm"]).ok().stdout;
    assert_eq!(all.len(), 100_000);
    assert_eq!(&all[99_990..], b"0123456789");
    assert!(all[..99_990].iter().all(|&b| b == 0));
    // From an offset to the end.
    let tail = tp
        .run(&["read", "{}", "vm", "--offset", "99995"])
        .ok()
        .stdout;
    assert_eq!(tail, b"56789");
    // At the very end: nothing.
    let none = tp
        .run(&["read", "{}", "vm", "--offset", "100000"])
        .ok()
        .stdout;
    assert!(none.is_empty());
}

#[test]
fn read_into_a_file_keeps_holes() {
    let tp = TestPool::new("16M", "64K");
    tp.run(&["create", "{}", "vm", "--size", "64M"]).ok();
    tp.run_in(&["write", "{}", "vm", "--offset", "32M"], Some(b"middle"))
        .ok();
    let dst = tp.file("img");
    tp.run(&["read", "{}", "vm", dst.to_str().unwrap()]).ok();
    let md = std::fs::metadata(&dst).unwrap();
    assert_eq!(md.len(), 64 << 20);
    assert!(
        md.blocks() * 512 < 16 << 20,
        "output is not sparse: {} bytes allocated",
        md.blocks() * 512
    );
    let img = std::fs::read(&dst).unwrap();
    assert_eq!(&img[32 << 20..(32 << 20) + 6], b"middle");
    assert_eq!(img.iter().filter(|&&b| b != 0).count(), 6);
}

#[test]
fn write_past_the_end_is_refused_before_writing() {
    let tp = TestPool::new("16M", "4K");
    tp.run(&["create", "{}", "vm", "--size", "64K"]).ok();
    let f = tp.put("d", &pattern(4, 8192));
    let before = tp.state();
    tp.run(&["write", "{}", "vm", "--offset", "60K", &f])
        .fails(1, "outside volume 'vm'");
    tp.run(&["write", "{}", "vm", "--offset", "1M", &f])
        .fails(1, "outside volume 'vm'");
    tp.run_in(&["write", "{}", "vm", "--offset", "65537"], Some(b""))
        .fails(1, "outside volume 'vm'");
    assert_eq!(tp.state(), before);
    // Exactly up to the end is fine.
    tp.run(&["write", "{}", "vm", "--offset", "56K", &f]).ok();
}

#[test]
fn write_past_the_end_from_stdin() {
    let tp = TestPool::new("16M", "4K");
    tp.run(&["create", "{}", "vm", "--size", "64K"]).ok();
    let before = tp.state();
    tp.run_in(
        &["write", "{}", "vm", "--offset", "60K"],
        Some(&pattern(5, 8192)),
    )
    .fails(1, "outside volume 'vm'");
    // The only chunk was refused whole: nothing changed.
    assert_eq!(tp.state(), before);
}

#[test]
fn read_past_the_end() {
    let tp = TestPool::new("16M", "4K");
    tp.run(&["create", "{}", "vm", "--size", "64K"]).ok();
    tp.run(&["read", "{}", "vm", "--offset", "60K", "--length", "8K"])
        .fails(1, "outside volume 'vm'");
    tp.run(&["read", "{}", "vm", "--offset", "65537"])
        .fails(1, "outside volume 'vm'");
    // No output file is left behind by a refused read.
    let dst = tp.file("never");
    tp.run(&["read", "{}", "vm", "--length", "1M", dst.to_str().unwrap()])
        .fails(1, "outside volume 'vm'");
    assert!(!dst.exists());
}

#[test]
fn empty_input_writes_nothing() {
    let tp = TestPool::new("16M", "4K");
    tp.run(&["create", "{}", "vm", "--size", "64K"]).ok();
    let seq = tp.info()["seq"].clone();
    let f = tp.put("empty", b"");
    let out = tp.run(&["write", "{}", "vm", &f]).ok();
    assert!(out.text().contains("wrote 0 bytes"), "{}", out.text());
    tp.run_in(&["write", "{}", "vm"], Some(b"")).ok();
    assert_eq!(tp.info()["seq"], seq);
    assert_eq!(tp.vol("vm")["mapped_blocks"], 0);
}

#[test]
fn discard_frees_whole_blocks_and_zeroes_partial_ones() {
    let tp = TestPool::new("16M", "4K");
    tp.run(&["create", "{}", "vm", "--size", "64K"]).ok();
    let data = pattern(6, 64 << 10);
    tp.run(&["write", "{}", "vm", &tp.put("d", &data)]).ok();
    assert_eq!(tp.info()["data_blocks_used"], 16);

    // Bytes 1000..13288: block 0 partly, blocks 1 and 2 whole, block 3 partly.
    let out = tp
        .run(&[
            "discard", "{}", "vm", "--offset", "1000", "--length", "12288",
        ])
        .ok();
    assert!(out.text().contains("2 data blocks freed"), "{}", out.text());
    assert_eq!(tp.info()["data_blocks_used"], 14);
    let back = tp.read("vm", 0, 64 << 10);
    let mut expect = data.clone();
    expect[1000..13288].fill(0);
    assert!(
        back == expect,
        "discarded range not zero or neighbours damaged"
    );

    // Default range: from the offset to the end.
    tp.run(&["discard", "{}", "vm", "--offset", "32K"]).ok();
    assert_eq!(tp.info()["data_blocks_used"], 6);
    assert_eq!(tp.read("vm", 32 << 10, 32 << 10), vec![0; 32 << 10]);

    let before = tp.state();
    tp.run(&["discard", "{}", "vm", "--offset", "60K", "--length", "8K"])
        .fails(1, "outside volume 'vm'");
    assert_eq!(tp.state(), before);
    tp.run(&["discard", "{}", "vm"]).ok();
    assert_eq!(tp.info()["data_blocks_used"], 0);
    tp.check_clean();
}

#[test]
fn discard_in_a_snapshot_keeps_the_origin() {
    let tp = TestPool::new("16M", "4K");
    tp.run(&["create", "{}", "vm", "--size", "32K"]).ok();
    let data = pattern(7, 32 << 10);
    tp.run(&["write", "{}", "vm", &tp.put("d", &data)]).ok();
    tp.run(&["snapshot", "{}", "vm", "s"]).ok();
    tp.run(&["discard", "{}", "s"]).ok();
    assert_eq!(tp.read("s", 0, 32 << 10), vec![0; 32 << 10]);
    assert_eq!(tp.read("vm", 0, 32 << 10), data);
    assert_eq!(tp.info()["data_blocks_used"], 8);
}

#[test]
fn input_file_errors() {
    let tp = TestPool::new("16M", "4K");
    tp.run(&["create", "{}", "vm", "--size", "64K"]).ok();
    let missing = tp.file("missing");
    tp.run(&["write", "{}", "vm", missing.to_str().unwrap()])
        .fails(1, "cannot open");
    let dir = tp.tmp.path().to_str().unwrap().to_string();
    tp.run(&["write", "{}", "vm", &dir]).fails(
        1,
        "nothing was written to 'vm': cannot read the input: is a directory",
    );
    assert_eq!(tp.vol("vm")["mapped_blocks"], 0);
}

/// `--io-engine` picks the data file's engine for every command; both engines read what the
/// other wrote, and an unknown engine is a usage error.
#[test]
fn io_engines_read_each_others_writes() {
    let tp = TestPool::new("64M", "64K");
    tp.run(&["create", "{}", "v", "--size", "4M"]).ok();
    let data = pattern(5, (1 << 20) + 777);
    let f = tp.put("in.bin", &data);
    tp.run(&[
        "--io-engine",
        "uring",
        "write",
        "{}",
        "v",
        "--offset",
        "4097",
        &f,
    ])
    .ok();
    let out = tp
        .run(&[
            "read",
            "{}",
            "v",
            "--io-engine",
            "sync",
            "--offset",
            "4097",
            "--length",
            "1049353",
        ])
        .ok();
    assert_eq!(out.stdout, data);
    tp.run(&[
        "--io-engine",
        "sync",
        "write",
        "{}",
        "v",
        "--offset",
        "3",
        &f,
    ])
    .ok();
    let out = tp
        .run(&[
            "--io-engine",
            "uring",
            "read",
            "{}",
            "v",
            "--offset",
            "3",
            "--length",
            "1049353",
        ])
        .ok();
    assert_eq!(out.stdout, data);
    tp.run(&["--io-engine", "fast", "list", "{}"])
        .fails(2, "auto, uring or sync");
    tp.check_clean();
}

/// The space a `discard` or `remove` frees is back in the filesystem when the command
/// returns: it once stayed allocated in the data file until some later command committed
/// (a freed block may be punched only once two commits no longer map it).
#[test]
fn freed_space_reaches_the_filesystem_when_the_command_returns() {
    let tp = TestPool::new("64M", "64K");
    let data_blocks = || std::fs::metadata(tp.dir.join("data")).unwrap().blocks() * 512;
    tp.run(&["create", "{}", "a", "--size", "8M"]).ok();
    tp.run(&["create", "{}", "b", "--size", "8M"]).ok();
    let f = tp.put("in", &pattern(3, 8 << 20));
    tp.run(&["write", "{}", "a", &f]).ok();
    tp.run(&["write", "{}", "b", &f]).ok();
    let full = data_blocks();
    assert!(full >= 16 << 20, "data file holds {full} bytes");
    tp.run(&["discard", "{}", "a"]).ok();
    let after_discard = data_blocks();
    assert!(
        after_discard <= full - (8 << 20),
        "after discarding 8 MiB the data file still holds {after_discard} of {full} bytes"
    );
    tp.run(&["remove", "{}", "b"]).ok();
    let after_remove = data_blocks();
    assert!(
        after_remove <= after_discard - (8 << 20),
        "after removing an 8 MiB volume the data file still holds {after_remove} bytes"
    );
    tp.run(&["check", "{}"]).ok();
}
