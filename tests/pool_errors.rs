//! Every error path of the pool API: what fails, with which error, and that a failure
//! changes nothing (data read back identical, `info()` identical) and leaves the pool usable.

use std::sync::Arc;
use thinpool::io::{BlockDev, MemDev};
use thinpool::meta::MetaError;
use thinpool::pool::{CreateOptions, OpenOptions, Pool, PoolError, PoolInfo, VolumeId};

const BS: u64 = 4096;

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
