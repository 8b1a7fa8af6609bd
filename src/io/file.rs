//! `FileDev`: a regular file (sparse, grows on demand) or a block device, through pread/pwrite;
//! optionally opened with O_DIRECT (unaligned requests then go through the bounce and
//! read-modify-write path of `io/direct.rs`).
//!
//! `FileCore` is the part every file-backed engine shares (this one and `UringDev`): opening,
//! the tracked length, range checks, `punch_hole`, `is_hole`, `ensure_len`.

use super::direct::{self, RawIo, Step, Stripes};
use super::IoOp;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// An open pool file or block device and what every engine needs to know about it.
pub(crate) struct FileCore {
    file: File,
    is_block_device: bool,
    len: AtomicU64,
    /// Present when the file was opened with O_DIRECT.
    stripes: Option<Stripes>,
}

impl FileCore {
    /// Open an existing regular file or block device, with O_DIRECT when `direct`. A
    /// filesystem that refuses O_DIRECT (EINVAL) gets an error that says so. Anything but a
    /// regular file or block device (a FIFO, a character device such as `/dev/null`, a
    /// socket, a directory) is refused: it would block the open, read zeros or lose writes.
    /// The open itself never blocks (`O_NONBLOCK`, cleared once the type is known).
    pub(crate) fn open(path: &Path, writable: bool, direct: bool) -> io::Result<FileCore> {
        let mut o = OpenOptions::new();
        o.read(true).write(writable);
        let mut flags = libc::O_NONBLOCK;
        if direct {
            flags |= libc::O_DIRECT;
        }
        o.custom_flags(flags);
        let file = o.open(path).map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL) if direct => direct_refused(path),
            _ => e,
        })?;
        let ft = file.metadata()?.file_type();
        if !(ft.is_file() || ft.is_block_device()) {
            let what = if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_char_device() {
                "a character device"
            } else if ft.is_socket() {
                "a socket"
            } else if ft.is_dir() {
                "a directory"
            } else {
                "a special file"
            };
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is {what}, not a regular file or block device",
                    path.display()
                ),
            ));
        }
        super::sys::clear_nonblock(&file)?;
        Self::from_file(file, direct)
    }

    fn from_file(file: File, direct: bool) -> io::Result<FileCore> {
        let meta = file.metadata()?;
        let is_block_device = meta.file_type().is_block_device();
        let len = if is_block_device {
            block_device_size(&file)?
        } else {
            meta.len()
        };
        Ok(FileCore {
            file,
            is_block_device,
            len: AtomicU64::new(len),
            stripes: direct.then(Stripes::new),
        })
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    pub(crate) fn is_direct(&self) -> bool {
        self.stripes.is_some()
    }

    /// The stripe locks of an O_DIRECT file; `None` when buffered.
    pub(crate) fn stripes(&self) -> Option<&Stripes> {
        self.stripes.as_ref()
    }

    /// A write ending at `end` is allowed: a block device does not grow.
    pub(crate) fn check_write_end(&self, end: u64) -> io::Result<()> {
        if self.is_block_device && end > self.len() {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    /// A write up to `end` completed.
    pub(crate) fn wrote_to(&self, end: u64) {
        self.len.fetch_max(end, Ordering::Relaxed);
    }

    /// After a failed batch (some writes may have landed): the file's own length.
    pub(crate) fn refresh_len(&self) {
        if self.is_block_device {
            return;
        }
        if let Ok(m) = self.file.metadata() {
            self.len.fetch_max(m.len(), Ordering::Relaxed);
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    /// See [`FileDev::preallocate`].
    fn preallocate(&self, len: u64) -> io::Result<()> {
        if self.is_block_device || len == 0 {
            return Ok(());
        }
        let len =
            libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        // SAFETY: posix_fallocate only reads its integer arguments; the fd stays open for
        // the duration of the call.
        let rc = unsafe { libc::posix_fallocate(self.file.as_raw_fd(), 0, len) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        self.len.fetch_max(len as u64, Ordering::Relaxed);
        Ok(())
    }

    /// `SEEK_DATA` from `offset`: a hole when the next data starts at or past the range's
    /// end. The filesystem counts dirty page-cache pages as data, and one without
    /// `SEEK_DATA` support reports the whole file as data (never a hole); a block device
    /// never has holes.
    pub(crate) fn is_hole(&self, offset: u64, len: u64) -> io::Result<bool> {
        if self.is_block_device {
            return Ok(false);
        }
        Ok(
            match super::sys::seek_data_or_hole(&self.file, offset, true) {
                Ok(None) => true,
                Ok(Some(d)) => d >= offset.saturating_add(len),
                Err(_) => false,
            },
        )
    }

    pub(crate) fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        if self.is_block_device {
            // BLKDISCARD is advisory; zeroing would cost a full write, so skip it. Callers
            // never rely on a punched block device range reading zeros (see pool/data.rs).
            return Ok(());
        }
        let (off, n) = match (libc::off_t::try_from(offset), libc::off_t::try_from(len)) {
            (Ok(o), Ok(n)) => (o, n),
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        // SAFETY: fallocate only operates on the fd owned by `self.file`; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                n,
            )
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            // Filesystems without hole punching: the range keeps its bytes; callers write
            // zeros explicitly where zeros matter.
            if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
                return Ok(());
            }
            return Err(err);
        }
        Ok(())
    }

    /// See `BlockDev::allocate`: `fallocate(FALLOC_FL_KEEP_SIZE)`, for O_DIRECT files only
    /// (buffered writes allocate at writeback, off the request path).
    pub(crate) fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 || self.is_block_device || !self.is_direct() {
            return Ok(());
        }
        let (off, n) = match (libc::off_t::try_from(offset), libc::off_t::try_from(len)) {
            (Ok(o), Ok(n)) => (o, n),
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        // SAFETY: fallocate only operates on the fd owned by `self.file`; no memory is passed.
        let rc =
            unsafe { libc::fallocate(self.file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, off, n) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// See `BlockDev::will_need`: `posix_fadvise(POSIX_FADV_WILLNEED)`.
    pub(crate) fn will_need(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 || self.is_direct() {
            return Ok(());
        }
        let (off, n) = file_range(offset, len)?;
        // SAFETY: posix_fadvise only reads its integer arguments; the fd is owned by
        // `self.file` and open for the call.
        let rc = unsafe {
            libc::posix_fadvise(self.file.as_raw_fd(), off, n, libc::POSIX_FADV_WILLNEED)
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }

    /// See `BlockDev::start_writeback`: `sync_file_range(SYNC_FILE_RANGE_WRITE)`.
    pub(crate) fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 || self.is_direct() {
            return Ok(());
        }
        let (off, n) = file_range(offset, len)?;
        // SAFETY: sync_file_range only reads its integer arguments; the fd is owned by
        // `self.file` and open for the call.
        let rc = unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE)
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(crate) fn ensure_len(&self, len: u64) -> io::Result<()> {
        if len <= self.len() {
            return Ok(());
        }
        if self.is_block_device {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.file.set_len(len)?;
        self.len.fetch_max(len, Ordering::Relaxed);
        Ok(())
    }
}

/// The error for a filesystem that refuses O_DIRECT (its open fails with EINVAL).
fn direct_refused(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{}: the filesystem does not support O_DIRECT (direct I/O), as tmpfs on older \
             kernels and some FUSE or overlay filesystems do not: open the file without direct \
             I/O, or move it to a disk filesystem",
            path.display()
        ),
    )
}

fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    // SAFETY: the ioctl writes one u64 into `size`, which outlives the call; the fd is valid
    // for the lifetime of `file`.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// A pool file or block device accessed with positional reads and writes.
pub struct FileDev {
    core: FileCore,
}

impl FileDev {
    /// Open an existing file or block device.
    pub fn open(path: &Path, writable: bool) -> io::Result<FileDev> {
        Self::open_with(path, writable, false)
    }

    /// Open an existing file or block device, with O_DIRECT when `direct` (page cache
    /// bypassed; unaligned requests still work, through aligned bounce buffers).
    pub fn open_with(path: &Path, writable: bool, direct: bool) -> io::Result<FileDev> {
        Ok(FileDev {
            core: FileCore::open(path, writable, direct)?,
        })
    }

    /// Create a new regular file, readable and writable by its owner only (mode 0600: a
    /// pool's files hold every volume's data); fails if it exists.
    pub fn create(path: &Path) -> io::Result<FileDev> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        Ok(FileDev {
            core: FileCore::from_file(file, false)?,
        })
    }

    /// Reserve `len` bytes of real disk space (`posix_fallocate`), so that later writes
    /// inside them cannot fail for lack of space on the filesystem. Where the filesystem
    /// cannot reserve, glibc writes zeros instead; a block device needs nothing.
    pub fn preallocate(&self, len: u64) -> io::Result<()> {
        self.core.preallocate(len)
    }

    /// The underlying file (for `flock`).
    pub fn file(&self) -> &File {
        self.core.file()
    }

    /// True when opened with O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.core.is_direct()
    }
}

/// pread/pwrite one op to completion (EINTR retried, short transfers resumed).
pub(super) fn transfer(file: &File, direct: bool, op: &mut IoOp<'_>) -> io::Result<()> {
    let len = op.len();
    let mut done = 0;
    while done < len {
        let r = match op {
            IoOp::Read { buf, offset } => file.read_at(&mut buf[done..], *offset + done as u64),
            IoOp::Write { buf, offset } => file.write_at(&buf[done..], *offset + done as u64),
        };
        let n = match r {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        match direct::step(direct, op.is_write(), done, n, len) {
            Step::Complete => break,
            Step::Resume(d) => done = d,
            Step::ZeroFrom(d) => {
                if let IoOp::Read { buf, .. } = op {
                    buf[d..].fill(0);
                }
                break;
            }
            Step::Stuck => return Err(direct::stuck()),
        }
    }
    Ok(())
}

impl RawIo for FileDev {
    fn core(&self) -> &FileCore {
        &self.core
    }

    fn raw_batch(&self, ops: &mut [IoOp<'_>]) -> Result<(), (usize, io::Error)> {
        let direct = self.core.is_direct();
        for (i, op) in ops.iter_mut().enumerate() {
            transfer(&self.core.file, direct, op).map_err(|e| (i, e))?;
        }
        Ok(())
    }

    fn raw_flush(&self) -> io::Result<()> {
        self.core.file.sync_data()
    }
}

direct::block_dev_via_raw_io!(FileDev);

/// A byte range as the `off64_t` pair the range system calls take (EINVAL past their reach).
fn file_range(offset: u64, len: u64) -> io::Result<(libc::off64_t, libc::off64_t)> {
    match (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) {
        (Ok(o), Ok(n)) => Ok((o, n)),
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_o_direct_says_so() {
        let e = direct_refused(Path::new("/mnt/x/data"));
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let m = e.to_string();
        assert!(
            m.starts_with("/mnt/x/data: the filesystem does not support O_DIRECT"),
            "{m}"
        );
        assert!(m.contains("without direct I/O"), "{m}");
    }
}
