//! Every error path of the pool API: what fails, with which error, and that a failure
//! changes nothing (data read back identical, `info()` identical) and leaves the pool usable.

use std::sync::Arc;
use thinpool::io::{BlockDev, MemDev};
use thinpool::meta::MetaError;
use thinpool::pool::{CreateOptions, OpenOptions, Pool, PoolError, PoolInfo, VolumeId};

const BS: u64 = 4096;

#[allow(dead_code)]
struct Mem {
    pool: Pool,
    meta: Arc<dyn BlockDev>,
    data: Arc<dyn BlockDev>,
}

fn mem_pool(blocks: u64, meta_size: Option<u64>) -> Mem {
    let meta_cap = meta_size.unwrap_or(8 << 20);
    let meta: Arc<dyn BlockDev> = Arc::new(MemDev::new(meta_cap).unwrap());
    let data: Arc<dyn BlockDev> = Arc::new(MemDev::new(blocks * BS).unwrap());
    let mut o = CreateOptions::new(blocks * BS);
    o.block_size = BS;
    o.metadata_size = meta_size;
    let pool = Pool::create_on(meta.clone(), data.clone(), &o).unwrap();
    Mem { pool, meta, data }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            seed.wrapping_add((i % 251) as u8)
                .wrapping_add((i / 4096) as u8)
                | 1
        })
        .collect()
}

fn read_all(p: &mut Pool, id: VolumeId, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    p.read(id, 0, &mut buf).unwrap();
    buf
}

/// `info()` without the fields a failed operation may legitimately move (commit sequence,
/// metadata blocks of the extra commits an ENOSPC retry makes).
fn space(i: &PoolInfo) -> (u64, u64, u64) {
    (i.data_blocks_total, i.data_blocks_used, i.volumes)
}

fn is_no_data_space<T: std::fmt::Debug>(r: &Result<T, PoolError>) -> bool {
    matches!(r, Err(PoolError::Meta(MetaError::NoDataSpace)))
}

/// A volume whose blocks 0 and 1 are shared with a snapshot, in a pool with `free` blocks
/// left (taken by volume `filler`).
fn shared_edges(blocks: u64, free: u64) -> (Mem, VolumeId, Vec<u8>) {
    let mut m = mem_pool(blocks, None);
    let p = &mut m.pool;
    let a = p.create_volume("a", 4 * BS, false).unwrap();
    let data = pattern(7, 2 * BS as usize);
    p.write(a, 0, &data).unwrap();
    p.snapshot("a", "snap", true).unwrap();
    let filler = p.create_volume("filler", blocks * BS, false).unwrap();
    let fill = blocks - 2 - free;
    p.write(filler, 0, &pattern(3, (fill * BS) as usize))
        .unwrap();
    p.commit().unwrap();
    assert_eq!(p.info().unwrap().data_blocks_used, blocks - free);
    let mut want = data;
    want.resize(4 * BS as usize, 0);
    (m, a, want)
}

#[test]
fn discard_that_cannot_copy_its_edges_changes_nothing() {
    // Zeroing the two partial edge blocks needs two new blocks; only one is free.
    let (mut m, a, want) = shared_edges(16, 1);
    let p = &mut m.pool;
    let before = p.info().unwrap();
    let r = p.discard(a, BS / 2, BS);
    assert!(is_no_data_space(&r), "{r:?}");
    assert_eq!(
        read_all(p, a, 4 * BS),
        want,
        "a failed discard changed data"
    );
    assert_eq!(space(&p.info().unwrap()), space(&before));
    // A discard that needs no copy still works: whole block 1 is unmapped.
    p.discard(a, BS, BS).unwrap();
    let mut z = want.clone();
    z[BS as usize..2 * BS as usize].fill(0);
    assert_eq!(read_all(p, a, 4 * BS), z);
    assert_eq!(
        space(&p.info().unwrap()),
        space(&before),
        "block 1 is still the snapshot's"
    );
}

