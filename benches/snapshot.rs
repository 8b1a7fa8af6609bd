//! Snapshot cost must not depend on how much the volume maps (docs/design.md §3: a snapshot takes
//! one more reference on the origin's root). Compares a volume with 1 MiB mapped against one
//! with 1 GiB mapped (64 KiB blocks: 16 vs 16384 blocks), each iteration taking a snapshot
//! and removing it (both committed operations). Metadata on a MemDev (no fsync noise), data
//! on a null device (snapshots never touch data).
//!
//! `cargo bench --bench snapshot`; prints both times and their ratio (target <= 1.5).

mod common;

use common::NullDev;
use criterion::{criterion_group, criterion_main, Criterion};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thinpool::io::{BlockDev, MemDev};
use thinpool::pool::{CreateOptions, Pool};

const BS: u64 = 64 << 10;

fn pool_with(mapped: u64) -> Pool {
    let size = 4u64 << 30;
    let meta: Arc<dyn BlockDev> = Arc::new(MemDev::new(64 << 20).unwrap());
    let data: Arc<dyn BlockDev> = Arc::new(NullDev::default());
    let mut o = CreateOptions::new(size);
    o.block_size = BS;
    o.metadata_size = Some(64 << 20);
    let mut p = Pool::create_on(meta, data, &o).unwrap();
    let v = p.create_volume("vol", size, false).unwrap();
    let chunk = vec![0x5au8; (64 * BS) as usize];
    let mut done = 0;
    while done < mapped {
        let n = (mapped - done).min(64);
        p.write(v, done * BS, &chunk[..(n * BS) as usize]).unwrap();
        done += n;
    }
    p.commit().unwrap();
    assert_eq!(p.volume_info("vol").unwrap().mapped_blocks, mapped);
    p
}

fn snap_cycle(p: &mut Pool) {
    p.snapshot("vol", "snap", true).unwrap();
    p.remove_volume("snap").unwrap();
}

fn mean_of(p: &mut Pool, iters: u32) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        snap_cycle(p);
    }
    t.elapsed() / iters
}

fn bench(c: &mut Criterion) {
    let mut small = pool_with(16);
    let mut large = pool_with(16384);
    let mut g = c.benchmark_group("snapshot+remove");
    g.bench_function("1MiB_mapped", |b| b.iter(|| snap_cycle(&mut small)));
    g.bench_function("1GiB_mapped", |b| b.iter(|| snap_cycle(&mut large)));
    g.finish();
    // Side by side in one run, interleaved so machine noise hits both.
    let (mut ts, mut tl) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..5 {
        ts += mean_of(&mut small, 200);
        tl += mean_of(&mut large, 200);
    }
    let (ts, tl) = (ts / 5, tl / 5);
    eprintln!(
        "snapshot+remove: 1 MiB mapped {ts:.2?}, 1 GiB mapped {tl:.2?}, ratio {:.2} (target <= 1.5)",
        tl.as_secs_f64() / ts.as_secs_f64()
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
