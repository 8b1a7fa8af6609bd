//! The block manager: every metadata block is read and written through a bounded cache.
//!
//! Memory stays bounded whatever the pool's size: at most `capacity` blocks are resident.
//! Eviction is CLOCK (second chance): a hit only sets the slot's reference bit, where an
//! LRU list relinks two neighbours, each a cache miss of its own; on the data path a read
//! visits several nodes, and the list updates were a visible share of it (issue 9).
//! A dirty block may be evicted early (written without a sync) because the commit protocol
//! only ever dirties blocks that are free in the last two committed states (S and S-1,
//! docs/design.md §3): writing them early can never damage a protected state. Blocks are
//! sealed (checksummed) on their way out.

use super::block::{self, BlockType};
use super::{MetaBlock, MetaError, BLOCK_SIZE};
use crate::hash::IntMap;
use crate::io::BlockDev;
use std::collections::BTreeSet;
use std::sync::Arc;

#[cfg(test)]
#[path = "cache_tests.rs"]
mod eviction_tests;

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
    cache: Clock,
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
            cache: Clock::default(),
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
                block: Some(b),
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
        if let Some(blk) = self.cache.get(b.0) {
            self.stats.hits += 1;
            let blk = blk.clone();
            check_type(b, &blk, expect)?;
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

    /// `read` without the reference count: the block borrowed where it is cached (lookups
    /// on the data path visit several nodes and keep none).
    #[inline]
    pub fn read_ref(&mut self, b: MetaBlock, expect: BlockType) -> Result<&[u8], MetaError> {
        let i = match self.cache.slot_of(b.0) {
            Some(i) => {
                self.stats.hits += 1;
                i
            }
            None => {
                self.read(b, expect)?;
                self.cache.slot_of(b.0).expect("block was just cached")
            }
        };
        let blk = self.cache.at(i);
        check_type(b, blk, expect)?;
        Ok(blk)
    }

    /// Read raw bytes of a block without verification and without caching (checker, journal).
    pub fn read_raw(&self, b: MetaBlock) -> Result<Vec<u8>, MetaError> {
        self.check_range(b)?;
        if let Some(blk) = self.cache.peek(b.0) {
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
        if self.cache.peek(b.0).is_none() {
            self.read(b, expect)?;
        }
        self.dirty.insert(b.0);
        let blk = self.cache.get_mut(b.0).expect("block was just cached");
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
            let Some((victim, vblk)) = self.cache.evict() else {
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
        if let Some(c) = self.cache.get_mut(b.0) {
            *c = Arc::new(buf);
        }
        Ok(())
    }

    /// Write every dirty block, in block order. Does not sync.
    pub fn write_dirty(&mut self) -> Result<(), MetaError> {
        let dirty = std::mem::take(&mut self.dirty);
        for b in dirty {
            let blk = self.cache.peek(b).expect("dirty block is resident").clone();
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
            .map_err(|e| MetaError::io_device("fdatasync", e))
    }

    /// Forget every dirty block (transaction abort) and every cached copy of them.
    pub fn discard_dirty(&mut self) {
        for b in std::mem::take(&mut self.dirty) {
            self.cache.remove(b);
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

/// A cached block must still be of the type its reader expects.
fn check_type(b: MetaBlock, blk: &[u8], expect: BlockType) -> Result<(), MetaError> {
    if block::raw_type(blk) != expect as u32 {
        return Err(MetaError::Corrupt {
            block: Some(b),
            reason: format!(
                "expected a {expect:?} block, found {:?}",
                block::block_type(blk)
            ),
        });
    }
    Ok(())
}

/// One resident block and its reference bit.
struct Slot {
    key: u64,
    blk: Block,
    referenced: bool,
}

/// A CLOCK cache of blocks: slots in one vector, an index from block number to slot, and
/// a hand that sweeps the slots for a victim, sparing once each slot hit since its last
/// pass. Holes left by `remove` are reused first.
#[derive(Default)]
struct Clock {
    slots: Vec<Option<Slot>>,
    index: IntMap<u64, usize>,
    holes: Vec<usize>,
    hand: usize,
}

impl Clock {
    fn len(&self) -> usize {
        self.index.len()
    }

    /// A resident block, marked as used.
    #[inline]
    fn get(&mut self, key: u64) -> Option<&Block> {
        let i = self.slot_of(key)?;
        Some(self.at(i))
    }

    /// The slot of a resident block.
    #[inline]
    fn slot_of(&self, key: u64) -> Option<usize> {
        self.index.get(&key).copied()
    }

    /// The block in slot `i` (from `slot_of`), marked as used.
    #[inline]
    fn at(&mut self, i: usize) -> &Block {
        let s = self.slots[i].as_mut().expect("indexed slot is occupied");
        s.referenced = true;
        &s.blk
    }

    /// A resident block, not marked.
    fn peek(&self, key: u64) -> Option<&Block> {
        let i = *self.index.get(&key)?;
        self.slots[i].as_ref().map(|s| &s.blk)
    }

    fn get_mut(&mut self, key: u64) -> Option<&mut Block> {
        let i = *self.index.get(&key)?;
        let s = self.slots[i].as_mut().expect("indexed slot is occupied");
        s.referenced = true;
        Some(&mut s.blk)
    }

    /// Insert or replace. A new block starts unreferenced: one that is never used again
    /// goes at the hand's next pass.
    fn put(&mut self, key: u64, blk: Block) {
        if let Some(&i) = self.index.get(&key) {
            let s = self.slots[i].as_mut().expect("indexed slot is occupied");
            s.blk = blk;
            s.referenced = true;
            return;
        }
        let slot = Some(Slot {
            key,
            blk,
            referenced: false,
        });
        let i = match self.holes.pop() {
            Some(i) => {
                self.slots[i] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        self.index.insert(key, i);
    }

    fn remove(&mut self, key: u64) -> Option<Block> {
        let i = self.index.remove(&key)?;
        self.holes.push(i);
        self.slots[i].take().map(|s| s.blk)
    }

    /// Choose and remove a victim: the first unreferenced slot from the hand on, clearing
    /// the bits it passes (at most two sweeps).
    fn evict(&mut self) -> Option<(u64, Block)> {
        if self.index.is_empty() {
            return None;
        }
        loop {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let i = self.hand;
            self.hand += 1;
            if let Some(s) = self.slots[i].as_mut() {
                if s.referenced {
                    s.referenced = false;
                } else {
                    let key = s.key;
                    return self.remove(key).map(|b| (key, b));
                }
            }
        }
    }

    fn clear(&mut self) {
        *self = Clock::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blk(tag: u8) -> Block {
        Arc::new(vec![tag; 8])
    }

    #[test]
    fn clock_spares_a_block_hit_since_the_last_sweep() {
        let mut c = Clock::default();
        for k in 0..4 {
            c.put(k, blk(k as u8));
        }
        assert!(c.get(0).is_some());
        // 0 was hit: 1 is the oldest unreferenced block.
        assert_eq!(c.evict().map(|(k, _)| k), Some(1));
        assert_eq!(c.evict().map(|(k, _)| k), Some(2));
        assert_eq!(c.evict().map(|(k, _)| k), Some(3));
        // 0 lost its bit on the first sweep: it goes now.
        assert_eq!(c.evict().map(|(k, _)| k), Some(0));
        assert!(c.evict().is_none());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn clock_reuses_holes_and_replaces_in_place() {
        let mut c = Clock::default();
        c.put(10, blk(1));
        c.put(11, blk(2));
        assert_eq!(c.remove(10).map(|b| b[0]), Some(1));
        assert!(c.peek(10).is_none());
        c.put(12, blk(3));
        assert_eq!(c.slots.len(), 2, "the hole was reused");
        c.put(11, blk(4));
        assert_eq!(c.len(), 2);
        assert_eq!(c.peek(11).map(|b| b[0]), Some(4));
        assert_eq!(c.peek(12).map(|b| b[0]), Some(3));
        // Every entry is evictable, whatever the bits.
        let mut gone: Vec<u64> = std::iter::from_fn(|| c.evict().map(|(k, _)| k)).collect();
        gone.sort();
        assert_eq!(gone, vec![11, 12]);
    }

    #[test]
    fn manager_stays_within_capacity_and_writes_dirty_victims() {
        let dev: Arc<dyn BlockDev> = Arc::new(crate::io::MemDev::new(1 << 20).unwrap());
        let mut bm = BlockManager::new(dev.clone(), [7; 16], 256, 64);
        for b in 0..200u64 {
            let mut buf = vec![0u8; BLOCK_SIZE];
            buf[100] = b as u8;
            bm.put_new(MetaBlock(b), buf).unwrap();
            assert!(bm.resident() <= 64);
        }
        // Every evicted block was dirty, so it reached the device before it left.
        assert_eq!(bm.stats.evictions, 200 - 64);
        assert_eq!(bm.stats.writes, 200 - 64);
        assert_eq!(bm.dirty_count(), 64);
        let mut raw = vec![0u8; BLOCK_SIZE];
        dev.read_at(&mut raw, 5 * BLOCK_SIZE as u64).unwrap();
        assert_eq!(raw[100], 5);
    }
}
