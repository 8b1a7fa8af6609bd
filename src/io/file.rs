//! `FileDev`: a regular file (sparse, grows on demand) or a block device, through pread/pwrite.

use super::BlockDev;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// A pool file or block device accessed with positional reads and writes.
pub struct FileDev {
    file: File,
    is_block_device: bool,
    len: AtomicU64,
}

impl FileDev {
    /// Open an existing regular file or block device. Anything else (a FIFO, a character
    /// device such as `/dev/null`, a socket, a directory) is refused: it would block the
    /// open, read zeros or lose writes. The open itself never blocks (`O_NONBLOCK`, cleared
    /// once the file is known to be a regular file or block device).
    pub fn open(path: &Path, writable: bool) -> io::Result<FileDev> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
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
        Self::from_file(file)
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
        Self::from_file(file)
    }

    fn from_file(file: File) -> io::Result<FileDev> {
        let meta = file.metadata()?;
        let is_block_device = meta.file_type().is_block_device();
        let len = if is_block_device {
            block_device_size(&file)?
        } else {
            meta.len()
        };
        Ok(FileDev {
            file,
            is_block_device,
            len: AtomicU64::new(len),
        })
    }

    /// Reserve `len` bytes of real disk space (`posix_fallocate`), so that later writes
    /// inside them cannot fail for lack of space on the filesystem. Where the filesystem
    /// cannot reserve, glibc writes zeros instead; a block device needs nothing.
    pub fn preallocate(&self, len: u64) -> io::Result<()> {
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

    /// The underlying file (for `flock`).
    pub fn file(&self) -> &File {
        &self.file
    }
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

impl BlockDev for FileDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let n = self.file.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                // Past the end of a sparse file: zeros.
                buf[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        if self.is_block_device && end > self.len() {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.file.write_all_at(buf, offset)?;
        self.len.fetch_max(end, Ordering::Relaxed);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    /// `SEEK_DATA` from `offset`: a hole when the next data starts at or past the range's
    /// end. The filesystem counts dirty page-cache pages as data, and one without
    /// `SEEK_DATA` support reports the whole file as data (never a hole); a block device
    /// never has holes.
    fn is_hole(&self, offset: u64, len: u64) -> io::Result<bool> {
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

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        if self.is_block_device {
            // BLKDISCARD is advisory; zeroing would cost a full write, so skip it. Callers
            // never rely on a punched block device range reading zeros (see pool/data.rs).
            return Ok(());
        }
        // SAFETY: fallocate only operates on the fd owned by `self.file`; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
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

    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        // SAFETY: sync_file_range only reads its integer arguments; the fd is owned by
        // `self.file` and open for the call.
        let rc = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn ensure_len(&self, len: u64) -> io::Result<()> {
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
