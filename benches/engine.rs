//! The engine's hot paths, each beside its baseline (issue 9, item 6):
//!
//! - `btree`: lookup and insert of random keys in a mapping tree of 100,000 entries;
//! - `spacemap`: data block allocation in a 1M-block pool;
//! - `commit`: one 4 KiB write to a new block + commit on real files (data fdatasync, two
//!   metadata fdatasyncs), against a 4 KiB write + fdatasync of a raw file;
//! - `volume_io`: in-process 4 KiB random reads and writes of a thin volume against the raw
//!   file through the same `FileDev` (page cache on both sides): provisioned reads, writes in
//!   place, and first writes into never-written blocks.
//!
//! Files live under `target/bench-engine` (a disk filesystem, like the pools users make).
//! `cargo bench --bench engine`; the targets (issue 9): reads >= 0.9x raw, writes in place
//! >= 0.85x, first writes >= 0.7x.

mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thinpool::io::{BlockDev, FileDev, MemDev};
use thinpool::meta::btree::Btree;
use thinpool::meta::label::{Label, FORMAT_VERSION};
use thinpool::meta::txn::Tm;
use thinpool::pool::trees::MAPPING;
use thinpool::pool::{CreateOptions, Pool, VolumeId};

const BS: u64 = 4096;

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-engine");
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    let _ = std::fs::remove_dir_all(&p);
    let _ = std::fs::remove_file(&p);
    p
}

/// A transaction manager on memory with `data_blocks` data blocks.
fn tm(data_blocks: u64) -> Tm {
    let meta: Arc<dyn BlockDev> = Arc::new(MemDev::new(256 << 20).unwrap());
    let label = Label {
        uuid: [7; 16],
        version: FORMAT_VERSION,
        data_block_size: BS,
        ring_slots: 64,
        meta_blocks: (256 << 20) / 4096,
        created: 0,
    };
    Tm::create(meta, label, data_blocks, 8192).unwrap()
}

fn btree(c: &mut Criterion) {
    let mut t = tm(1 << 20);
    let mut root = t.btree_empty(MAPPING).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let keys: Vec<u64> = (0..100_000).map(|_| rng.gen_range(0..1u64 << 32)).collect();
    for &k in &keys {
        t.btree_insert(&mut root, MAPPING, k, &k.to_le_bytes())
            .unwrap();
    }
    let mut g = c.benchmark_group("btree");
    g.bench_function("lookup (100k entries)", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 7919) % keys.len();
            t.btree_lookup(root, MAPPING, keys[i]).unwrap().unwrap()
        })
    });
    g.bench_function("insert (100k entries)", |b| {
        b.iter(|| {
            let k = rng.gen_range(0..1u64 << 32);
            t.btree_insert(&mut root, MAPPING, k, &k.to_le_bytes())
                .unwrap()
        })
    });
    g.finish();
}

fn spacemap(c: &mut Criterion) {
    let mut g = c.benchmark_group("spacemap");
    g.bench_function("alloc_data (1M blocks)", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(500_000);
                let mut t = tm(1 << 20);
                let t0 = Instant::now();
                for _ in 0..n {
                    t.alloc_data().unwrap().unwrap();
                }
                total += t0.elapsed();
                left -= n;
            }
            total
        })
    });
    g.finish();
}

/// A pool on real files with 8 GiB of (sparse) data space and one volume of `size`.
fn file_pool(name: &str, size: u64) -> (Pool, VolumeId) {
    let mut o = CreateOptions::new(8 << 30);
    o.block_size = BS;
    let mut p = Pool::create(&scratch(name), &o).unwrap();
    let v = p.create_volume("v", size, false).unwrap();
    (p, v)
}

fn commit(c: &mut Criterion) {
    let (mut p, v) = file_pool("commit-pool", 1 << 30);
    // Sparse and of its full size, like the pool's data file.
    let raw = FileDev::create(&scratch("commit-raw")).unwrap();
    raw.ensure_len(1 << 30).unwrap();
    let buf = vec![0x5au8; BS as usize];
    let mut g = c.benchmark_group("commit");
    g.sample_size(30);
    let mut next = 0u64;
    g.bench_function("thinpool write new block + commit", |b| {
        b.iter(|| {
            p.write(v, next * BS, &buf).unwrap();
            next = (next + 1) % ((1 << 30) / BS);
            p.commit().unwrap();
        })
    });
    let mut off = 0u64;
    g.bench_function("raw file write + fdatasync", |b| {
        b.iter(|| {
            raw.write_at(&buf, off).unwrap();
            off = (off + BS) % (1 << 30);
            raw.flush().unwrap();
        })
    });
    g.finish();
}

