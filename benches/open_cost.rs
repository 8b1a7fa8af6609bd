//! Open cost must not grow with the pool (docs/design.md §5: open is O(slots)). Builds two
//! file-backed pools with 4 KiB blocks, one with 10 mapped blocks and one with 1,000,000
//! (scattered over a 16 GiB volume, committed every 50,000 writes), then times
//! `Pool::open` of each several times and prints min/median and the ratio.
//!
//! The metadata is a real file (`metadata` in a temp dir, opened with `FileDev`, as
//! `Pool::open` does); the data device is a null device, since open never reads data and
//! building 4 GiB of real data would only measure the disk.
//!
//! `cargo bench --bench open_cost`

#[path = "common/mod.rs"]
mod common;

use common::{build_scattered, NullDev};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thinpool::io::{BlockDev, FileDev};
use thinpool::pool::{OpenOptions, Pool};

fn time_opens(path: &Path, n: usize) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let meta: Arc<dyn BlockDev> = Arc::new(FileDev::open(path, true).unwrap());
        let data: Arc<dyn BlockDev> = Arc::new(NullDev::default());
        let mut p = Pool::open_on(meta, data, &OpenOptions::default()).unwrap();
        let id = p.volume_id("vol").unwrap();
        times.push(t.elapsed());
        std::hint::black_box((id, p.info().unwrap().data_blocks_used));
    }
    times.sort();
    (times[0], times[n / 2])
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small-metadata");
    let large = dir.path().join("large-metadata");
    let b1 = build_scattered(&small, 10);
    let b2 = build_scattered(&large, 1_000_000);
    eprintln!("built: 10 blocks in {b1:.2?}, 1,000,000 scattered blocks in {b2:.2?}");
    let n = 25;
    // Warm both (page cache, allocator) so neither pays the first-run costs.
    time_opens(&small, 3);
    time_opens(&large, 3);
    let (smin, smed) = time_opens(&small, n);
    let (lmin, lmed) = time_opens(&large, n);
    eprintln!("open, 10 mapped blocks:        min {smin:.2?} median {smed:.2?} ({n} opens)");
    eprintln!("open, 1,000,000 mapped blocks: min {lmin:.2?} median {lmed:.2?} ({n} opens)");
    eprintln!(
        "ratio (1M / 10): min {:.2}, median {:.2}",
        lmin.as_secs_f64() / smin.as_secs_f64(),
        lmed.as_secs_f64() / smed.as_secs_f64()
    );
}
