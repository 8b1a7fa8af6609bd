//! One behaviour suite for every file engine: `FileDev` and `UringDev`, each buffered and with
//! O_DIRECT. Files live under the target directory (a disk filesystem; tmpfs may refuse
//! O_DIRECT). Where io_uring is unavailable, the `UringDev` runs say so and are skipped.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thinpool::io::{os_error, BlockDev, FileDev, IoOp, OpError, UringDev, ALIGN};

#[derive(Clone, Copy, Debug)]
enum Kind {
    File,
    FileDirect,
    Uring,
    UringDirect,
}

const KINDS: [Kind; 4] = [Kind::File, Kind::FileDirect, Kind::Uring, Kind::UringDirect];

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("io-engine-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// `kind` on `path` (created empty if missing); `None` when io_uring is unavailable here.
fn open(kind: Kind, path: &Path, writable: bool) -> Option<Arc<dyn BlockDev>> {
    if !path.exists() {
        std::fs::File::create(path).unwrap();
    }
    let r: io::Result<Arc<dyn BlockDev>> = match kind {
        Kind::File => FileDev::open_with(path, writable, false).map(|d| Arc::new(d) as _),
        Kind::FileDirect => FileDev::open_with(path, writable, true).map(|d| Arc::new(d) as _),
        Kind::Uring | Kind::UringDirect => {
            if let Err(why) = thinpool::io::uring::available() {
                eprintln!("skipping {kind:?}: {why}");
                return None;
            }
            UringDev::open(path, writable, matches!(kind, Kind::UringDirect))
                .map(|d| Arc::new(d) as _)
        }
    };
    Some(r.unwrap_or_else(|e| panic!("{kind:?}: open {}: {e}", path.display())))
}

/// Run `f` on a fresh writable device of every kind.
fn each(f: impl Fn(Kind, &Arc<dyn BlockDev>, &Path)) {
    for kind in KINDS {
        let dir = tempdir();
        let path: PathBuf = dir.path().join("data");
        if let Some(dev) = open(kind, &path, true) {
            f(kind, &dev, &path);
        }
    }
}

/// What the file must hold: bytes written so far, zeros elsewhere.
struct Model(Vec<u8>);

impl Model {
    fn write(&mut self, off: u64, data: &[u8]) {
        let end = off as usize + data.len();
        if self.0.len() < end {
            self.0.resize(end, 0);
        }
        self.0[off as usize..end].copy_from_slice(data);
    }
    fn expect(&self, off: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| self.0.get(off as usize + i).copied().unwrap_or(0))
            .collect()
    }
}

/// The whole device reads as `m` says.
fn assert_holds(kind: Kind, dev: &Arc<dyn BlockDev>, m: &Model) {
    let mut all = vec![0xeeu8; m.0.len()];
    dev.read_at(&mut all, 0).unwrap();
    assert!(
        all == m.0,
        "{kind:?}: the device does not hold what was written"
    );
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| r.gen()).collect()
}

#[test]
fn aligned_and_unaligned_reads_and_writes() {
    each(|kind, dev, _| {
        let mut m = Model(Vec::new());
        let cases: [(u64, usize); 7] = [
            (0, 8192),         // aligned
            (4096, 4096),      // aligned overwrite
            (5000, 100),       // inside one block
            (4000, 200),       // across a block boundary
            (12288 - 1, 2),    // last byte of a block and first of the next
            (20000, 3 * 4096), // unaligned start, several blocks
            (8192, 1),
        ];
        for (n, &(off, len)) in cases.iter().enumerate() {
            let data = pattern(n as u64, len);
            dev.write_at(&data, off).unwrap();
            m.write(off, &data);
        }
        for &(off, len) in &cases {
            for (o, l) in [(off, len), (off.saturating_sub(77), len + 200)] {
                let mut got = vec![0xeeu8; l];
                dev.read_at(&mut got, o).unwrap();
                assert!(got == m.expect(o, l), "{kind:?}: read of {l} at {o}");
            }
        }
        // Aligned offset and length, but a buffer at an odd address.
        let mut backing = vec![0u8; 4096 + 1];
        backing[1..].copy_from_slice(&pattern(99, 4096));
        dev.write_at(&backing[1..], 8192).unwrap();
        m.write(8192, &backing[1..]);
        let mut odd = vec![0u8; 4096 + 3];
        dev.read_at(&mut odd[3..], 8192).unwrap();
        assert!(odd[3..] == m.expect(8192, 4096), "{kind:?}: odd buffer");
        assert_holds(kind, dev, &m);
    });
}

