//! Shared bench helpers: a data device that keeps nothing, so benches that measure metadata
//! (snapshot, open, memory) can map millions of blocks without writing gigabytes of data.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use thinpool::io::BlockDev;

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
