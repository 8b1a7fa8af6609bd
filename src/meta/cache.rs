//! The block manager: every metadata block is read and written through a bounded LRU cache.
//!
//! Memory stays bounded whatever the pool's size: at most `capacity` blocks are resident.
//! A dirty block may be evicted early (written without a sync) because the commit protocol
//! only ever dirties blocks that were free as of the last durable commit: writing them early
//! can never damage a committed state. Blocks are sealed (checksummed) on their way out.

use super::block::{self, BlockType};
use super::{MetaBlock, MetaError, BLOCK_SIZE};
use crate::hash::IntBuild;
use crate::io::BlockDev;
use lru::LruCache;
use std::collections::BTreeSet;
use std::sync::Arc;

/// One 4 KiB metadata block in memory.
pub type Block = Arc<Vec<u8>>;

/// Counters for the cache, exposed by `pool info` and the benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct CacheStats {
    pub reads: u64,
    pub writes: u64,
    pub hits: u64,
    pub evictions: u64,
}

pub struct BlockManager {
    dev: Arc<dyn BlockDev>,
    uuid: [u8; 16],
    cache: LruCache<u64, Block, IntBuild>,
    dirty: BTreeSet<u64>,
    capacity: usize,
    nr_blocks: u64,
    pub stats: CacheStats,
}

impl BlockManager {
    pub fn new(dev: Arc<dyn BlockDev>, uuid: [u8; 16], nr_blocks: u64, capacity: usize) -> Self {
        BlockManager {
            dev,
            uuid,
            cache: LruCache::unbounded_with_hasher(IntBuild::default()),
            dirty: BTreeSet::new(),
            capacity: capacity.max(64),
            nr_blocks,
            stats: CacheStats::default(),
        }
    }

    pub fn uuid(&self) -> &[u8; 16] {
        &self.uuid
    }
    pub fn dev(&self) -> &Arc<dyn BlockDev> {
        &self.dev
    }
    pub fn nr_blocks(&self) -> u64 {
        self.nr_blocks
    }
    pub fn dirty_count(&self) -> usize {
        self.dirty.len()
    }
    pub fn resident(&self) -> usize {
        self.cache.len()
    }

    fn check_range(&self, b: MetaBlock) -> Result<(), MetaError> {
        if b.0 >= self.nr_blocks {
            return Err(MetaError::Corrupt {
                block: b,
                reason: format!(
                    "block number is beyond the metadata device ({} blocks)",
                    self.nr_blocks
                ),
            });
        }
        Ok(())
    }

    /// Read a block, verifying header and checksum when it comes from disk.
    pub fn read(&mut self, b: MetaBlock, expect: BlockType) -> Result<Block, MetaError> {
        if let Some(blk) = self.cache.get(&b.0) {
            self.stats.hits += 1;
            let blk = blk.clone();
            if block::block_type(&blk) != Some(expect) {
                return Err(MetaError::Corrupt {
                    block: b,
                    reason: format!(
                        "expected a {expect:?} block, found {:?}",
                        block::block_type(&blk)
                    ),
                });
            }
            return Ok(blk);
        }
        self.check_range(b)?;
        let mut buf = vec![0u8; BLOCK_SIZE];
        self.dev
            .read_at(&mut buf, b.0 * BLOCK_SIZE as u64)
            .map_err(|e| MetaError::io("read", b, e))?;
        self.stats.reads += 1;
        block::verify(&buf, Some(expect), b, &self.uuid)?;
        let blk = Arc::new(buf);
        self.insert(b, blk.clone(), false)?;
        Ok(blk)
    }

    /// Read raw bytes of a block without verification and without caching (checker, journal).
    pub fn read_raw(&self, b: MetaBlock) -> Result<Vec<u8>, MetaError> {
        self.check_range(b)?;
        if let Some(blk) = self.cache.peek(&b.0) {
            return Ok(blk.to_vec());
        }
        let mut buf = vec![0u8; BLOCK_SIZE];
        self.dev
            .read_at(&mut buf, b.0 * BLOCK_SIZE as u64)
            .map_err(|e| MetaError::io("read", b, e))?;
        Ok(buf)
    }

