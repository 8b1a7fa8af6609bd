//! `UringDev`: a pool file or block device driven through io_uring (the `io-uring` crate),
//! buffered or with O_DIRECT; and [`available`], the cached probe that says whether this
//! process may use io_uring at all.
//!
//! A device holds a few rings ([`RINGS`], each of [`QUEUE_DEPTH`] entries) behind mutexes: a
//! call takes a free one, so concurrent callers do not queue behind one another. A batch keeps
//! up to `QUEUE_DEPTH` requests in flight and refills the ring as completions arrive.
//!
//! Invariants:
//! - **no buffer is freed while the kernel uses it**: every request points into a buffer the
//!   running call borrows (the caller's, or a bounce buffer that `io/direct.rs` owns for the
//!   call); the call's request table tracks each submitted entry by its `user_data`, and the
//!   call returns, or unwinds, only once every submitted entry has completed (a drop guard
//!   waits for them). A ring is therefore empty whenever its mutex is free;
//! - short reads and writes are resumed where they stopped, a read past the end of the file
//!   reads zeros, `EAGAIN`/`EINTR` completions are resubmitted, and any other error fails
//!   the op (the batch returns the first such error once the rest has drained);
//! - `flush` is one `IORING_OP_FSYNC` with `IORING_FSYNC_DATASYNC` (an `fdatasync`);
//! - a batch of one op through the page cache, or of one O_DIRECT op while every ring is
//!   busy, is a plain pread/pwrite (see `raw_batch`).
//!
//! If `io_uring_enter` itself fails for a reason other than `EINTR`/`EAGAIN`/`EBUSY` while
//! requests are in flight (it cannot, short of a kernel bug: the ring and its fd belong to
//! this device), the process aborts: returning would let the kernel write into freed memory.

use super::direct::{self, RawIo, Step};
use super::file::FileCore;
use super::IoOp;
use io_uring::{opcode, squeue, types, IoUring};
use std::collections::VecDeque;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};

/// Entries of each ring: requests one call keeps in flight at once.
pub const QUEUE_DEPTH: u32 = 64;
/// Rings per device: calls that may run at the same time without waiting for a ring.
pub const RINGS: usize = 4;
/// The most bytes one submission asks for (the rest follows as a short transfer would).
const MAX_CHUNK: usize = 1 << 30;
const FLUSH_TAG: u64 = u64::MAX;

static PROBE: OnceLock<Result<(), String>> = OnceLock::new();

/// Whether this process can use io_uring (set up a ring, read, write, fsync, submit): tried
/// once, then cached. The error says why not, e.g. `EPERM` under `kernel.io_uring_disabled`
/// or a container's seccomp filter, `ENOSYS` on a kernel without io_uring.
pub fn available() -> Result<(), String> {
    PROBE.get_or_init(probe).clone()
}

fn probe() -> Result<(), String> {
    let mut ring = IoUring::new(4).map_err(|e| explain_setup_error(&e, disabled_setting()))?;
    let mut ops = io_uring::Probe::new();
    ring.submitter().register_probe(&mut ops).map_err(|e| {
        format!(
            "the kernel's io_uring cannot list its operations ({e}); Linux 5.6 or newer is needed"
        )
    })?;
    for (code, name) in [
        (opcode::Read::CODE, "READ"),
        (opcode::Write::CODE, "WRITE"),
        (opcode::Fsync::CODE, "FSYNC"),
    ] {
        if !ops.is_supported(code) {
            return Err(format!(
                "the kernel's io_uring lacks IORING_OP_{name}; Linux 5.6 or newer is needed"
            ));
        }
    }
    let nop = opcode::Nop::new().build().user_data(7);
    // SAFETY: a NOP refers to no memory, so nothing needs to outlive it.
    unsafe { ring.submission().push(&nop) }
        .map_err(|_| "io_uring: a new ring has no room for one entry".to_string())?;
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(format!("io_uring_enter failed: {e}")),
        }
    }
    let done = ring
        .completion()
        .next()
        .map(|c| (c.user_data(), c.result()));
    match done {
        Some((7, r)) if r >= 0 => Ok(()),
        Some((_, r)) => Err(format!(
            "io_uring: a NOP completed with {}",
            io::Error::from_raw_os_error(-r)
        )),
        None => Err("io_uring: a NOP never completed".to_string()),
    }
}