#[test]
fn discard_and_resize_reuse_blocks_freed_by_the_last_commits() {
    // The pool is full, then a removal frees blocks: they are protected from reuse for two
    // commits, but an operation that needs them must still succeed (as a write does).
    let (mut m, a, want) = shared_edges(16, 0);
    let p = &mut m.pool;
    p.remove_volume("filler").unwrap();
    p.discard(a, BS / 2, BS).unwrap();
    let mut z = want.clone();
    z[(BS / 2) as usize..(BS + BS / 2) as usize].fill(0);
    assert_eq!(read_all(p, a, 4 * BS), z);

    let (mut m, a, want) = shared_edges(16, 0);
    let p = &mut m.pool;
    p.remove_volume("filler").unwrap();
    p.resize("a", BS / 2).unwrap();
    assert_eq!(read_all(p, a, BS / 2), want[..(BS / 2) as usize]);
    p.resize("a", 4 * BS).unwrap();
    let mut z = want[..(BS / 2) as usize].to_vec();
    z.resize(4 * BS as usize, 0);
    assert_eq!(read_all(p, a, 4 * BS), z, "grown tail must read zeros");
}

#[test]
fn full_pool_write_fails_with_enospc_and_changes_nothing() {
    let mut m = mem_pool(32, None);
    let p = &mut m.pool;
    let a = p.create_volume("a", 64 * BS, false).unwrap();
    let b = p.create_volume("b", 64 * BS, false).unwrap();
    let da = pattern(1, 24 * BS as usize);
    p.write(a, 0, &da).unwrap();
    p.write(b, 0, &pattern(2, 8 * BS as usize)).unwrap();
    p.commit().unwrap();
    let before = p.info().unwrap();
    assert_eq!(before.data_blocks_used, 32);
    // A write that needs one new block, and a partial one over several blocks.
    for (off, len) in [(40 * BS, BS), (30 * BS + 100, 3 * BS)] {
        let r = p.write(a, off, &pattern(9, len as usize));
        assert!(is_no_data_space(&r), "{r:?}");
        assert_eq!(r.unwrap_err().errno(), libc::ENOSPC);
    }
    // An overwrite of exclusively owned blocks needs no space and still works.
    p.write(a, 0, &da[..BS as usize]).unwrap();
    let mut want = da.clone();
    want.resize(64 * BS as usize, 0);
    assert_eq!(read_all(p, a, 64 * BS), want);
    assert_eq!(space(&p.info().unwrap()), space(&before));
    // Freeing space makes the same write succeed.
    p.remove_volume("b").unwrap();
    let w = pattern(9, BS as usize);
    p.write(a, 40 * BS, &w).unwrap();
    want[40 * BS as usize..41 * BS as usize].copy_from_slice(&w);
    assert_eq!(read_all(p, a, 64 * BS), want);
    assert_eq!(p.info().unwrap().data_blocks_used, 25);
}

#[test]
fn metadata_exhaustion_fails_cleanly_and_committed_data_survives() {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    // 256 metadata blocks: about half go to the label and journal, the rest fills with
    // half-full leaves of scattered single-block writes.
    let blocks = 40_000u64;
    let mut m = mem_pool(blocks, Some(1 << 20));
    let a = m.pool.create_volume("a", blocks * BS, false).unwrap();
    let mut order: Vec<u64> = (0..blocks).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(5));
    let mut committed = Vec::new();
    let mut pending = Vec::new();
    let mut hit = false;
    for (i, &vb) in order.iter().enumerate() {
        let tag = (vb as u32).to_le_bytes();
        match m.pool.write(a, vb * BS, &tag) {
            Ok(()) => pending.push(vb),
            Err(PoolError::Meta(MetaError::NoMetadataSpace)) => {
                hit = true;
                break;
            }
            Err(e) => panic!("write #{i}: unexpected {e}"),
        }
        if i % 500 == 499 {
            match m.pool.commit() {
                Ok(()) => committed.append(&mut pending),
                Err(PoolError::Meta(MetaError::NoMetadataSpace)) => {
                    hit = true;
                    break;
                }
                Err(e) => panic!("commit: unexpected {e}"),
            }
        }
    }
    assert!(hit, "metadata never ran out");
    assert!(
        committed.len() > 1000,
        "only {} writes committed",
        committed.len()
    );
    // Reopen: the pool is consistent and everything committed reads back.
    drop(m.pool);
    let mut p = Pool::open_on(m.meta.clone(), m.data.clone(), &OpenOptions::default()).unwrap();
    assert_eq!(p.volume_id("a").unwrap(), a);
    for &vb in &committed {
        let mut buf = [0u8; 4];
        p.read(a, vb * BS, &mut buf).unwrap();
        assert_eq!(buf, (vb as u32).to_le_bytes(), "block {vb}");
    }
    let info = p.info().unwrap();
    assert!(info.data_blocks_used >= committed.len() as u64);
    // Removing the volume gives the space back.
    p.remove_volume("a").unwrap();
    assert_eq!(p.info().unwrap().data_blocks_used, 0);
    let b = p.create_volume("b", BS, false).unwrap();
    p.write(b, 0, b"ok").unwrap();
}

