//! `MemDev`: a device in anonymous memory (`memmap2`), for tests and simulations. The mapping
//! reserves its whole capacity up front but the kernel only backs the pages that are touched,
//! so a many-GiB test device costs only what a test writes.

use super::BlockDev;
use memmap2::MmapMut;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// An in-memory block device with a fixed capacity.
pub struct MemDev {
    map: RwLock<MmapMut>,
    len: AtomicU64,
}

impl MemDev {
    /// A device that can grow up to `capacity` bytes; it starts empty.
    pub fn new(capacity: u64) -> io::Result<MemDev> {
        let map = MmapMut::map_anon(capacity as usize)?;
        Ok(MemDev {
            map: RwLock::new(map),
            len: AtomicU64::new(0),
        })
    }

    fn capacity(&self) -> u64 {
        self.map.read().expect("MemDev lock poisoned").len() as u64
    }

    fn range(&self, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        let end = offset
            .checked_add(len as u64)
            .filter(|&e| e <= self.capacity())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOSPC))?;
        Ok(offset as usize..end as usize)
    }
}

impl BlockDev for MemDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let map = self.map.read().expect("MemDev lock poisoned");
        let cap = map.len() as u64;
        if offset >= cap {
            buf.fill(0);
            return Ok(());
        }
        let n = ((cap - offset) as usize).min(buf.len());
        buf[..n].copy_from_slice(&map[offset as usize..offset as usize + n]);
        buf[n..].fill(0);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let r = self.range(offset, buf.len())?;
        let end = r.end as u64;
        self.map.write().expect("MemDev lock poisoned")[r].copy_from_slice(buf);
        self.len.fetch_max(end, Ordering::Relaxed);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let cap = self.capacity();
        let start = offset.min(cap);
        let end = offset.saturating_add(len).min(cap);
        self.map.write().expect("MemDev lock poisoned")[start as usize..end as usize].fill(0);
        Ok(())
    }

    fn ensure_len(&self, len: u64) -> io::Result<()> {
        if len > self.capacity() {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.len.fetch_max(len, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_zero_past_end_and_round_trips() {
        let dev = MemDev::new(1 << 20).unwrap();
        let mut buf = [1u8; 16];
        dev.read_at(&mut buf, 4096).unwrap();
        assert_eq!(buf, [0u8; 16]);
        dev.write_at(b"hello", 4096).unwrap();
        dev.read_at(&mut buf[..5], 4096).unwrap();
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(dev.len(), 4101);
        dev.punch_hole(4096, 5).unwrap();
        dev.read_at(&mut buf[..5], 4096).unwrap();
        assert_eq!(&buf[..5], &[0u8; 5]);
        assert!(dev.write_at(b"x", 1 << 20).is_err());
    }
}
