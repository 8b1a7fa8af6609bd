//! Shared bench helpers: a data device that keeps nothing, so benches that measure metadata
//! (snapshot, open, memory) can map millions of blocks without writing gigabytes of data.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thinpool::io::{BlockDev, FileDev};
use thinpool::pool::{CreateOptions, Pool, VolumeId};

/// The data block size of the pools the metadata benches build.
#[allow(dead_code)]
pub const BS: u64 = 4096;

/// Blocks of the volume `vol` of [`new_pool`] (16 GiB).
#[allow(dead_code)]
pub const VOL_BLOCKS: u64 = 4 << 20;

/// A new pool of 4 KiB blocks whose metadata is the real file `path` and whose data is a
/// [`NullDev`], holding one empty volume `vol` of [`VOL_BLOCKS`] blocks.
#[allow(dead_code)]
pub fn new_pool(path: &Path) -> (Pool, VolumeId) {
    let meta: Arc<dyn BlockDev> = Arc::new(FileDev::create(path).unwrap());
    let data: Arc<dyn BlockDev> = Arc::new(NullDev::default());
    let mut o = CreateOptions::new(VOL_BLOCKS * BS);
    o.block_size = BS;
    let mut p = Pool::create_on(meta, data, &o).unwrap();
    let v = p.create_volume("vol", VOL_BLOCKS * BS, false).unwrap();
    (p, v)
}

/// Build a pool whose metadata is the real file `path` (data on a [`NullDev`]) with one
/// 16 GiB volume `vol` holding `mapped` 4 KiB blocks in shuffled order, committed every
/// 50,000 writes. Returns the build time.
#[allow(dead_code)]
pub fn build_scattered(path: &Path, mapped: u64) -> Duration {
    let t = Instant::now();
    let (mut p, v) = new_pool(path);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut blocks: Vec<u64> = (0..VOL_BLOCKS).collect();
    blocks.shuffle(&mut rng);
    let block = vec![0xa5u8; BS as usize];
    for (i, &vb) in blocks[..mapped as usize].iter().enumerate() {
        p.write(v, vb * BS, &block).unwrap();
        if i % 50_000 == 49_999 {
            p.commit().unwrap();
        }
    }
    p.commit().unwrap();
    assert_eq!(p.info().unwrap().data_blocks_used, mapped);
    t.elapsed()
}

/// A data device that drops writes and reads zeros (like /dev/null with a size).
#[derive(Default)]
pub struct NullDev {
    len: AtomicU64,
}

impl BlockDev for NullDev {
    fn read_at(&self, buf: &mut [u8], _offset: u64) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.len
            .fetch_max(offset + buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }
    fn punch_hole(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    fn ensure_len(&self, len: u64) -> io::Result<()> {
        self.len.fetch_max(len, Ordering::Relaxed);
        Ok(())
    }
}