#[test]
fn reads_past_the_end_are_zeros() {
    each(|kind, dev, path| {
        std::fs::write(path, pattern(1, 5000)).unwrap();
        // Reopen: the device learns the length the file has now.
        let dev2 = open(kind, path, true).unwrap();
        assert_eq!(dev2.len(), 5000, "{kind:?}");
        let want = pattern(1, 5000);
        let mut b = vec![0xffu8; 8192];
        dev2.read_at(&mut b, 4096).unwrap();
        assert_eq!(&b[..904], &want[4096..], "{kind:?}");
        assert!(b[904..].iter().all(|&x| x == 0), "{kind:?}: tail not zero");
        let mut far = vec![0xffu8; 10_000];
        dev2.read_at(&mut far, 1 << 20).unwrap();
        assert!(far.iter().all(|&x| x == 0), "{kind:?}: far past the end");
        let mut ops_bufs = [vec![0xffu8; 100], vec![0xffu8; 4096]];
        let [a, c] = &mut ops_bufs;
        dev2.submit_batch(&mut [IoOp::read(a, 4990), IoOp::read(c, 8192)])
            .unwrap();
        assert_eq!(&a[..10], &want[4990..], "{kind:?}");
        assert!(a[10..].iter().all(|&x| x == 0) && c.iter().all(|&x| x == 0));
        let _ = dev;
    });
}

#[test]
fn a_batch_of_256_random_4k_writes_then_reads_matches_a_model() {
    each(|kind, dev, _| {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut blocks: Vec<u64> = (0..4096).collect();
        blocks.shuffle(&mut rng);
        let blocks = &blocks[..256];
        let data: Vec<Vec<u8>> = (0..256).map(|i| pattern(1000 + i, ALIGN)).collect();
        let mut m = Model(Vec::new());
        let mut ops: Vec<IoOp> = blocks
            .iter()
            .zip(&data)
            .map(|(&b, d)| IoOp::write(d, b * ALIGN as u64))
            .collect();
        dev.submit_batch(&mut ops).unwrap();
        for (&b, d) in blocks.iter().zip(&data) {
            m.write(b * ALIGN as u64, d);
        }
        assert_eq!(dev.len(), m.0.len() as u64, "{kind:?}");
        // Read back every written block and some never written, in one batch.
        let mut reads: Vec<(u64, Vec<u8>)> = blocks
            .iter()
            .chain(&[4096 + 10, 1, 2, 3])
            .map(|&b| (b * ALIGN as u64, vec![0xa5u8; ALIGN]))
            .collect();
        let mut ops: Vec<IoOp> = reads
            .iter_mut()
            .map(|(off, buf)| IoOp::read(buf, *off))
            .collect();
        dev.submit_batch(&mut ops).unwrap();
        for (off, buf) in &reads {
            assert!(*buf == m.expect(*off, ALIGN), "{kind:?}: block at {off}");
        }
    });
}

#[test]
fn a_batch_of_unaligned_writes_sharing_blocks_keeps_every_byte() {
    each(|kind, dev, _| {
        // 64 writes into disjoint 1000-byte slots: neighbours share 4 KiB blocks, so with
        // O_DIRECT most are read-modify-writes of a block another write of the batch touches.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut m = Model(vec![0; 4096]);
        let base = pattern(5, 4096);
        dev.write_at(&base, 0).unwrap();
        m.write(0, &base);
        let writes: Vec<(u64, Vec<u8>)> = (0..64u64)
            .map(|k| {
                let start = k * 1000 + rng.gen_range(0..100);
                let len = rng.gen_range(1..900);
                (start, pattern(2000 + k, len))
            })
            .collect();
        let mut ops: Vec<IoOp> = writes.iter().map(|(o, d)| IoOp::write(d, *o)).collect();
        dev.submit_batch(&mut ops).unwrap();
        for (o, d) in &writes {
            m.write(*o, d);
        }
        assert_holds(kind, dev, &m);
    });
}

