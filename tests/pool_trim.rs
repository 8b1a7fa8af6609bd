//! `thinpool pool trim` (issue 12): every data block no protected commit uses is punched out
//! of the data file; blocks the previous commit still maps are left alone, and mapped data
//! is never touched.

mod common;

use common::{pattern, thinpool, TestPool};
use std::os::unix::fs::{FileExt, MetadataExt};
use thinpool::pool::{OpenOptions, Pool};

fn allocated(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn trim_returns_space_nothing_maps_and_keeps_every_mapped_byte() {
    let tp = TestPool::new("256M", "64K");
    let p = tp.p();
    thinpool(&["create", p, "v", "-s", "100M"]).ok();
    let data = pattern(7, 20 << 20);
    let f = tp.put("in", &data);
    thinpool(&["write", p, "v", &f]).ok();
    let dfile = tp.dir.join("data");
    let mapped = allocated(&dfile);
    // Space nothing maps, allocated in the data file from outside (as a crash between a
    // commit and its punches, or an adopted file, leaves it).
    let f2 = std::fs::OpenOptions::new()
        .write(true)
        .open(&dfile)
        .unwrap();
    f2.write_all_at(&pattern(8, 30 << 20), 100 << 20).unwrap();
    f2.sync_all().unwrap();
    assert!(allocated(&dfile) >= mapped + (30 << 20));
    let j = thinpool(&["pool", "trim", p, "--json"]).ok().json();
    // 256M in 64K blocks, 320 of them mapped: the rest is one run.
    assert_eq!(j["unused_blocks"], 4096 - 320);
    assert_eq!(j["runs"], 1);
    assert_eq!(j["allocated_after"].as_u64().unwrap(), allocated(&dfile));
    // The 30 MiB are given back. st_blocks also counts the filesystem's own extent-tree
    // blocks, which the writes and punches may have added (ext4: one 4 KiB index block; CI
    // saw mapped + 4096 once), hence a slack far below what trim must return.
    const FS_SLACK: u64 = 64 << 10;
    assert!(
        allocated(&dfile) <= mapped + FS_SLACK,
        "{} > {mapped} + {FS_SLACK}",
        allocated(&dfile)
    );
    assert_eq!(tp.read("v", 0, 20 << 20), data);
    tp.check_clean();
    // Nothing more to give back.
    let again = thinpool(&["pool", "trim", p, "--json"]).ok().json();
    assert_eq!(again["allocated_before"], again["allocated_after"]);
}

#[test]
fn trim_leaves_the_blocks_the_previous_commit_still_maps() {
    let tp = TestPool::new("16M", "64K");
    let p = tp.p();
    thinpool(&["create", p, "gone", "-s", "1M"]).ok();
    let f = tp.put("in", &pattern(3, 1 << 20));
    thinpool(&["write", p, "gone", &f]).ok();
    let dfile = tp.dir.join("data");
    {
        // Remove it and exit without the extra commit that punches: the removal's commit
        // is S, and S-1 still maps the 16 blocks.
        let mut pool = Pool::open(&tp.dir, &OpenOptions::default()).unwrap();
        pool.remove_volume("gone").unwrap();
    }
    let raw = |off: u64| {
        let mut b = vec![0u8; 4096];
        std::fs::File::open(&dfile)
            .unwrap()
            .read_exact_at(&mut b, off)
            .unwrap();
        b
    };
    let before = raw(0);
    assert_eq!(before, pattern(3, 4096));
    let mut pool = Pool::open(&tp.dir, &OpenOptions::default()).unwrap();
    let t = pool.trim().unwrap();
    assert_eq!(t.blocks, 256 - 16, "the 16 blocks S-1 maps are not unused");
    assert_eq!(raw(0), before, "trim punched a block an older record maps");
    // One commit later S-1 is the removal: nothing maps them, and they go (the reopened
    // pool's first commit punches what its predecessor freed, and trim finds them too).
    pool.create_volume("new", 1 << 20, false).unwrap();
    let t = pool.trim().unwrap();
    assert_eq!(t.blocks, 256);
    assert!(raw(0).iter().all(|&x| x == 0));
    drop(pool);
    tp.check_clean();
}

#[test]
fn trim_needs_a_writable_pool() {
    let tp = TestPool::new("16M", "64K");
    let mut pool = Pool::open(
        &tp.dir,
        &OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    assert!(pool.trim().is_err());
    drop(pool);
    thinpool(&["pool", "trim", tp.file("none").to_str().unwrap()]).fails(1, "not a thinpool pool");
}
