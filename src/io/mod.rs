//! Block devices: the bottom layer. Everything above does its I/O through [`BlockDev`], so every
//! layer runs unchanged on a real file ([`FileDev`]: pread/pwrite; [`UringDev`]: io_uring) or on
//! anonymous memory ([`MemDev`]). [`open_data_dev`] opens a file with the engine asked for
//! ([`Engine`]), falling back from io_uring to pread/pwrite where the kernel refuses it.
//!
//! Invariants every implementation keeps:
//! - `read_at` past the current end reads zeros (pool files are sparse and grow on demand);
//! - `write_at` past the end grows the device (files) or fails with `ENOSPC` (fixed devices);
//! - `flush` returns only when every completed write is durable; an error from it is final
//!   (the caller fail-stops; it never retries and acknowledges);
//! - `submit_batch` returns (or unwinds) only when no op of the batch is in flight: the kernel
//!   never touches a buffer the caller got back.

mod aligned;
mod direct;
mod engine;
mod file;
#[doc(hidden)]
pub mod hooked;
pub mod lock;
mod mem;
mod op;
pub mod sim;
pub mod sys;
pub mod uring;

pub use aligned::{AlignedBuf, ALIGN};
pub use engine::{open_data_dev, Engine};
pub use file::FileDev;
pub use mem::MemDev;
pub use op::{os_error, IoOp, OpError};
pub use sim::{SimDev, SimGroup};
pub use uring::UringDev;

/// Fill `buf` from a stream as far as it goes, retrying interrupted reads: the bytes read,
/// short only at the end of the stream (import, write and import-diff read their input so).
pub fn read_full(r: &mut dyn io::Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

use std::io;

/// A byte-addressed device with sparse-file semantics.
pub trait BlockDev: Send + Sync {
    /// Fill `buf` from byte `offset`; bytes past the end read as zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write all of `buf` at byte `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Run a batch of reads and writes, concurrently where the engine can ([`UringDev`]:
    /// at queue depth), in no defined order. On failure, the error of the first op that
    /// failed, as an [`OpError`] naming it (the other ops may or may not have run). The
    /// default runs them one by one through `read_at`/`write_at`.
    fn submit_batch(&self, ops: &mut [IoOp<'_>]) -> io::Result<()> {
        for i in 0..ops.len() {
            let r = match &mut ops[i] {
                IoOp::Read { buf, offset } => self.read_at(buf, *offset),
                IoOp::Write { buf, offset } => self.write_at(buf, *offset),
            };
            r.map_err(|e| op::batch_error(ops, i, e))?;
        }
        Ok(())
    }
    /// Make every completed write durable (`fdatasync`).
    fn flush(&self) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> u64;
    /// True when the device holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Deallocate a byte range; it reads as zeros afterwards.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
    /// True only when `[offset, offset+len)` is known to read as zeros because nothing is
    /// stored there (a hole of a sparse file: never written, or punched; or past its end);
    /// false when unknown. Lets a partial write into a fresh block skip writing the zeros
    /// around it.
    fn is_hole(&self, _offset: u64, _len: u64) -> io::Result<bool> {
        Ok(false)
    }
    /// Give `[offset, offset+len)` real storage that still reads as zeros (`fallocate`
    /// without zeroing: unwritten extents) where later writes into it gain from it: an
    /// O_DIRECT file, whose direct writes into a hole serialize on the file (see
    /// `pool/extents.rs`). Never changes the length or any byte read. Advisory: the
    /// default, and every device that gains nothing, does nothing.
    fn allocate(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// Start writing back `[offset, offset+len)` to stable storage without waiting for it
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so the next `flush` finds little left to
    /// do. Advisory: durability still comes only from `flush`.
    fn start_writeback(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// Tell the device `[offset, offset+len)` will be read soon, so it can start reading it
    /// into the page cache (`posix_fadvise(POSIX_FADV_WILLNEED)`; NBD_CMD_CACHE). Advisory:
    /// the default, and an O_DIRECT file (no page cache to fill), does nothing.
    fn will_need(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// Ensure the device is at least `len` bytes long (files grow sparsely).
    fn ensure_len(&self, len: u64) -> io::Result<()>;
}
