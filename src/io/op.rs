//! `IoOp`: one read or write of a batch ([`super::BlockDev::submit_batch`]), and `OpError`,
//! the error of a batch, which names the failed op.
//!
//! Invariants: an op borrows its buffer for the whole call that runs it, and every
//! implementation returns only once no op of the batch is in flight any more (the kernel
//! never touches a buffer after `submit_batch` returned or unwound).

use std::fmt;
use std::io;

/// One request of a batch: fill `buf` from `offset`, or write `buf` at `offset`.
#[derive(Debug)]
pub enum IoOp<'a> {
    Read { buf: &'a mut [u8], offset: u64 },
    Write { buf: &'a [u8], offset: u64 },
}

impl<'a> IoOp<'a> {
    pub fn read(buf: &'a mut [u8], offset: u64) -> IoOp<'a> {
        IoOp::Read { buf, offset }
    }

    pub fn write(buf: &'a [u8], offset: u64) -> IoOp<'a> {
        IoOp::Write { buf, offset }
    }

    pub fn offset(&self) -> u64 {
        match self {
            IoOp::Read { offset, .. } | IoOp::Write { offset, .. } => *offset,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            IoOp::Read { buf, .. } => buf.len(),
            IoOp::Write { buf, .. } => buf.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_write(&self) -> bool {
        matches!(self, IoOp::Write { .. })
    }

    /// Address of the buffer's first byte.
    pub(crate) fn addr(&self) -> usize {
        match self {
            IoOp::Read { buf, .. } => buf.as_ptr() as usize,
            IoOp::Write { buf, .. } => buf.as_ptr() as usize,
        }
    }

    /// The same request, borrowing this one's buffer for a shorter time.
    pub(crate) fn reborrow(&mut self) -> IoOp<'_> {
        match self {
            IoOp::Read { buf, offset } => IoOp::Read {
                buf,
                offset: *offset,
            },
            IoOp::Write { buf, offset } => IoOp::Write {
                buf,
                offset: *offset,
            },
        }
    }

    /// One past the last byte; EINVAL when that does not fit in a `u64`.
    pub(crate) fn end(&self) -> io::Result<u64> {
        self.offset()
            .checked_add(self.len() as u64)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
    }
}

/// Why a batch failed: the first op that failed and its error. Carried inside the
/// `io::Error` that `submit_batch` returns (same [`io::ErrorKind`] as `source`); see
/// [`os_error`] for the OS error code.
#[derive(Debug)]
pub struct OpError {
    /// Index of the op in the batch.
    pub index: usize,
    pub write: bool,
    pub offset: u64,
    pub len: usize,
    pub source: io::Error,
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.write { "write" } else { "read" };
        write!(
            f,
            "{what} of {} bytes at offset {}: {}",
            self.len, self.offset, self.source
        )
    }
}

impl std::error::Error for OpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The `io::Error` of a batch whose op `index` failed with `source`.
pub(crate) fn batch_error(ops: &[IoOp<'_>], index: usize, source: io::Error) -> io::Error {
    let (write, offset, len) = ops
        .get(index)
        .map_or((false, 0, 0), |op| (op.is_write(), op.offset(), op.len()));
    let kind = source.kind();
    io::Error::new(
        kind,
        OpError {
            index,
            write,
            offset,
            len,
            source,
        },
    )
}

/// The OS error code of `e`, looking through an [`OpError`] (ENOSPC from a batch, say).
pub fn os_error(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()?
            .downcast_ref::<OpError>()
            .and_then(|o| o.source.raw_os_error())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_error_names_the_op_and_keeps_the_code() {
        let data = [1u8; 10];
        let mut out = [0u8; 4];
        let ops = [IoOp::read(&mut out, 0), IoOp::write(&data, 1 << 40)];
        let e = batch_error(&ops, 1, io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(os_error(&e), Some(libc::ENOSPC));
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        let msg = e.to_string();
        assert!(
            msg.contains("write of 10 bytes at offset 1099511627776"),
            "{msg}"
        );
        let inner = e.get_ref().unwrap().downcast_ref::<OpError>().unwrap();
        assert_eq!((inner.index, inner.write), (1, true));
    }

    #[test]
    fn end_overflow_is_einval() {
        let data = [0u8; 2];
        let op = IoOp::write(&data, u64::MAX);
        assert_eq!(op.end().unwrap_err().raw_os_error(), Some(libc::EINVAL));
    }
}
