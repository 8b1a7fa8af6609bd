//! Test support: a device that runs a test's hooks before it passes each read, write and
//! flush on to the device it wraps (to fail writes, hold a flush, or gather reads). The
//! hooks' state is reached through the device itself (`Deref`). The advisory operations
//! (`is_hole`, `allocate`, `start_writeback`) keep the trait's defaults, and batches go
//! through `read_at`/`write_at`, so every request meets the hooks.

use super::BlockDev;
use std::io;

/// What a test adds to a device. Each hook runs before the operation and may fail it.
pub trait Hooks: Send + Sync {
    fn before_read(&self, _offset: u64, _len: usize) -> io::Result<()> {
        Ok(())
    }
    fn before_write(&self, _offset: u64, _len: usize) -> io::Result<()> {
        Ok(())
    }
    fn before_flush(&self) -> io::Result<()> {
        Ok(())
    }
}

/// `inner` with `hooks` in front of it.
pub struct Hooked<H> {
    inner: Box<dyn BlockDev>,
    hooks: H,
}

impl<H: Hooks> Hooked<H> {
    pub fn new(inner: impl BlockDev + 'static, hooks: H) -> Hooked<H> {
        Hooked {
            inner: Box::new(inner),
            hooks,
        }
    }
}

impl<H> std::ops::Deref for Hooked<H> {
    type Target = H;
    fn deref(&self) -> &H {
        &self.hooks
    }
}

impl<H: Hooks> BlockDev for Hooked<H> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.hooks.before_read(offset, buf.len())?;
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.hooks.before_write(offset, buf.len())?;
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.hooks.before_flush()?;
        self.inner.flush()
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.punch_hole(offset, len)
    }
    fn ensure_len(&self, len: u64) -> io::Result<()> {
        self.inner.ensure_len(len)
    }
}