    /// Mutable access to a block that the caller already owns in this transaction.
    pub fn get_mut(&mut self, b: MetaBlock, expect: BlockType) -> Result<&mut Vec<u8>, MetaError> {
        if !self.cache.contains(&b.0) {
            self.read(b, expect)?;
        }
        self.dirty.insert(b.0);
        let blk = self.cache.get_mut(&b.0).expect("block was just cached");
        Ok(Arc::make_mut(blk))
    }

    /// Install a new block (freshly allocated) with the given contents.
    pub fn put_new(&mut self, b: MetaBlock, buf: Vec<u8>) -> Result<(), MetaError> {
        debug_assert_eq!(buf.len(), BLOCK_SIZE);
        self.check_range(b)?;
        self.insert(b, Arc::new(buf), true)
    }

    fn insert(&mut self, b: MetaBlock, blk: Block, dirty: bool) -> Result<(), MetaError> {
        while self.cache.len() >= self.capacity {
            let Some((victim, vblk)) = self.cache.pop_lru() else {
                break;
            };
            self.stats.evictions += 1;
            if self.dirty.remove(&victim) {
                self.write_out(MetaBlock(victim), &vblk)?;
            }
        }
        if dirty {
            self.dirty.insert(b.0);
        }
        self.cache.put(b.0, blk);
        Ok(())
    }

    fn write_out(&mut self, b: MetaBlock, blk: &Block) -> Result<(), MetaError> {
        let mut buf = blk.to_vec();
        block::seal(&mut buf);
        self.dev
            .write_at(&buf, b.0 * BLOCK_SIZE as u64)
            .map_err(|e| MetaError::io("write", b, e))?;
        self.stats.writes += 1;
        // Keep the sealed copy so the cached crc matches the disk.
        if let Some(c) = self.cache.peek_mut(&b.0) {
            *c = Arc::new(buf);
        }
        Ok(())
    }

    /// Write every dirty block, in block order. Does not sync.
    pub fn write_dirty(&mut self) -> Result<(), MetaError> {
        let dirty = std::mem::take(&mut self.dirty);
        for b in dirty {
            let blk = self
                .cache
                .peek(&b)
                .expect("dirty block is resident")
                .clone();
            self.write_out(MetaBlock(b), &blk)?;
        }
        Ok(())
    }

    /// Write a block directly (label, journal record), bypassing the cache.
    pub fn write_direct(&mut self, b: MetaBlock, buf: &mut [u8]) -> Result<(), MetaError> {
        self.check_range(b)?;
        block::seal(buf);
        self.dev
            .write_at(buf, b.0 * BLOCK_SIZE as u64)
            .map_err(|e| MetaError::io("write", b, e))?;
        self.stats.writes += 1;
        Ok(())
    }

    pub fn sync(&mut self) -> Result<(), MetaError> {
        self.dev
            .flush()
            .map_err(|e| MetaError::io("fdatasync", MetaBlock(0), e))
    }

    /// Forget every dirty block (transaction abort) and every cached copy of them.
    pub fn discard_dirty(&mut self) {
        for b in std::mem::take(&mut self.dirty) {
            self.cache.pop(&b);
        }
    }

    /// Drop everything cached (used after an abort and by tests that measure cold reads).
    pub fn clear(&mut self) {
        self.discard_dirty();
        self.cache.clear();
    }

    /// The checksum a block has (or will have) on disk: computed from its current bytes.
    pub fn crc_of(&mut self, b: MetaBlock, expect: BlockType) -> Result<u32, MetaError> {
        let blk = self.read(b, expect)?;
        Ok(block::compute_crc(expect, &blk))
    }
}