/// `/proc/sys/kernel/io_uring_disabled`, where the kernel has it.
fn disabled_setting() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok()
}

/// Why `io_uring_setup` failed with `e`, in words; `disabled` is the value of
/// `kernel.io_uring_disabled` when known.
fn explain_setup_error(e: &io::Error, disabled: Option<String>) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => match disabled.as_deref().map(str::trim) {
            Some("2") => "io_uring_setup: EPERM: kernel.io_uring_disabled = 2 (io_uring is off \
                          for every process)"
                .to_string(),
            Some("1") => "io_uring_setup: EPERM: kernel.io_uring_disabled = 1 (only privileged \
                          processes and the kernel.io_uring_group may use it)"
                .to_string(),
            _ => "io_uring_setup: EPERM: a seccomp filter or security policy (a container's, \
                  say) denies io_uring"
                .to_string(),
        },
        Some(libc::ENOSYS) => "io_uring_setup: ENOSYS: the kernel has no io_uring, or a seccomp \
                               filter (a container's, say) hides it"
            .to_string(),
        Some(libc::ENOMEM) => "io_uring_setup: ENOMEM: the locked-memory limit (ulimit -l) is too \
                               low for a ring"
            .to_string(),
        _ => format!("io_uring_setup failed: {e}"),
    }
}

/// A pool file or block device accessed through io_uring.
pub struct UringDev {
    core: FileCore,
    rings: Box<[Mutex<IoUring>]>,
    next: AtomicUsize,
}

impl UringDev {
    /// Open an existing file or block device, with O_DIRECT when `direct` (unaligned requests
    /// still work, through aligned bounce buffers), and set up its rings.
    pub fn open(path: &Path, writable: bool, direct: bool) -> io::Result<UringDev> {
        let core = FileCore::open(path, writable, direct)?;
        let rings = (0..RINGS)
            .map(|_| IoUring::new(QUEUE_DEPTH).map(Mutex::new))
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| {
                let why = explain_setup_error(&e, disabled_setting());
                io::Error::new(e.kind(), why)
            })?;
        Ok(UringDev {
            core,
            rings: rings.into_boxed_slice(),
            next: AtomicUsize::new(0),
        })
    }

    /// True when opened with O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.core.is_direct()
    }

    /// A free ring if there is one. A ring is empty whenever its lock is free (even after a
    /// panic: the drop guard drained it), so a poisoned lock is taken.
    fn free_ring(&self) -> Option<MutexGuard<'_, IoUring>> {
        let n = self.rings.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n).find_map(|k| match self.rings[(start + k) % n].try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        })
    }

    /// A free ring if there is one, else wait for one.
    fn ring(&self) -> MutexGuard<'_, IoUring> {
        self.free_ring().unwrap_or_else(|| {
            let start = self.next.load(Ordering::Relaxed) % self.rings.len();
            self.rings[start]
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        })
    }

    fn fd(&self) -> RawFd {
        self.core.file().as_raw_fd()
    }
}

impl RawIo for UringDev {
    fn core(&self) -> &FileCore {
        &self.core
    }

