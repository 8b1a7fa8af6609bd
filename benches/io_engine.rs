//! The I/O engines side by side: 4 KiB random reads and writes on a 256 MiB file, at queue
//! depth 1 (one `read_at`/`write_at` per iteration) and batched at queue depth 32 (one
//! `submit_batch` of 32 ops), for `FileDev` (pread/pwrite) and `UringDev` (io_uring), each
//! buffered and with O_DIRECT. Throughput is in ops per second (criterion's elem/s).
//!
//! The file is written in full first, so reads find data (buffered reads come from the page
//! cache; O_DIRECT reads from the disk). It lives in BENCH_DIR, default the target directory's
//! scratch space (a disk filesystem: tmpfs may refuse O_DIRECT).
//!
//! `cargo bench --bench io_engine` (`-- --quick` for a short run).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use thinpool::io::{AlignedBuf, BlockDev, FileDev, IoOp, UringDev, ALIGN};

const FILE_SIZE: u64 = 256 << 20;
const BLOCKS: u64 = FILE_SIZE / ALIGN as u64;
const QD: usize = 32;

fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("bench file");
    let mut chunk = vec![0u8; 1 << 20];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for _ in 0..FILE_SIZE / chunk.len() as u64 {
        rng.fill(&mut chunk[..]);
        f.write_all(&chunk).expect("fill");
    }
    f.sync_all().expect("sync");
}

/// The engines this machine can run, by name.
fn engines(path: &Path) -> Vec<(String, Arc<dyn BlockDev>)> {
    let mut out: Vec<(String, Arc<dyn BlockDev>)> = Vec::new();
    for direct in [false, true] {
        let mode = if direct { "direct" } else { "buffered" };
        let f = FileDev::open_with(path, true, direct).expect("FileDev");
        out.push((format!("FileDev-{mode}"), Arc::new(f)));
        match thinpool::io::uring::available() {
            Ok(()) => {
                let u = UringDev::open(path, true, direct).expect("UringDev");
                out.push((format!("UringDev-{mode}"), Arc::new(u)));
            }
            Err(why) => eprintln!("io_uring unavailable, UringDev not measured: {why}"),
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let tmp = match std::env::var_os("BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")),
    }
    .expect("scratch directory");
    let path = tmp.path().join("data");
    fill(&path);
    let devs = engines(&path);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let mut bufs: Vec<AlignedBuf> = (0..QD).map(|_| AlignedBuf::new(ALIGN).unwrap()).collect();
    for b in &mut bufs {
        rng.fill(&mut b[..]);
    }
    let mut offset = move || rng.gen_range(0..BLOCKS) * ALIGN as u64;

    for write in [false, true] {
        let name = if write { "4k_randwrite" } else { "4k_randread" };
        let mut g = c.benchmark_group(name);
        for (dev_name, dev) in &devs {
            g.throughput(Throughput::Elements(1));
            g.bench_function(BenchmarkId::new(dev_name.as_str(), "qd1"), |b| {
                b.iter(|| {
                    let off = offset();
                    if write {
                        dev.write_at(&bufs[0], off).unwrap();
                    } else {
                        dev.read_at(&mut bufs[0], off).unwrap();
                    }
                })
            });
            g.throughput(Throughput::Elements(QD as u64));
            g.bench_function(BenchmarkId::new(dev_name.as_str(), "qd32"), |b| {
                b.iter(|| {
                    let mut ops: Vec<IoOp> = bufs
                        .iter_mut()
                        .map(|buf| {
                            let off = offset();
                            if write {
                                IoOp::write(buf, off)
                            } else {
                                IoOp::read(buf, off)
                            }
                        })
                        .collect();
                    dev.submit_batch(&mut ops).unwrap();
                })
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
