//! Memory stays bounded whatever the pool's size (docs/design.md §3: a bounded metadata cache).
//! Writes 1,000,000 scattered 4 KiB blocks (distinct blocks in scattered order over a 16 GiB volume, a commit every
//! 10,000 writes) through the library, then prints the time taken and this process's peak
//! RSS (VmHWM). Metadata is a real file; data goes to a null device (it is not the pool's
//! memory, and 4 GiB of data would only measure the disk). Run it under `/usr/bin/time -v`
//! with `tools/bench_rss.sh` (target: peak RSS < 150 MiB).

#[path = "common/mod.rs"]
mod common;

use common::{new_pool, BS, VOL_BLOCKS};
use rand::Rng;
use rand::SeedableRng;
use std::time::Instant;

fn vm_hwm() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?")
        .split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let n: u64 = std::env::var("RSS_WRITES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let vol_blocks = VOL_BLOCKS;
    let (mut p, v) = new_pool(&dir.path().join("metadata"));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let start = rng.gen_range(0..vol_blocks);
    let block = vec![0x3cu8; BS as usize];
    eprintln!("rss: start, peak RSS {}", vm_hwm());
    let t = Instant::now();
    for i in 0..n {
        // Distinct blocks in scattered order: an odd multiplier is a bijection mod 2^22,
        // offset by a random start.
        let vb = (i.wrapping_mul(2_654_435_761) + start) % vol_blocks;
        p.write(v, vb * BS, &block).unwrap();
        if i % 10_000 == 9_999 {
            p.commit().unwrap();
        }
        if i % 250_000 == 249_999 {
            eprintln!(
                "rss: {} writes, {:.1?}, peak RSS {}",
                i + 1,
                t.elapsed(),
                vm_hwm()
            );
        }
    }
    p.commit().unwrap();
    let el = t.elapsed();
    let info = p.info().unwrap();
    eprintln!(
        "rss: {n} scattered 4 KiB writes in {el:.2?} ({:.0} writes/s); {} blocks mapped, {} metadata blocks; cache {:?}; peak RSS {}",
        n as f64 / el.as_secs_f64(),
        info.data_blocks_used,
        info.metadata_blocks_used,
        p.cache_stats(),
        vm_hwm()
    );
}