    fn raw_batch(&self, ops: &mut [IoOp<'_>]) -> Result<(), (usize, io::Error)> {
        if ops.iter().all(|op| op.is_empty()) {
            return Ok(());
        }
        // One op through the page cache: a plain pread/pwrite in this thread. io_uring hands
        // a buffered write to an io-wq worker (ext4), one more thread hop: 4 KiB random
        // writes through `serve` ran at 46-58k IOPS through the ring and 57-74k without it,
        // while a long request's pieces (one batch, one submission) are faster through it
        // (1M writes qd8: 1,768-1,982 vs 1,356-1,536 IOPS).
        //
        // One O_DIRECT op when every ring is busy: the same, rather than queue behind the
        // rings. A blocking pread/pwrite in this thread is as much in flight as one ring
        // entry, and callers that are threads of their own (the server's workers, up to 16
        // per connection) would otherwise get no more requests to the disk than there are
        // rings (4k random reads at queue depth 16 had four in flight).
        let direct = self.core.is_direct();
        let ring = match ops {
            [op] if !direct => {
                return super::file::transfer(self.core.file(), false, op).map_err(|e| (0, e))
            }
            [op] => match self.free_ring() {
                Some(r) => r,
                None => {
                    return super::file::transfer(self.core.file(), true, op).map_err(|e| (0, e))
                }
            },
            _ => self.ring(),
        };
        let mut ring = ring;
        submit_all(&mut ring, self.fd(), direct, ops)
    }

    fn raw_flush(&self) -> io::Result<()> {
        let mut ring = self.ring();
        let fd = self.fd();
        let mut flight = Flight::new(&mut ring);
        let mut done = Vec::with_capacity(1);
        loop {
            let e = opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(FLUSH_TAG);
            // SAFETY: an fsync entry refers to no memory.
            unsafe { flight.push(&e) }?;
            done.clear();
            flight.drain(&mut done);
            match done.iter().find(|c| c.0 == FLUSH_TAG).map(|c| c.1) {
                Some(r) if r >= 0 => return Ok(()),
                Some(r) if -r == libc::EINTR || -r == libc::EAGAIN => continue,
                Some(r) => return Err(io::Error::from_raw_os_error(-r)),
                None => return Err(io::Error::other("io_uring: the fsync never completed")),
            }
        }
    }
}

super::direct::block_dev_via_raw_io!(UringDev);

/// The entries of one ring submitted and not yet reaped. Dropping it waits for all of them,
/// so no exit from a call, unwinding included, leaves the kernel a buffer that is gone.
struct Flight<'r> {
    ring: &'r mut IoUring,
    count: usize,
}

impl<'r> Flight<'r> {
    fn new(ring: &'r mut IoUring) -> Flight<'r> {
        Flight { ring, count: 0 }
    }

    /// Queue `e` (submitted at the next [`Flight::wait`]).
    ///
    /// # Safety
    /// Every buffer `e` points to must stay valid, and untouched by anything else, until its
    /// completion has been reaped.
    unsafe fn push(&mut self, e: &squeue::Entry) -> io::Result<()> {
        // SAFETY: the caller keeps `e`'s buffers valid until its completion is reaped.
        if unsafe { self.ring.submission().push(e) }.is_err() {
            // The queue is full of entries not yet handed over: hand them over first.
            self.ring.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(e) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        self.count += 1;
        Ok(())
    }

    /// Submit what is queued and wait for at least one completion.
    fn wait(&mut self) {
        loop {
            let err = match self.ring.submit_and_wait(1) {
                Ok(_) => return,
                Err(e) => e,
            };
            match err.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN | libc::EBUSY) => {
                    if !self.ring.completion().is_empty() {
                        return;
                    }
                    std::thread::yield_now();
                }
                _ => {
                    eprintln!(
                        "thinpool: io_uring_enter failed with {} requests in flight ({err}); \
                         aborting, since the kernel may still write into their buffers",
                        self.count
                    );
                    std::process::abort();
                }
            }
        }
    }

    /// Move the available completions, as `(user_data, result)`, into `out`.
    fn reap(&mut self, out: &mut Vec<(u64, i32)>) {
        for c in self.ring.completion() {
            out.push((c.user_data(), c.result()));
            self.count = self.count.saturating_sub(1);
        }
    }

    /// Wait for every entry in flight; their completions into `out`.
    fn drain(&mut self, out: &mut Vec<(u64, i32)>) {
        while self.count > 0 {
            self.wait();
            self.reap(out);
        }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut sink = Vec::new();
        self.drain(&mut sink);
    }
}

/// One op of a running batch: where its buffer is and how far it got. The pointer is
/// derived from the op's borrow, which lasts for the whole [`submit_all`] call.
struct Slot {
    ptr: *mut u8,
    len: usize,
    offset: u64,
    write: bool,
    done: usize,
}

