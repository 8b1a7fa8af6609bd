//! The checker must be fast (issue 3: a pool with 1,000,000 mappings checks in seconds).
//! Builds a file-backed pool with 4 KiB blocks and 1,000,000 mapped blocks scattered over a
//! 16 GiB volume, takes a snapshot of it and overwrites 10,000 of the origin's blocks (so
//! the checker meets shared subtrees), then runs the checker over the metadata file: cold
//! (page cache dropped, when the process may write `/proc/sys/vm/drop_caches`) and warm.
//! A pool with 10 mapped blocks is checked beside it for scale.
//!
//! `cargo bench --bench check_cost`

#[path = "common/mod.rs"]
mod common;

use common::{build_scattered, NullDev, BS};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thinpool::check::check;
use thinpool::io::{BlockDev, FileDev};
use thinpool::pool::{OpenOptions, Pool};

/// Snapshot `vol` and overwrite `n` of its blocks, so origin and snapshot share all but `n`.
fn snapshot_and_diverge(path: &Path, n: u64) {
    let meta: Arc<dyn BlockDev> = Arc::new(FileDev::open(path, true).unwrap());
    let data: Arc<dyn BlockDev> = Arc::new(NullDev::default());
    let mut p = Pool::open_on(meta, data, &OpenOptions::default()).unwrap();
    let v = p.volume_id("vol").unwrap();
    p.snapshot("vol", "snap", false).unwrap();
    let block = vec![0x5au8; BS as usize];
    for i in 0..n {
        p.write(v, (i * 401) * BS, &block).unwrap();
    }
    p.commit().unwrap();
}

/// Drop the page cache (needs root); false when this process may not.
fn drop_caches() -> bool {
    std::process::Command::new("sync").status().is_ok()
        && std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok()
}

fn time_check(path: &Path) -> (Duration, u64, u64) {
    let t = Instant::now();
    let meta: Arc<dyn BlockDev> = Arc::new(FileDev::open(path, false).unwrap());
    let r = check(meta, None);
    let el = t.elapsed();
    assert!(r.is_clean(), "checker found damage: {:?}", r.findings);
    (el, r.stats.mappings, r.stats.nodes)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small-metadata");
    let large = dir.path().join("large-metadata");
    build_scattered(&small, 10);
    let b = build_scattered(&large, 1_000_000);
    snapshot_and_diverge(&large, 10_000);
    eprintln!("built: 1,000,000 scattered blocks + snapshot + 10,000 overwrites in {b:.2?}");
    let cold = drop_caches();
    let (lc, mappings, nodes) = time_check(&large);
    let label = if cold {
        "cold"
    } else {
        "first (page cache not dropped: not root)"
    };
    eprintln!("check, {mappings} mappings, {nodes} nodes: {label} {lc:.2?}");
    let mut warm: Vec<Duration> = (0..5).map(|_| time_check(&large).0).collect();
    warm.sort();
    let mut small_t: Vec<Duration> = (0..5).map(|_| time_check(&small).0).collect();
    small_t.sort();
    eprintln!(
        "check warm (median of 5): {:.2?} for {mappings} mappings; {:.2?} for a 10-block pool",
        warm[2], small_t[2]
    );
}
