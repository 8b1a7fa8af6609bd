//! Diff cost vs export cost: a volume with 1,000,000 mapped 4 KiB blocks (about 3.8 GiB,
//! written in large sequential writes), two snapshots that differ in 10 blocks. `diff` walks
//! only the tree paths to the change; a full export reads every block. Prints both times and
//! their ratio (target: diff < 2% of the export).
//!
//! `cargo bench --bench diff_cost` (BLOCKS=n to change the size; BENCH_DIR=dir for the
//! scratch pool, default the system temp directory).

use std::time::{Duration, Instant};
use thinpool::export::{diff_volumes, export_raw, NoProgress, RawSink};
use thinpool::pool::{CreateOptions, OpenOptions, Pool};

fn main() {
    let blocks: u64 = std::env::var("BLOCKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let bs = 4096u64;
    let tmp = match std::env::var_os("BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("scratch directory");
    let dir = tmp.path().join("pool");
    let mut opts = CreateOptions::new(blocks * bs + (256 << 20));
    opts.block_size = bs;
    let mut pool = Pool::create(&dir, &opts).expect("create pool");
    let vol = pool
        .create_volume("vol", blocks * bs, false)
        .expect("create volume");

    let t = Instant::now();
    let chunk = 8usize << 20;
    let mut buf = vec![0u8; chunk];
    let mut off = 0u64;
    while off < blocks * bs {
        let n = chunk.min((blocks * bs - off) as usize);
        // Every block distinct and non-zero.
        for (i, b) in buf[..n].chunks_mut(bs as usize).enumerate() {
            b.fill(((off / bs + i as u64) % 251 + 1) as u8);
            b[..8].copy_from_slice(&(off / bs + i as u64).to_le_bytes());
        }
        pool.write(vol, off, &buf[..n]).expect("write");
        off += n as u64;
    }
    pool.commit().expect("commit");
    println!(
        "built: {blocks} mapped blocks of {bs} B ({:.1} GiB) in {:.1?}",
        (blocks * bs) as f64 / (1u64 << 30) as f64,
        t.elapsed()
    );
    pool.snapshot("vol", "s1", true).expect("snapshot");
    for i in 0..10u64 {
        let vb = i * (blocks / 10) + 7;
        pool.write(vol, vb * bs, &[0xeeu8; 4096]).expect("write");
    }
    pool.snapshot("vol", "s2", true).expect("snapshot");
    drop(pool);

    // A fresh open: the metadata cache starts cold, as for a `thinpool diff` command.
    let ro = OpenOptions {
        read_only: true,
        ..OpenOptions::default()
    };
    let mut pool = Pool::open(&dir, &ro).expect("open");
    let (s1, _) = pool.find("s1").unwrap();
    let (s2, _) = pool.find("s2").unwrap();
    let t = Instant::now();
    let (ranges, stats) = diff_volumes(&mut pool, s1, s2).expect("diff");
    let diff_cold = t.elapsed();
    assert_eq!(stats.changed_blocks, 10, "{ranges:?}");
    let mut warm = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        diff_volumes(&mut pool, s1, s2).expect("diff");
        warm = warm.min(t.elapsed());
    }
    println!(
        "diff s1 s2: {} ranges, {} changed blocks, {} tree nodes read, {} shared subtrees skipped; \
         cold {diff_cold:.2?}, warm {warm:.2?}",
        ranges.len(),
        stats.changed_blocks,
        stats.nodes_read,
        stats.subtrees_shared
    );

    let img = tmp.path().join("s2.img");
    let f = std::fs::File::create(&img).expect("image");
    let t = Instant::now();
    let st = export_raw(&mut pool, s2, RawSink::File(&f), &NoProgress).expect("export");
    f.sync_all().expect("sync");
    let export = t.elapsed();
    println!(
        "full export of s2: {:.1} GiB of data in {export:.2?} ({:.0} MiB/s)",
        st.data_bytes as f64 / (1u64 << 30) as f64,
        st.data_bytes as f64 / (1 << 20) as f64 / export.as_secs_f64()
    );
    println!(
        "diff / export: cold {:.4}%, warm {:.4}% (target < 2%)",
        diff_cold.as_secs_f64() / export.as_secs_f64() * 100.0,
        warm.as_secs_f64() / export.as_secs_f64() * 100.0
    );
}