/// Run `ops` on `ring` with up to [`QUEUE_DEPTH`] in flight; see the module invariants.
fn submit_all(
    ring: &mut IoUring,
    fd: RawFd,
    direct: bool,
    ops: &mut [IoOp<'_>],
) -> Result<(), (usize, io::Error)> {
    let mut table: Vec<Slot> = ops
        .iter_mut()
        .map(|op| match op {
            IoOp::Read { buf, offset } => Slot {
                ptr: buf.as_mut_ptr(),
                len: buf.len(),
                offset: *offset,
                write: false,
                done: 0,
            },
            IoOp::Write { buf, offset } => Slot {
                ptr: buf.as_ptr().cast_mut(),
                len: buf.len(),
                offset: *offset,
                write: true,
                done: 0,
            },
        })
        .collect();
    let mut queue: VecDeque<usize> = (0..table.len()).filter(|&i| table[i].len > 0).collect();
    let mut failed: Option<(usize, io::Error)> = None;
    let mut completions = Vec::with_capacity(QUEUE_DEPTH as usize);
    let mut flight = Flight::new(ring);
    loop {
        while failed.is_none() && flight.count < QUEUE_DEPTH as usize {
            let Some(i) = queue.pop_front() else { break };
            let s = &table[i];
            let n = (s.len - s.done).min(MAX_CHUNK) as u32;
            // SAFETY: `done < len`, so the pointer stays inside the op's buffer.
            let p = unsafe { s.ptr.add(s.done) };
            let at = s.offset + s.done as u64;
            let e = if s.write {
                opcode::Write::new(types::Fd(fd), p, n).offset(at).build()
            } else {
                opcode::Read::new(types::Fd(fd), p, n).offset(at).build()
            }
            .user_data(i as u64);
            // SAFETY: the buffer is borrowed from `ops` for this whole call and nothing else
            // touches it meanwhile; `flight` waits for every pushed entry before this function
            // returns or unwinds.
            if let Err(err) = unsafe { flight.push(&e) } {
                failed = Some((i, err));
            }
        }
        if flight.count == 0 {
            break;
        }
        flight.wait();
        completions.clear();
        flight.reap(&mut completions);
        for &(tag, res) in &completions {
            let i = tag as usize;
            let Some(s) = table.get_mut(i) else { continue };
            if res < 0 {
                let errno = -res;
                if errno == libc::EINTR || errno == libc::EAGAIN {
                    queue.push_front(i);
                } else if failed.is_none() {
                    failed = Some((i, io::Error::from_raw_os_error(errno)));
                }
                continue;
            }
            match direct::step(direct, s.write, s.done, res as usize, s.len) {
                Step::Complete => {}
                Step::Resume(d) => {
                    s.done = d;
                    queue.push_front(i);
                }
                Step::ZeroFrom(d) if !s.write => {
                    // SAFETY: the op's only entry just completed, so nothing else touches its
                    // buffer, a read buffer borrowed mutably from `ops`; `d < len`.
                    unsafe { std::ptr::write_bytes(s.ptr.add(d), 0, s.len - d) };
                }
                Step::ZeroFrom(_) | Step::Stuck => {
                    if failed.is_none() {
                        failed = Some((i, direct::stuck()));
                    }
                }
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_errors_say_why() {
        let eperm = io::Error::from_raw_os_error(libc::EPERM);
        let m = explain_setup_error(&eperm, Some("2\n".into()));
        assert!(m.contains("kernel.io_uring_disabled = 2"), "{m}");
        let m = explain_setup_error(&eperm, Some("1\n".into()));
        assert!(m.contains("kernel.io_uring_disabled = 1"), "{m}");
        let m = explain_setup_error(&eperm, Some("0\n".into()));
        assert!(m.contains("seccomp"), "{m}");
        let m = explain_setup_error(&io::Error::from_raw_os_error(libc::ENOSYS), None);
        assert!(m.contains("ENOSYS"), "{m}");
    }

    #[test]
    fn probe_is_cached_and_consistent() {
        let a = available();
        assert_eq!(a, available());
        if let Err(why) = a {
            assert!(!why.is_empty());
        }
    }
}