#[test]
fn unknown_volumes() {
    let mut m = mem_pool(64, None);
    let p = &mut m.pool;
    let a = p.create_volume("a", 8 * BS, false).unwrap();
    let ghost = thinpool::pool::VolumeId(a.0 + 100);
    let mut buf = [0u8; 8];
    assert!(matches!(
        p.read(ghost, 0, &mut buf),
        Err(PoolError::NoSuchVolume(_))
    ));
    assert!(matches!(
        p.write(ghost, 0, &buf),
        Err(PoolError::NoSuchVolume(_))
    ));
    assert!(matches!(
        p.discard(ghost, 0, BS),
        Err(PoolError::NoSuchVolume(_))
    ));
    let nsv =
        |r: Result<(), PoolError>| matches!(r, Err(PoolError::NoSuchVolume(n)) if n == "nope");
    assert!(nsv(p.remove_volume("nope")));
    assert!(nsv(p.rename("nope", "x")));
    assert!(nsv(p.resize("nope", BS)));
    assert!(nsv(p.rollback("nope", "a")));
    assert!(nsv(p.rollback("a", "nope")));
    assert!(nsv(p.snapshot("nope", "s", false).map(|_| ())));
    assert!(nsv(p.volume_id("nope").map(|_| ())));
    assert_eq!(p.info().unwrap().volumes, 1);
}

#[test]
fn duplicate_and_invalid_names() {
    let mut m = mem_pool(64, None);
    let p = &mut m.pool;
    p.create_volume("a", BS, false).unwrap();
    p.create_volume("b", BS, false).unwrap();
    let exists =
        |r: Result<(), PoolError>| matches!(r, Err(PoolError::VolumeExists(n)) if n == "b");
    assert!(exists(p.create_volume("b", BS, false).map(|_| ())));
    assert!(exists(p.snapshot("a", "b", false).map(|_| ())));
    assert!(exists(p.rename("a", "b")));
    let long = "x".repeat(128);
    for bad in [
        "",
        "a/b",
        ".",
        "..",
        "nul\0",
        "a\nb",
        "a\x1b[31m",
        "a\u{202e}b",
        long.as_str(),
    ] {
        let invalid = |r: Result<(), PoolError>| matches!(r, Err(PoolError::InvalidName { .. }));
        assert!(
            invalid(p.create_volume(bad, BS, false).map(|_| ())),
            "{bad:?}"
        );
        assert!(invalid(p.snapshot("a", bad, false).map(|_| ())), "{bad:?}");
        assert!(invalid(p.rename("a", bad)), "{bad:?}");
    }
    p.create_volume(&"y".repeat(127), BS, false).unwrap();
    let names: Vec<String> = p.list().unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["a", "b", &"y".repeat(127)]);
}