fn volume_io(c: &mut Criterion) {
    const SIZE: u64 = 256 << 20;
    let blocks = SIZE / BS;
    let (mut p, v) = file_pool("io-pool", SIZE);
    let raw = FileDev::create(&scratch("io-raw")).unwrap();
    raw.ensure_len(SIZE).unwrap();
    let chunk = vec![0xa5u8; 1 << 20];
    for off in (0..SIZE).step_by(chunk.len()) {
        p.write(v, off, &chunk).unwrap();
        raw.write_at(&chunk, off).unwrap();
    }
    p.commit().unwrap();
    raw.flush().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut rng2 = ChaCha8Rng::seed_from_u64(3);
    let mut buf = vec![0u8; BS as usize];
    let mut buf2 = vec![0u8; BS as usize];
    let mut g = c.benchmark_group("volume_io");
    paired(
        &mut g,
        "4k randread provisioned",
        || p.read(v, rng.gen_range(0..blocks) * BS, &mut buf).unwrap(),
        || {
            raw.read_at(&mut buf2, rng2.gen_range(0..blocks) * BS)
                .unwrap()
        },
    );
    let data = vec![0x3cu8; BS as usize];
    paired(
        &mut g,
        "4k randwrite in place",
        || p.write(v, rng.gen_range(0..blocks) * BS, &data).unwrap(),
        || raw.write_at(&data, rng2.gen_range(0..blocks) * BS).unwrap(),
    );
    p.commit().unwrap();
    // First writes: every operation writes a block never written before (a fresh volume
    // of 4 GiB in random order; the raw file is sparse over the same range).
    const FRESH: u64 = 4 << 30;
    let fresh = p.create_volume("fresh", FRESH, false).unwrap();
    let raw_fresh = FileDev::create(&scratch("io-raw-fresh")).unwrap();
    raw_fresh.ensure_len(FRESH).unwrap();
    let mut order: Vec<u64> = (0..FRESH / BS).collect();
    rand::seq::SliceRandom::shuffle(&mut order[..], &mut rng);
    let (mut i, mut j) = (0usize, 0usize);
    paired(
        &mut g,
        "4k first write",
        || {
            i = (i + 1) % order.len();
            p.write(fresh, order[i] * BS, &data).unwrap()
        },
        || {
            j = (j + 1) % order.len();
            raw_fresh.write_at(&data, order[j] * BS).unwrap()
        },
    );
    g.finish();
    let _ = std::fs::remove_dir_all(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-engine"),
    );
}

/// Operations timed in one stretch before the other side runs as many.
const ROUND: u64 = 64;

/// Time `timed`, interleaved round by round with as many runs of `other` (untimed), so
/// both sides of a pair see the same page cache, writeback and machine noise: comparing
/// two benchmarks run one after the other measured the drift between them as much as
/// the engine (issue 9: "side by side in one run").
fn alternate(iters: u64, timed: &mut dyn FnMut(), other: &mut dyn FnMut()) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(ROUND);
        let t0 = Instant::now();
        for _ in 0..n {
            timed();
        }
        total += t0.elapsed();
        for _ in 0..n {
            other();
        }
        left -= n;
    }
    total
}

/// `LABEL: thinpool` and `LABEL: raw file`, each timed interleaved with the other.
fn paired(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    label: &str,
    mut thin: impl FnMut(),
    mut raw: impl FnMut(),
) {
    g.bench_function(format!("{label}: thinpool"), |b| {
        b.iter_custom(|iters| alternate(iters, &mut thin, &mut raw))
    });
    g.bench_function(format!("{label}: raw file"), |b| {
        b.iter_custom(|iters| alternate(iters, &mut raw, &mut thin))
    });
}

criterion_group!(benches, btree, spacemap, commit, volume_io);
criterion_main!(benches);
