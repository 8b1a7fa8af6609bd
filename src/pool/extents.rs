//! Giving the data file real extents ahead of the allocator (see `BlockDev::allocate`).
//!
//! With O_DIRECT, a write into a hole of the data file allocates its extent inside the
//! write, and ext4 serializes such writes on the file's inode lock: a first write into a
//! fresh thin block waited for every other one in flight (`serve --direct`, 4k random first
//! writes at queue depth 16: 0.65x qemu-nbd + qcow2, which zero-allocates each cluster
//! before writing into it). Writes into allocated extents, even unwritten ones, share the
//! lock. So the first new block handed out in a chunk of the data file allocates the whole
//! chunk (unwritten: it still reads as zeros and `is_hole` still says so), and the writes
//! into the rest of it run side by side. The allocator hands blocks out in ascending order
//! from a cursor, so at most the chunk it is filling holds allocated unmapped space; a
//! punched block forgets its chunk, so that reusing the chunk allocates it again.
//!
//! Devices that gain nothing (page-cache files, memory, block devices) ignore `allocate`;
//! the bookkeeping here is then one bit per chunk.

use crate::io::BlockDev;
use bitvec::vec::BitVec;

/// Bytes allocated at once: one call per 64 blocks of 64 KiB.
pub(crate) const CHUNK: u64 = 4 << 20;

/// Which chunks of the data file this process allocated since they were last punched.
#[derive(Default)]
pub(crate) struct Extents {
    done: BitVec,
}

impl Extents {
    fn chunk(bs: u64) -> u64 {
        CHUNK.max(bs)
    }

    /// Before writing into the new data blocks `blocks` (of `bs` bytes): allocate the
    /// chunks they lie in that are not allocated yet. Advisory: a failure (no space on the
    /// filesystem, no `fallocate`) leaves the writes to allocate for themselves.
    pub(crate) fn before_write(&mut self, dev: &dyn BlockDev, bs: u64, blocks: &[u64]) {
        let chunk = Self::chunk(bs);
        let end = dev.len();
        for &b in blocks {
            let c = b * bs / chunk;
            let i = c as usize;
            if i >= self.done.len() {
                self.done.resize(i + 1, false);
            }
            if self.done[i] {
                continue;
            }
            let off = c * chunk;
            if off >= end {
                continue;
            }
            self.done.set(i, true);
            let _ = dev.allocate(off, chunk.min(end - off));
        }
    }

    /// Data block `b` was punched: its chunk is no longer all allocated.
    pub(crate) fn punched(&mut self, bs: u64, b: u64) {
        let i = (b * bs / Self::chunk(bs)) as usize;
        if i < self.done.len() {
            self.done.set(i, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::Mutex;

    /// Records `allocate` calls.
    struct Rec(Mutex<Vec<(u64, u64)>>, u64);
    impl BlockDev for Rec {
        fn read_at(&self, _: &mut [u8], _: u64) -> io::Result<()> {
            Ok(())
        }
        fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
        fn len(&self) -> u64 {
            self.1
        }
        fn punch_hole(&self, _: u64, _: u64) -> io::Result<()> {
            Ok(())
        }
        fn ensure_len(&self, _: u64) -> io::Result<()> {
            Ok(())
        }
        fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
            self.0.lock().unwrap().push((offset, len));
            Ok(())
        }
    }

    #[test]
    fn each_chunk_is_allocated_once_until_punched_and_never_past_the_end() {
        let bs = 64 << 10;
        let dev = Rec(Mutex::new(Vec::new()), 10 << 20); // 2.5 chunks
        let mut e = Extents::default();
        e.before_write(&dev, bs, &[0, 1, 63]);
        e.before_write(&dev, bs, &[64, 2, 65]);
        e.before_write(&dev, bs, &[130, 159]);
        assert_eq!(
            *dev.0.lock().unwrap(),
            [(0, CHUNK), (CHUNK, CHUNK), (2 * CHUNK, 2 << 20)]
        );
        e.punched(bs, 70);
        e.before_write(&dev, bs, &[3, 71]);
        assert_eq!(dev.0.lock().unwrap().last(), Some(&(CHUNK, CHUNK)));
        assert_eq!(dev.0.lock().unwrap().len(), 4);
        // Blocks larger than a chunk: one block at a time.
        let big = Rec(Mutex::new(Vec::new()), 64 << 20);
        let mut e = Extents::default();
        e.before_write(&big, 8 << 20, &[2]);
        assert_eq!(*big.0.lock().unwrap(), [(16 << 20, 8 << 20)]);
    }
}