#[test]
fn zero_and_huge_sizes() {
    let mut m = mem_pool(64, None);
    let p = &mut m.pool;
    let inv = |r: Result<(), PoolError>| matches!(r, Err(PoolError::InvalidSize(_)));
    assert!(inv(p.create_volume("z", 0, false).map(|_| ())));
    assert!(inv(p.create_volume("h", u64::MAX, false).map(|_| ())));
    assert!(inv(p.create_volume("h", BS << 48, false).map(|_| ())));
    p.create_volume("a", BS, false).unwrap();
    assert!(inv(p.resize("a", 0)));
    assert!(inv(p.resize("a", u64::MAX)));
    // A volume may be far larger than the pool (thin provisioning).
    p.create_volume("big", 1 << 50, false).unwrap();
    assert_eq!(p.info().unwrap().volumes, 2);
    // Pool-level sizes.
    let dir = tempfile::tempdir().unwrap();
    let mut o = CreateOptions::new(BS - 1);
    o.block_size = BS;
    assert!(matches!(
        Pool::create(&dir.path().join("p1"), &o),
        Err(PoolError::InvalidSize(_))
    ));
    let mut o = CreateOptions::new(1 << 20);
    o.block_size = 3000;
    assert!(matches!(
        Pool::create(&dir.path().join("p2"), &o),
        Err(PoolError::InvalidSize(_))
    ));
    let mut o = CreateOptions::new(1 << 20);
    o.metadata_size = Some(1 << 20);
    assert!(matches!(
        Pool::create(&dir.path().join("p3"), &o),
        Err(PoolError::InvalidSize(_))
    ));
}

#[test]
fn read_only_volumes_refuse_changes() {
    let mut m = mem_pool(64, None);
    let p = &mut m.pool;
    let a = p.create_volume("a", 4 * BS, false).unwrap();
    p.write(a, 0, &pattern(4, BS as usize)).unwrap();
    let s = p.snapshot("a", "s", true).unwrap();
    let ro = |r: Result<(), PoolError>| matches!(r, Err(PoolError::ReadOnlyVolume(n)) if n == "s");
    assert!(ro(p.write(s, 0, b"x")));
    assert!(ro(p.discard(s, 0, BS)));
    assert!(ro(p.write_zeroes(s, 0, BS, false)));
    assert!(ro(p.write_zeroes(s, 0, BS, true)));
    assert!(ro(p.resize("s", 8 * BS)));
    let c = p.snapshot("s", "c", false).unwrap();
    assert!(ro(p.rollback("s", "c")));
    assert_eq!(p.write(s, 0, b"x").unwrap_err().errno(), libc::EPERM);
    assert_eq!(read_all(p, s, BS), pattern(4, BS as usize));
    // A writable snapshot of a read-only one is writable; making `s` writable works too.
    p.write(c, 0, b"c").unwrap();
    p.set_read_only("s", false).unwrap();
    p.write(s, 0, b"s").unwrap();
}

#[test]
fn reads_and_writes_past_the_end() {
    let mut m = mem_pool(64, None);
    let p = &mut m.pool;
    let a = p.create_volume("a", 3 * BS + 10, false).unwrap();
    let oor = |r: Result<(), PoolError>| matches!(r, Err(PoolError::OutOfRange { .. }));
    let mut buf = vec![0u8; 11];
    assert!(oor(p.read(a, 3 * BS, &mut buf)));
    assert!(oor(p.write(a, 3 * BS, &buf)));
    assert!(oor(p.discard(a, 3 * BS, 11)));
    assert!(oor(p.write_zeroes(a, 3 * BS, 11, false)));
    assert!(oor(p.read(a, u64::MAX - 2, &mut buf)));
    assert!(oor(p.write(a, u64::MAX - 2, &buf)));
    assert_eq!(
        p.write(a, 3 * BS + 10, b"x").unwrap_err().errno(),
        libc::EINVAL
    );
    // Right up to the end is fine, and nothing above changed anything.
    p.write(a, 3 * BS, &[7u8; 10]).unwrap();
    p.read(a, 3 * BS, &mut buf[..10]).unwrap();
    assert_eq!(&buf[..10], &[7u8; 10]);
    assert_eq!(p.info().unwrap().data_blocks_used, 1);
}

