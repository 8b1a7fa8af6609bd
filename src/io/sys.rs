//! The few operating-system calls std does not wrap, kept here so that every `unsafe` block of
//! the crate lives in `io/` (docs/style.md, habit 5): `SEEK_DATA`/`SEEK_HOLE`, `fstatvfs`, and
//! SIGINT/SIGTERM handling for long-running commands, and descriptors a child process
//! inherits.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

/// Where the next data (`SEEK_DATA`) or hole (`SEEK_HOLE`) starts at or after `from`;
/// `None` past the last data (ENXIO).
pub fn seek_data_or_hole(f: &File, from: u64, data: bool) -> io::Result<Option<u64>> {
    let whence = if data {
        libc::SEEK_DATA
    } else {
        libc::SEEK_HOLE
    };
    // SAFETY: lseek only reads its integer arguments; the fd stays open for the call.
    let r = unsafe { libc::lseek(f.as_raw_fd(), from as libc::off_t, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

/// Bytes an unprivileged writer may still allocate on the filesystem holding `f`
/// (`fstatvfs`: available blocks × fragment size).
pub fn fs_available(f: &File) -> io::Result<u64> {
    // SAFETY: statvfs is plain old data; all zeros is a valid value of it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatvfs writes only into the struct we pass; the fd stays open for the call.
    let rc = unsafe { libc::fstatvfs(f.as_raw_fd(), &mut st) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Clear `O_NONBLOCK` on an open file (set only so that opening a FIFO could not block).
pub fn clear_nonblock(f: &File) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFL/F_SETFL only reads and writes the fd's status flags; the
    // fd stays open for both calls.
    let rc = unsafe {
        let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        if flags < 0 {
            flags
        } else {
            libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK)
        }
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Make the allocator serve every allocation of 4 MiB or more with its own mapping, which
/// `free` unmaps at once (glibc's default threshold grows with use, after which freed
/// request buffers stay in the heap). Other allocators ignore it.
pub fn return_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes an allocator tunable; no memory is passed.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

/// Give free heap memory back to the system (after a connection ended).
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory held by the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_sig: libc::c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        // Second signal: the user insists. Writes since the last commit are lost, which
        // the crash semantics allow. `_exit` is async-signal-safe.
        // SAFETY: `_exit` ends the process without running any Rust code.
        unsafe { libc::_exit(130) };
    }
}

/// Route SIGINT and SIGTERM to a flag ([`stop_requested`]); a second signal exits at once.
pub fn install_stop_signals() -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `sa` is zero-initialised then filled in; the handler only touches an
        // atomic and `_exit`, both async-signal-safe.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// True once SIGINT or SIGTERM arrived (after [`install_stop_signals`]).
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Let the process `cmd` starts inherit `fds` (normally closed at exec). A helper such
/// as `rbd` given the pool's lock descriptors keeps the pool locked until it exits, even
/// when thinpool is killed first: a repeated command then waits for it instead of racing
/// an operation it is still finishing on the cluster (killing it instead would cut that
/// operation in half, and leave Ceph locks that expire only after 30 s).
pub fn inherit_fds(cmd: &mut Command, fds: Vec<std::os::unix::io::RawFd>) {
    // SAFETY: the closure runs in the forked child before exec and calls only fcntl, which
    // is async-signal-safe; it allocates nothing (the Vec was built before the fork). The
    // flag is cleared in the child's descriptor table only.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}
