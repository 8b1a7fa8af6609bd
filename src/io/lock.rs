//! Advisory whole-file locks (`flock`), which keep a second process from opening a pool that
//! is open read-write. All `unsafe` stays in this layer.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;

/// Try to take a shared or exclusive lock without blocking. `Ok(false)`: someone holds a
/// conflicting lock.
pub fn try_lock(file: &File, exclusive: bool) -> io::Result<bool> {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    } | libc::LOCK_NB;
    // SAFETY: flock takes only the fd, which `file` keeps open for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(false);
    }
    Err(e)
}