#[test]
fn directory_pool_second_opener_and_read_only_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool");
    let mut o = CreateOptions::new(64 * BS);
    o.block_size = BS;
    let mut p = Pool::create(&path, &o).unwrap();
    let a = p.create_volume("a", 4 * BS, false).unwrap();
    p.write(a, 0, b"hello").unwrap();
    p.commit().unwrap();
    let in_use = |r: Result<Pool, PoolError>| matches!(r, Err(PoolError::InUse(_)));
    assert!(in_use(Pool::open(&path, &OpenOptions::default())));
    let ro = OpenOptions {
        read_only: true,
        ..OpenOptions::default()
    };
    assert!(in_use(Pool::open(&path, &ro)));
    assert!(matches!(Pool::create(&path, &o), Err(PoolError::Exists(_))));
    drop(p);
    // Read-only: reads work, every change fails, and two read-only openers may coexist.
    let mut r1 = Pool::open(&path, &ro).unwrap();
    let mut r2 = Pool::open(&path, &ro).unwrap();
    assert!(in_use(Pool::open(&path, &OpenOptions::default())));
    let mut buf = [0u8; 5];
    r1.read(a, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    r2.read(a, 0, &mut buf).unwrap();
    let ro_err =
        |r: Result<(), PoolError>| matches!(r, Err(PoolError::Meta(MetaError::ReadOnly(_))));
    assert!(ro_err(r1.write(a, 0, b"x")));
    assert!(ro_err(r1.discard(a, 0, BS)));
    assert!(ro_err(r1.create_volume("b", BS, false).map(|_| ())));
    assert!(ro_err(r1.snapshot("a", "s", false).map(|_| ())));
    assert!(ro_err(r1.remove_volume("a")));
    assert!(r1.info().unwrap().read_only);
    drop((r1, r2));
    let mut p = Pool::open(&path, &OpenOptions::default()).unwrap();
    p.read(a, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    assert!(matches!(
        Pool::open(&dir.path().join("missing"), &OpenOptions::default()),
        Err(PoolError::NotAPool(_))
    ));
}

#[test]
fn pool_grow_adds_space() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool");
    let mut o = CreateOptions::new(16 * BS);
    o.block_size = BS;
    let mut p = Pool::create(&path, &o).unwrap();
    let a = p.create_volume("a", 64 * BS, false).unwrap();
    p.write(a, 0, &pattern(5, 16 * BS as usize)).unwrap();
    assert!(is_no_data_space(&p.write(a, 16 * BS, b"x")));
    assert!(matches!(p.grow(8 * BS), Err(PoolError::InvalidSize(_))));
    p.grow(40 * BS).unwrap();
    assert_eq!(p.info().unwrap().data_blocks_total, 40);
    let more = pattern(6, 24 * BS as usize);
    p.write(a, 16 * BS, &more).unwrap();
    assert!(is_no_data_space(&p.write(a, 40 * BS, b"x")));
    drop(p);
    let mut p = Pool::open(&path, &OpenOptions::default()).unwrap();
    let info = p.info().unwrap();
    assert_eq!((info.data_blocks_total, info.data_blocks_used), (40, 40));
    let mut want = pattern(5, 16 * BS as usize);
    want.extend_from_slice(&more);
    want.resize(64 * BS as usize, 0);
    assert_eq!(read_all(&mut p, a, 64 * BS), want);
}

#[test]
fn rollback_needs_a_snapshot_of_the_volume() {
    let mut m = mem_pool(64, None);
    let p = &mut m.pool;
    let a = p.create_volume("a", 4 * BS, false).unwrap();
    p.write(a, 0, b"v1").unwrap();
    p.create_volume("other", 4 * BS, false).unwrap();
    p.snapshot("a", "s1", false).unwrap();
    p.snapshot("s1", "s2", false).unwrap();
    p.snapshot("a", "sib", false).unwrap();
    let not = |r: Result<(), PoolError>| matches!(r, Err(PoolError::NotASnapshot { .. }));
    assert!(not(p.rollback("a", "other")));
    assert!(not(p.rollback("a", "a")));
    assert!(not(p.rollback("s1", "sib")));
    assert!(not(p.rollback("s2", "s1")));
    p.write(a, 0, b"v2").unwrap();
    let mut buf = [0u8; 2];
    p.read(a, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"v2");
    // A snapshot of a snapshot (any depth) is one of the volume's.
    p.rollback("a", "s2").unwrap();
    p.read(a, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"v1");
    // Once the intermediate snapshot is gone, the chain is broken.
    p.remove_volume("s1").unwrap();
    assert!(not(p.rollback("a", "s2")));
}