#[test]
fn concurrent_unaligned_writes_to_one_block_lose_nothing() {
    each(|kind, dev, _| {
        // Four threads write the 512-byte sectors of the same 32 blocks, interleaved:
        // thread t owns sectors t, t+4, ... With O_DIRECT each write is a read-modify-write
        // of a block the others write at the same time.
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let dev = dev.clone();
                std::thread::spawn(move || {
                    for round in 0..3u8 {
                        for s in (t..32 * 8).step_by(4) {
                            let fill = [(s as u8) ^ round; 512];
                            dev.write_at(&fill, s * 512).unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut all = vec![0u8; 32 * 4096];
        dev.read_at(&mut all, 0).unwrap();
        for (s, sector) in all.chunks(512).enumerate() {
            assert!(
                sector.iter().all(|&x| x == (s as u8) ^ 2),
                "{kind:?}: sector {s} lost its last write"
            );
        }
    });
}

#[test]
fn more_threads_than_rings_read_and_write_what_they_should() {
    // Sixteen threads (a connection's most workers), four rings: with every ring busy a
    // single O_DIRECT op runs as a plain pread/pwrite in its thread. Each thread writes
    // and reads back its own 4 KiB blocks, one op at a time, interleaved with the others.
    each(|kind, dev, _| {
        let threads: Vec<_> = (0..16u64)
            .map(|t| {
                let dev = dev.clone();
                std::thread::spawn(move || {
                    let mut back = vec![0u8; 4096];
                    for round in 0..4u64 {
                        for b in (t..256).step_by(16) {
                            let data = pattern(b * 8 + round, 4096);
                            dev.write_at(&data, b * 4096).unwrap();
                            dev.read_at(&mut back, b * 4096).unwrap();
                            assert!(back == data, "{kind:?}: block {b} round {round}");
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut m = Model(Vec::new());
        for b in 0..256u64 {
            m.write(b * 4096, &pattern(b * 8 + 3, 4096));
        }
        assert_holds(kind, dev, &m);
    });
}

#[test]
fn a_write_past_the_end_grows_the_file() {
    each(|kind, dev, path| {
        assert_eq!(dev.len(), 0);
        let off = (1 << 20) + 3;
        dev.write_at(b"0123456789", off).unwrap();
        assert_eq!(dev.len(), off + 10, "{kind:?}");
        let mut b = vec![0xffu8; 8192];
        dev.read_at(&mut b, 1 << 20).unwrap();
        assert!(b[..3].iter().all(|&x| x == 0), "{kind:?}");
        assert_eq!(&b[3..13], b"0123456789");
        assert!(b[13..].iter().all(|&x| x == 0), "{kind:?}");
        // The file itself holds the bytes (O_DIRECT may round its length up to 4 KiB).
        let flen = std::fs::metadata(path).unwrap().len();
        assert!(
            (off + 10..=(1 << 20) + 4096).contains(&flen),
            "{kind:?}: {flen}"
        );
        dev.ensure_len(3 << 20).unwrap();
        assert_eq!(dev.len(), 3 << 20, "{kind:?}");
        assert_eq!(std::fs::metadata(path).unwrap().len(), 3 << 20);
    });
}

#[test]
fn punch_hole_then_reads_are_zeros() {
    each(|kind, dev, _| {
        let data = vec![0xaau8; 64 << 10];
        dev.write_at(&data, 0).unwrap();
        dev.flush().unwrap();
        assert!(!dev.is_hole(0, 4096).unwrap(), "{kind:?}");
        dev.punch_hole(16 << 10, 16 << 10).unwrap();
        let mut b = vec![0xffu8; 64 << 10];
        dev.read_at(&mut b, 0).unwrap();
        assert!(b[..16 << 10].iter().all(|&x| x == 0xaa), "{kind:?}");
        assert!(b[16 << 10..32 << 10].iter().all(|&x| x == 0), "{kind:?}");
        assert!(b[32 << 10..].iter().all(|&x| x == 0xaa), "{kind:?}");
        assert!(dev.is_hole(16 << 10, 16 << 10).unwrap(), "{kind:?}");
        assert_eq!(dev.len(), 64 << 10, "{kind:?}: punching keeps the size");
    });
}

#[test]
fn flush_makes_writes_visible_to_a_new_open() {
    each(|kind, dev, path| {
        let data = pattern(3, 3 * 4096 + 17);
        dev.write_at(&data, 100).unwrap();
        dev.flush().unwrap();
        dev.flush().unwrap();
        let mut back = vec![0u8; data.len()];
        FileDev::open(path, false)
            .unwrap()
            .read_at(&mut back, 100)
            .unwrap();
        assert!(back == data, "{kind:?}");
    });
}

#[test]
fn writes_to_a_read_only_device_fail_cleanly() {
    each(|kind, dev, path| {
        dev.write_at(&[1u8; 4096], 0).unwrap();
        let ro = open(kind, path, false).unwrap();
        let e = ro.write_at(&[2u8; 4096], 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{kind:?}: {e}");
        let e = ro.write_at(&[2u8; 10], 5).unwrap_err();
        assert_eq!(os_error(&e), Some(libc::EBADF), "{kind:?}: {e}");
        // A batch names the failed op; the device still works afterwards.
        let mut buf = vec![0u8; 4096];
        let data = [3u8; 4096];
        let e = ro
            .submit_batch(&mut [IoOp::read(&mut buf, 0), IoOp::write(&data, 8192)])
            .unwrap_err();
        assert_eq!(os_error(&e), Some(libc::EBADF), "{kind:?}");
        let op = e.get_ref().unwrap().downcast_ref::<OpError>().unwrap();
        assert_eq!((op.index, op.offset, op.write), (1, 8192, true), "{kind:?}");
        assert!(e.to_string().contains("at offset 8192"), "{e}");
        let mut b = [0u8; 4096];
        ro.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [1u8; 4096], "{kind:?}");
        // Nonsense ranges are errors too.
        let e = ro.read_at(&mut b, u64::MAX - 10).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{kind:?}");
    });
}

#[test]
fn empty_ops_and_batches_are_no_ops() {
    each(|kind, dev, _| {
        dev.write_at(&[], 1 << 30).unwrap();
        dev.read_at(&mut [], 12345).unwrap();
        dev.submit_batch(&mut []).unwrap();
        assert_eq!(dev.len(), 0, "{kind:?}");
    });
}

#[test]
fn large_batches_and_large_ops() {
    each(|kind, dev, _| {
        // More ops than the ring holds, mixed sizes, one op of 3 MiB + 5 bytes.
        let big = pattern(8, (3 << 20) + 5);
        let small: Vec<Vec<u8>> = (0..300).map(|i| pattern(i, 512 + i as usize)).collect();
        let mut m = Model(Vec::new());
        let mut ops = vec![IoOp::write(&big, 7)];
        for (i, d) in small.iter().enumerate() {
            ops.push(IoOp::write(d, (4 << 20) + i as u64 * 4096));
        }
        dev.submit_batch(&mut ops).unwrap();
        m.write(7, &big);
        for (i, d) in small.iter().enumerate() {
            m.write((4 << 20) + i as u64 * 4096, d);
        }
        assert_holds(kind, dev, &m);
    });
}

#[test]
fn open_data_dev_opens_every_engine() {
    use thinpool::io::{open_data_dev, Engine};
    let dir = tempdir();
    let path = dir.path().join("data");
    std::fs::write(&path, b"hello").unwrap();
    for engine in [Engine::Auto, Engine::Sync, Engine::Uring] {
        for direct in [false, true] {
            match open_data_dev(&path, true, direct, engine) {
                Ok(dev) => {
                    let mut b = [0u8; 5];
                    dev.read_at(&mut b, 0).unwrap();
                    assert_eq!(&b, b"hello");
                }
                Err(e) => {
                    assert_eq!(engine, Engine::Uring, "{e}");
                    assert_eq!(e.kind(), io::ErrorKind::Unsupported);
                    assert!(thinpool::io::uring::available().is_err());
                }
            }
        }
    }
}
